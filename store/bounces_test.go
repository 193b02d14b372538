package store

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailferry/mailferry/internal/testenv"
)

// TestRecordOutcomesBounceClass: a failure's type and class go on the
// attempt row and the recipient row; a later delivery clears the
// recipient's; a class outside the taxonomy is refused before anything is
// written.
func TestRecordOutcomesBounceClass(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 2)
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Microsecond)
	retry := now.Add(time.Minute)
	outs := []Outcome{
		{Attempt: Attempt{Recipient: 0, Attempt: 1, StartedAt: now, SMTPCode: 452, EnhancedCode: "4.2.2",
			Outcome: RecipientDeferred, BounceType: BounceSoft, BounceClass: "mailbox_full"}, NextAttemptAt: &retry},
		{Attempt: Attempt{Recipient: 1, Attempt: 1, StartedAt: now, SMTPCode: 550, EnhancedCode: "5.1.1",
			Outcome: RecipientBounced, BounceType: BounceHard, BounceClass: "invalid_recipient"}},
	}
	if _, err := s.RecordOutcomes(t.Context(), m.ID, outs); err != nil {
		t.Fatal(err)
	}
	rcpt := func(idx int) (typ, class *string) {
		t.Helper()
		if err := s.pool.QueryRow(t.Context(), `SELECT bounce_type, bounce_class FROM recipients WHERE message_id = $1 AND idx = $2`,
			m.ID, idx).Scan(&typ, &class); err != nil {
			t.Fatal(err)
		}
		return typ, class
	}
	for i, want := range []string{"mailbox_full", "invalid_recipient"} {
		if _, c := rcpt(i); c == nil || *c != want {
			t.Errorf("recipient %d: class %v, want %s", i, c, want)
		}
		if n := count(t, s, `SELECT count(*) FROM attempts WHERE message_id = $1 AND rcpt_idx = $2 AND bounce_class = $3`, m.ID, i, want); n != 1 {
			t.Errorf("recipient %d: %d attempt rows of class %s, want 1", i, n, want)
		}
	}
	delivered := []Outcome{{Attempt: Attempt{Recipient: 0, Attempt: 2, StartedAt: retry, SMTPCode: 250, Outcome: RecipientDelivered}}}
	if _, err := s.RecordOutcomes(t.Context(), m.ID, delivered); err != nil {
		t.Fatal(err)
	}
	if typ, c := rcpt(0); typ != nil || c != nil {
		t.Errorf("delivered recipient keeps bounce %v/%v", typ, c)
	}

	bad := []struct {
		name string
		a    Attempt
	}{
		{"unknown class", Attempt{Outcome: RecipientBounced, BounceType: BounceHard, BounceClass: "gone"}},
		{"unknown type", Attempt{Outcome: RecipientBounced, BounceType: "firm", BounceClass: "other"}},
		{"class without type", Attempt{Outcome: RecipientBounced, BounceClass: "other"}},
		{"delivery with class", Attempt{Outcome: RecipientDelivered, BounceType: BounceSoft, BounceClass: "other"}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			a := tt.a
			a.Recipient, a.Attempt, a.StartedAt = 1, 2, now
			if _, err := s.RecordOutcomes(t.Context(), m.ID, []Outcome{{Attempt: a}}); !errors.Is(err, ErrRejected) {
				t.Errorf("RecordOutcomes: %v, want ErrRejected", err)
			}
			a.MessageID = m.ID
			if err := s.InsertAttempts(t.Context(), []Attempt{a}); !errors.Is(err, ErrRejected) {
				t.Errorf("InsertAttempts: %v, want ErrRejected", err)
			}
		})
	}
	a := Attempt{MessageID: m.ID, Recipient: 1, Attempt: 9, StartedAt: now, Outcome: RecipientBounced,
		BounceType: BounceSoft, BounceClass: "expired"}
	if err := s.InsertAttempts(t.Context(), []Attempt{a}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, s, `SELECT count(*) FROM attempts WHERE message_id = $1 AND attempt = 9 AND bounce_type = 'soft' AND bounce_class = 'expired'`, m.ID); n != 1 {
		t.Errorf("InsertAttempts wrote %d rows with the class, want 1", n)
	}
}

