package store

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestInsertAttemptsShowAsEvents(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := t.Context()
	k := newTenant(t, s, "acme")
	m := testMessage(k, 2)
	if err := s.AcceptBatch(ctx, []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	t0 := m.CreatedAt.Add(time.Second)
	as := []Attempt{
		{MessageID: m.ID, Recipient: 0, Attempt: 1, StartedAt: t0, Duration: 1500 * time.Millisecond,
			MXHost: "mx.dest0.example", MXIP: "192.0.2.10", TLSVersion: "TLS1.3", TLSCipher: "TLS_AES_128_GCM_SHA256",
			SMTPCode: 451, EnhancedCode: "4.7.1", Response: "greylisted", Outcome: "deferred"},
		{MessageID: m.ID, Recipient: 1, Attempt: 1, StartedAt: t0.Add(time.Millisecond),
			Outcome: "deferred", Response: "dns timeout"}, // no host reached: NULLs
		{MessageID: m.ID, Recipient: 0, Attempt: 2, StartedAt: t0.Add(time.Minute), MXHost: "mx.dest0.example",
			MXIP: "2001:db8::25", TLSVerified: true, SMTPCode: 250, EnhancedCode: "2.0.0", Response: "ok", Outcome: "delivered"},
		{MessageID: m.ID, Recipient: 1, Attempt: 2, StartedAt: t0.Add(2 * time.Minute), MXHost: "mx.dest1.example",
			SMTPCode: 550, EnhancedCode: "5.1.1", Response: "no such user", Outcome: "bounced"},
	}
	// Written out of order: events come back ordered by time.
	if err := s.InsertAttempts(ctx, []Attempt{as[2], as[0], as[3], as[1]}); err != nil {
		t.Fatalf("InsertAttempts: %v", err)
	}
	v, err := s.GetMessage(ctx, k.TenantID, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := eventTypes(v.Events), []string{"accepted", "deferred", "deferred", "delivered", "bounced"}; !slices.Equal(got, want) {
		t.Fatalf("events %q, want %q", got, want)
	}
	for i, a := range as {
		e := v.Events[i+1]
		if !e.At.Equal(a.StartedAt.Truncate(time.Microsecond)) || e.Recipient != m.Recipients[a.Recipient].Email {
			t.Errorf("event %d at %v for %q, want %v for %q", i+1, e.At, e.Recipient, a.StartedAt, m.Recipients[a.Recipient].Email)
		}
		if a.SMTPCode == 0 {
			if e.SMTPCode != nil || e.MXHost != nil || e.EnhancedCode != nil {
				t.Errorf("event %d = %+v, want no code, host or enhanced code", i+1, e)
			}
			continue
		}
		if *e.SMTPCode != a.SMTPCode || *e.EnhancedCode != a.EnhancedCode || *e.Response != a.Response || *e.MXHost != a.MXHost {
			t.Errorf("event %d = %+v, want the fields of %+v", i+1, e, a)
		}
	}
	var ip, cipher string
	var ms int
	var verified bool
	if err := s.pool.QueryRow(ctx, `SELECT host(mx_ip), tls_cipher, duration_ms, tls_verified FROM attempts
WHERE message_id = $1 AND rcpt_idx = 0 AND attempt = 1`, m.ID).Scan(&ip, &cipher, &ms, &verified); err != nil {
		t.Fatal(err)
	}
	if ip != "192.0.2.10" || cipher != "TLS_AES_128_GCM_SHA256" || ms != 1500 || verified {
		t.Errorf("stored ip %s cipher %s duration %d verified %v", ip, cipher, ms, verified)
	}
	if n := count(t, s, `SELECT count(*) FROM attempts_default`); n != 0 {
		t.Errorf("%d attempts of this month went to the default partition", n)
	}
}

func TestInsertAttemptsRefuses(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	good := Attempt{MessageID: uuid.Must(uuid.NewV7()), Attempt: 1, StartedAt: time.Now(), Outcome: "delivered"}
	tests := []struct {
		name    string
		edit    func(a *Attempt)
		wantErr string
	}{
		{"nil message", func(a *Attempt) { a.MessageID = uuid.Nil }, "message id is nil"},
		{"attempt 0", func(a *Attempt) { a.Attempt = 0 }, "attempt number 0"},
		{"negative recipient", func(a *Attempt) { a.Recipient = -1 }, "recipient idx -1"},
		{"no start", func(a *Attempt) { a.StartedAt = time.Time{} }, "started_at is zero"},
		{"bad outcome", func(a *Attempt) { a.Outcome = "queued" }, `outcome "queued"`},
		{"bad ip", func(a *Attempt) { a.MXIP = "mx.example" }, "mx ip"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := good
			tt.edit(&a)
			err := s.InsertAttempts(t.Context(), []Attempt{good, a})
			if err == nil || !strings.Contains(err.Error(), "attempt 1: "+tt.wantErr) {
				t.Errorf("InsertAttempts = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
	if n := count(t, s, `SELECT count(*) FROM attempts`); n != 0 {
		t.Errorf("%d attempts stored by refused calls", n)
	}
}

// partitions lists attempts' partitions with their row counts.
func partitions(t *testing.T, s *Store) map[string]int {
	t.Helper()
	rows, err := s.pool.Query(t.Context(), listPartitions)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, n := range names {
		got[n] = count(t, s, `SELECT count(*) FROM `+n)
	}
	return got
}

func TestAttemptPartitions(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := t.Context()
	k := newTenant(t, s, "acme")
	m := testMessage(k, 1)
	m.CreatedAt = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC) // old enough for every attempt below
	if err := s.AcceptBatch(ctx, []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	month := monthStart(now)
	future := month.AddDate(0, 6, 0)                   // no partition yet: lands in the default one
	past := month.AddDate(0, -3, 0)                    // gets a partition below, then is dropped
	ancient := month.AddDate(-2, 0, 0).Add(-time.Hour) // default partition, trimmed by retention
	at := func(t time.Time, n int) Attempt {
		return Attempt{MessageID: m.ID, Attempt: n, StartedAt: t.Add(time.Hour), Outcome: "deferred"}
	}

	if err := s.EnsureAttemptPartitions(ctx, past, 0); err != nil {
		t.Fatalf("EnsureAttemptPartitions(past): %v", err)
	}
	err := s.InsertAttempts(ctx, []Attempt{at(ancient, 1), at(past, 2), at(now, 3), at(future, 4), at(future.AddDate(0, 1, 0), 5)})
	if err != nil {
		t.Fatal(err)
	}
	got := partitions(t, s)
	want := map[string]int{
		"attempts_default":                    3, // ancient and both future ones
		partitionName(past):                   1,
		partitionName(month):                  1,
		partitionName(month.AddDate(0, 1, 0)): 0,
		partitionName(month.AddDate(0, 2, 0)): 0,
	}
	if !equalMaps(got, want) {
		t.Fatalf("partitions %v, want %v", got, want)
	}

	// Creating the future month moves its rows out of the default partition.
	if err := s.EnsureAttemptPartitions(ctx, future, 1); err != nil {
		t.Fatalf("EnsureAttemptPartitions(future): %v", err)
	}
	want["attempts_default"] = 1
	want[partitionName(future)] = 1
	want[partitionName(future.AddDate(0, 1, 0))] = 1
	if got := partitions(t, s); !equalMaps(got, want) {
		t.Fatalf("after creating the future month: partitions %v, want %v", got, want)
	}
	var idx int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM pg_indexes WHERE tablename = $1`, partitionName(future)).Scan(&idx); err != nil || idx != 1 {
		t.Errorf("moved-into partition has %d indexes (%v), want the parent's one", idx, err)
	}
	// Idempotent, and concurrent callers do not collide.
	errs := make(chan error, 3)
	for range 3 {
		go func() { errs <- s.EnsureAttemptPartitions(ctx, now, 2) }()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Errorf("concurrent EnsureAttemptPartitions: %v", err)
		}
	}
	if err := s.EnsureAttemptPartitions(ctx, now, -1); err == nil {
		t.Error("EnsureAttemptPartitions(-1 months) succeeded")
	}

	v, err := s.GetMessage(ctx, k.TenantID, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Events) != 6 {
		t.Errorf("%d events, want accepted and the five attempts across partitions", len(v.Events))
	}

	// Retention: everything wholly before this month goes.
	dropped, err := s.DropAttemptPartitionsBefore(ctx, month)
	if err != nil {
		t.Fatalf("DropAttemptPartitionsBefore: %v", err)
	}
	if want := []string{partitionName(past)}; !slices.Equal(dropped, want) {
		t.Errorf("dropped %v, want %v", dropped, want)
	}
	delete(want, partitionName(past))
	want["attempts_default"] = 0
	if got := partitions(t, s); !equalMaps(got, want) {
		t.Errorf("after retention: partitions %v, want %v", got, want)
	}
	// The month in progress is kept even when "before" falls inside it.
	dropped, err = s.DropAttemptPartitionsBefore(ctx, now)
	if err != nil || len(dropped) != 0 {
		t.Errorf("DropAttemptPartitionsBefore(now) = %v, %v; want nothing dropped", dropped, err)
	}
}

func equalMaps(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestPartitionName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"attempts_y2026m03", true},
		{"attempts_y2026m12", true},
		{"attempts_y2026m13", false},
		{"attempts_y2026m3", false},
		{"attempts_default", false},
		{"attempts_y2026m03x", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			month, ok := parsePartitionName(tt.name)
			if ok != tt.ok {
				t.Fatalf("parsePartitionName(%q) ok = %v, want %v", tt.name, ok, tt.ok)
			}
			if ok && partitionName(month) != tt.name {
				t.Errorf("round trip gave %q", partitionName(month))
			}
		})
	}
}

// TestRecordOutcomesAttempts: RecordOutcomes stores every field of an
// attempt, routes it by month like InsertAttempts (the default partition
// for a month not created yet), and keeps routing right once that month's
// partition exists, through the same pooled, prepared statement.
func TestRecordOutcomesAttempts(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := t.Context()
	k := newTenant(t, s, "acme")
	m := testMessage(k, 3)
	if err := s.AcceptBatch(ctx, []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	later := monthStart(now).AddDate(0, 6, 0).Add(time.Hour) // beyond the months Migrate creates
	retry := now.Add(time.Minute)
	outs := []Outcome{
		{Attempt: Attempt{Recipient: 0, Attempt: 1, StartedAt: now, Duration: 1500 * time.Millisecond,
			MXHost: "mx.dest0.example", MXIP: "::ffff:192.0.2.10", TLSVersion: "TLS1.3", TLSCipher: "TLS_AES_128_GCM_SHA256",
			TLSVerified: true, SMTPCode: 451, EnhancedCode: "4.7.1", Response: "greylisted", Outcome: RecipientDeferred},
			NextAttemptAt: &retry},
		{Attempt: Attempt{Recipient: 1, Attempt: 1, StartedAt: now, Response: "dns timeout", Outcome: RecipientDeferred},
			NextAttemptAt: &retry},
	}
	if _, err := s.RecordOutcomes(ctx, m.ID, outs); err != nil {
		t.Fatal(err)
	}
	var (
		ip, cipher, host, enhanced, response string
		ms, code                             int
		verified                             bool
	)
	if err := s.pool.QueryRow(ctx, `SELECT host(mx_ip), tls_cipher, mx_host, enhanced_code, response, duration_ms, smtp_code, tls_verified
FROM attempts WHERE message_id = $1 AND rcpt_idx = 0`, m.ID).Scan(&ip, &cipher, &host, &enhanced, &response, &ms, &code, &verified); err != nil {
		t.Fatal(err)
	}
	if ip != "192.0.2.10" || cipher != "TLS_AES_128_GCM_SHA256" || host != "mx.dest0.example" || enhanced != "4.7.1" ||
		response != "greylisted" || ms != 1500 || code != 451 || !verified {
		t.Errorf("stored ip %s cipher %s host %s enhanced %s response %q duration %d code %d verified %v",
			ip, cipher, host, enhanced, response, ms, code, verified)
	}
	if n := count(t, s, `SELECT count(*) FROM attempts WHERE message_id = $1 AND rcpt_idx = 1
AND mx_host IS NULL AND mx_ip IS NULL AND tls_version IS NULL AND smtp_code IS NULL AND response = 'dns timeout'`, m.ID); n != 1 {
		t.Errorf("attempt without a host: %d rows with NULLs, want 1", n)
	}
	if got := partitions(t, s); got[partitionName(monthStart(now))] != 2 || got["attempts_default"] != 0 {
		t.Errorf("partitions %v, want both attempts in this month's", got)
	}

	// A month with no partition yet: the default one takes it.
	record := func(rcpt, attempt int) {
		t.Helper()
		out := Outcome{Attempt: Attempt{Recipient: rcpt, Attempt: attempt, StartedAt: later, Outcome: RecipientDeferred}, NextAttemptAt: &retry}
		if _, err := s.RecordOutcomes(ctx, m.ID, []Outcome{out}); err != nil {
			t.Fatal(err)
		}
	}
	record(0, 2)
	if got := partitions(t, s); got["attempts_default"] != 1 {
		t.Fatalf("partitions %v, want one attempt in the default", got)
	}
	if err := s.EnsureAttemptPartitions(ctx, later, 0); err != nil {
		t.Fatal(err)
	}
	record(1, 2)
	if got := partitions(t, s); got["attempts_default"] != 0 || got[partitionName(monthStart(later))] != 2 {
		t.Errorf("partitions %v, want the later month's two attempts in their partition", got)
	}
}

// TestRecordOutcomesRefuses: an invalid attempt writes nothing at all.
func TestRecordOutcomesRefuses(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 2)
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	outs := []Outcome{
		{Attempt: Attempt{Recipient: 0, Attempt: 1, StartedAt: now, Outcome: RecipientDelivered}},
		{Attempt: Attempt{Recipient: 1, Attempt: 1, StartedAt: now, MXIP: "mx.example", Outcome: RecipientDelivered}},
	}
	if _, err := s.RecordOutcomes(t.Context(), m.ID, outs); err == nil || !strings.Contains(err.Error(), "attempt 1: mx ip") {
		t.Fatalf("RecordOutcomes = %v, want the bad address refused", err)
	}
	if n := count(t, s, `SELECT count(*) FROM attempts`); n != 0 {
		t.Errorf("%d attempts stored by a refused call", n)
	}
	if n := count(t, s, `SELECT count(*) FROM recipients WHERE message_id = $1 AND status = 'queued'`, m.ID); n != 2 {
		t.Errorf("%d recipients still queued, want 2", n)
	}
}