// newStoreWith opens a migrated store on a fresh database with opts
// (URL filled in).
func newStoreWith(t testing.TB, opts Options) *Store {
	t.Helper()
	opts.URL = testenv.Database(t)
	s, err := Open(t.Context(), opts)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(s.Close)
	if _, err := s.Migrate(t.Context()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return s
}

// TestSuppressionFromOutcomes: a bounce with Suppress lists the address
// (hard_bounce), once however often the write is retried; soft failures
// count across messages, reset on a delivery, and at the limit list the
// address (soft_bounce_limit) and end the run; counts are per tenant; the
// metric counts the rows added.
func TestSuppressionFromOutcomes(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	s := newStoreWith(t, Options{SoftBounceLimit: 3, Registerer: reg})
	acme := newTenant(t, s, "acme")
	other := newTenant(t, s, "other")
	now := time.Now().Truncate(time.Microsecond)

	// send records one attempt (number 1) of a new one-recipient message
	// to addr, retried once as a worker would after a lost reply.
	send := func(k APIKey, addr, outcome, typ, class string, suppress bool) {
		t.Helper()
		m := testMessage(k, 1)
		m.Recipients = []NewRecipient{{Email: addr}}
		if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
			t.Fatal(err)
		}
		o := Outcome{Attempt: Attempt{Recipient: 0, Attempt: 1, StartedAt: now, Outcome: outcome,
			BounceType: typ, BounceClass: class}, Suppress: suppress}
		for range 2 {
			if _, err := s.RecordOutcomes(t.Context(), m.ID, []Outcome{o}); err != nil {
				t.Fatal(err)
			}
		}
	}
	soft := func(k APIKey, addr string) {
		t.Helper()
		send(k, addr, RecipientBounced, BounceSoft, "mailbox_full", false)
	}
	failures := func(k APIKey, addr string) int {
		t.Helper()
		return count(t, s, `SELECT coalesce(sum(failures), 0) FROM soft_bounces WHERE tenant_id = $1 AND email = $2`, k.TenantID, addr)
	}
	reason := func(k APIKey, addr string) string {
		t.Helper()
		var r string
		err := s.pool.QueryRow(t.Context(), `SELECT reason FROM suppressions WHERE tenant_id = $1 AND email = $2`, k.TenantID, addr).Scan(&r)
		if errors.Is(err, pgx.ErrNoRows) {
			return ""
		}
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	send(acme, "gone@Dest.example", RecipientBounced, BounceHard, "invalid_recipient", true)
	if r := reason(acme, "gone@dest.example"); r != SuppressedHardBounce {
		t.Errorf("hard bounce: reason %q, want hard_bounce", r)
	}
	if r := reason(other, "gone@dest.example"); r != "" {
		t.Errorf("hard bounce listed for another tenant: %q", r)
	}
	// A bounce the rules do not mark as suppressing lists nothing.
	send(acme, "policy@dest.example", RecipientBounced, BounceHard, "policy", false)
	if r := reason(acme, "policy@dest.example"); r != "" {
		t.Errorf("unsuppressing bounce listed: %q", r)
	}

	soft(acme, "Full@dest.example")
	soft(acme, "Full@dest.example")
	if n := failures(acme, "Full@dest.example"); n != 2 {
		t.Fatalf("%d soft failures counted after two (each recorded twice), want 2", n)
	}
	// A deferral is not a failure of the run; a delivery ends it.
	send(acme, "Full@DEST.example", RecipientDeferred, BounceSoft, "mailbox_full", false)
	send(acme, "Full@DEST.example", RecipientDelivered, "", "", false)
	if n := failures(acme, "Full@dest.example"); n != 0 {
		t.Fatalf("%d soft failures after a delivery, want the run ended", n)
	}
	for range 2 {
		soft(acme, "Full@dest.example")
	}
	soft(other, "Full@dest.example") // another tenant's run
	if r := reason(acme, "Full@dest.example"); r != "" {
		t.Fatalf("listed after 2 soft failures with limit 3: %q", r)
	}
	soft(acme, "Full@dest.example")
	if r := reason(acme, "Full@dest.example"); r != SuppressedSoftBounceLimit {
		t.Errorf("after 3 soft failures: reason %q, want soft_bounce_limit", r)
	}
	if n := failures(acme, "Full@dest.example"); n != 0 {
		t.Errorf("run of %d left at the limit, want it ended", n)
	}
	if n := failures(other, "Full@dest.example"); n != 1 {
		t.Errorf("other tenant's run %d, want 1", n)
	}
	if r := reason(acme, "full@dest.example"); r != "" {
		t.Errorf("local part compared without case: %q listed", r)
	}
	// A live entry is kept with its older reason.
	send(acme, "Full@dest.example", RecipientBounced, BounceHard, "invalid_recipient", true)
	if r := reason(acme, "Full@dest.example"); r != SuppressedSoftBounceLimit {
		t.Errorf("live entry replaced: reason %q", r)
	}

	want := map[string]float64{SuppressedHardBounce: 1, SuppressedSoftBounceLimit: 1, SuppressedComplaint: 0}
	for r, n := range want {
		if got := testutil.ToFloat64(s.metrics.suppressions.WithLabelValues(r)); got != n {
			t.Errorf("mailferry_suppressions_total{reason=%q} = %v, want %v", r, got, n)
		}
	}
}

// TestSoftBounceLimitZero: a limit of 0 never suppresses.
func TestSoftBounceLimitZero(t *testing.T) {
	t.Parallel()
	s := newStoreWith(t, Options{})
	k := newTenant(t, s, "acme")
	now := time.Now().Truncate(time.Microsecond)
	for range 6 {
		m := testMessage(k, 1)
		if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
			t.Fatal(err)
		}
		o := Outcome{Attempt: Attempt{Recipient: 0, Attempt: 1, StartedAt: now, Outcome: RecipientBounced,
			BounceType: BounceSoft, BounceClass: "expired"}}
		if _, err := s.RecordOutcomes(t.Context(), m.ID, []Outcome{o}); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, s, `SELECT count(*) FROM suppressions`); n != 0 {
		t.Errorf("%d suppressions with limit 0, want none", n)
	}
	if n := count(t, s, `SELECT failures FROM soft_bounces`); n != 6 {
		t.Errorf("%d failures counted, want 6", n)
	}
}

func TestNormalizeEmail(t *testing.T) {
	for in, want := range map[string]string{
		"Alice@Example.COM":    "Alice@example.com",
		`"a@b"@Example.com`:    `"a@b"@example.com`,
		"no-at-sign":           "no-at-sign",
		"bob@xn--bcher-KVA.ch": "bob@xn--bcher-kva.ch",
	} {
		if got := NormalizeEmail(in); got != want {
			t.Errorf("NormalizeEmail(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestGetMessageRecipientEvents: recipient_events rows (reports written by
// the inbound processor) join the attempts in Events by time, with their
// class and MTAs, and the recipient shows its class.
func TestGetMessageRecipientEvents(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 1)
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Microsecond)
	delivered := []Outcome{{Attempt: Attempt{Recipient: 0, Attempt: 1, StartedAt: now, SMTPCode: 250, Outcome: RecipientDelivered}}}
	if _, err := s.RecordOutcomes(t.Context(), m.ID, delivered); err != nil {
		t.Fatal(err)
	}
	for _, ev := range []struct {
		at          time.Time
		typ, class  string
		reportingMT string
	}{
		{now.Add(2 * time.Minute), "complained", "", ""},
		{now.Add(time.Minute), "bounced", "invalid_recipient", "mx.dest0.example"},
	} {
		var typ, class any
		if ev.class != "" {
			typ, class = BounceHard, ev.class
		}
		if _, err := s.pool.Exec(t.Context(), `INSERT INTO recipient_events (message_id, rcpt_idx, at, type, enhanced_code,
			reporting_mta, remote_mta, bounce_type, bounce_class) VALUES ($1, 0, $2, $3, '5.1.1', $4, 'remote.example', $5, $6)`,
			m.ID, ev.at, ev.typ, optional(ev.reportingMT), typ, class); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.pool.Exec(t.Context(), `UPDATE recipients SET status = 'bounced', bounce_type = 'hard',
		bounce_class = 'invalid_recipient', bounce_async = true WHERE message_id = $1`, m.ID); err != nil {
		t.Fatal(err)
	}
	v, err := s.GetMessage(t.Context(), k.TenantID, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := eventTypes(v.Events); fmt.Sprint(got) != "[accepted delivered bounced complained]" {
		t.Fatalf("events %v", got)
	}
	b := v.Events[2]
	if !b.Async || deref(b.ReportingMTA) != "mx.dest0.example" || deref(b.RemoteMTA) != "remote.example" ||
		deref(b.BounceClass) != "invalid_recipient" || b.Recipient != m.Recipients[0].Email {
		t.Errorf("bounced event %+v", b)
	}
	if v.Events[1].Async {
		t.Errorf("the attempt is marked async")
	}
	r := v.Recipients[0]
	if !r.BounceAsync || deref(r.BounceClass) != "invalid_recipient" || deref(r.BounceType) != BounceHard {
		t.Errorf("recipient %+v", r)
	}
}
