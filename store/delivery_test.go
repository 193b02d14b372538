package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestDeliveryLifecycle(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 4) // user0,2 @dest0.example; user1,3 @dest1.example
	m.Needs8Bit = true
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	d, err := s.LoadDelivery(t.Context(), m.ID, "dest0.example")
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if len(d.Recipients) != 2 || d.Recipients[0].Idx != 0 || d.Recipients[1].Idx != 2 || d.Signed || !d.Needs8Bit {
		t.Fatalf("delivery %+v", d)
	}
	if string(d.Body) != string(m.Body) || d.MailFrom != m.MailFrom {
		t.Errorf("body or sender differ: %+v", d)
	}

	// The first signature wins; a second worker gets it back.
	got, err := s.SaveSignature(t.Context(), m.ID, "DKIM-Signature: a\r\n")
	if err != nil || got != "DKIM-Signature: a\r\n" {
		t.Fatalf("save: %q %v", got, err)
	}
	got, err = s.SaveSignature(t.Context(), m.ID, "DKIM-Signature: b\r\n")
	if err != nil || got != "DKIM-Signature: a\r\n" {
		t.Fatalf("second save: %q %v", got, err)
	}

	next := time.Now().Add(time.Hour).Truncate(time.Microsecond)
	taken, err := s.TakeLease(t.Context(), m.ID, []int{0, 2}, Lease{Owner: "1-0", For: time.Minute, Next: next, DueBy: time.Now()})
	if err != nil || len(taken) != 2 {
		t.Fatalf("take lease: %v %v", taken, err)
	}
	now := time.Now().Truncate(time.Microsecond)
	retry := now.Add(5 * time.Minute)
	outs := []Outcome{
		{Attempt: Attempt{Recipient: 0, Attempt: 1, StartedAt: now, Duration: 30 * time.Millisecond, MXHost: "mx.dest0.example", MXIP: "127.0.0.2",
			TLSVersion: "TLS1.3", TLSCipher: "TLS_AES_128_GCM_SHA256", SMTPCode: 250, EnhancedCode: "2.0.0", Response: "ok", Outcome: RecipientDelivered}},
		{Attempt: Attempt{Recipient: 2, Attempt: 1, StartedAt: now, MXHost: "mx.dest0.example", SMTPCode: 451, EnhancedCode: "4.7.1", Response: "greylisted", Outcome: RecipientDeferred},
			NextAttemptAt: &retry},
	}
	complete, err := s.RecordOutcomes(t.Context(), m.ID, outs)
	if err != nil || complete {
		t.Fatalf("record: complete=%v err=%v", complete, err)
	}
	v, err := s.GetMessage(t.Context(), k.TenantID, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	r0, r2 := v.Recipients[0], v.Recipients[2]
	if r0.Status != RecipientDelivered || r0.Attempts != 1 || *r0.SMTPCode != 250 || *r0.TLSVersion != "TLS1.3" || r0.NextAttemptAt != nil {
		t.Errorf("recipient 0: %+v", r0)
	}
	if r2.Status != RecipientDeferred || r2.NextAttemptAt == nil || !r2.NextAttemptAt.Equal(retry) || *r2.EnhancedCode != "4.7.1" {
		t.Errorf("recipient 2: %+v", r2)
	}
	if n := count(t, s, "SELECT count(*) FROM recipients WHERE message_id = $1 AND lease_owner IS NOT NULL", m.ID); n != 0 {
		t.Errorf("%d leases left after recording", n)
	}
	// Recording again (a reclaimed job) leaves final recipients alone.
	if _, err := s.RecordOutcomes(t.Context(), m.ID, outs[:1]); err != nil {
		t.Fatal(err)
	}
	if n := count(t, s, "SELECT attempts FROM recipients WHERE message_id = $1 AND idx = 0", m.ID); n != 1 {
		t.Errorf("final recipient counted %d attempts", n)
	}
	d, err = s.LoadDelivery(t.Context(), m.ID, "dest0.example")
	if err != nil || len(d.Recipients) != 1 || d.Recipients[0].Idx != 2 || d.Recipients[0].Attempts != 1 || !d.Signed {
		t.Fatalf("reload: %+v %v", d, err)
	}

	// Finish every recipient: the body goes, the metadata stays.
	var rest []Outcome
	for _, i := range []int{1, 2, 3} {
		// Recipient 2 was deferred once; 1 and 3 were never attempted.
		n := 1
		if i == 2 {
			n = 2
		}
		rest = append(rest, Outcome{Attempt: Attempt{Recipient: i, Attempt: n, StartedAt: now, SMTPCode: 550, EnhancedCode: "5.1.1", Response: "no such user", Outcome: RecipientBounced}})
	}
	complete, err = s.RecordOutcomes(t.Context(), m.ID, rest)
	if err != nil || !complete {
		t.Fatalf("record rest: complete=%v err=%v", complete, err)
	}
	if n := count(t, s, "SELECT count(*) FROM messages WHERE id = $1 AND body IS NULL AND completed_at IS NOT NULL", m.ID); n != 1 {
		t.Errorf("body kept after every recipient is final")
	}
	v, _ = s.GetMessage(t.Context(), k.TenantID, m.ID)
	if v.Status != StatusPartiallyDelivered {
		t.Errorf("status %q", v.Status)
	}
	d, err = s.LoadDelivery(t.Context(), m.ID, "dest1.example")
	if err != nil || len(d.Recipients) != 0 {
		t.Errorf("nothing should be pending: %+v %v", d, err)
	}
	if _, err := s.LoadDelivery(t.Context(), uuid.Must(uuid.NewV7()), "x.example"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown message: %v", err)
	}
}

func TestSaveSignatureConcurrent(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 2)
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	got := make([]string, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, err := s.SaveSignature(t.Context(), m.ID, string(rune('a'+i)))
			if err != nil {
				t.Error(err)
			}
			got[i] = h
		}()
	}
	wg.Wait()
	for _, h := range got {
		if h != got[0] {
			t.Fatalf("workers disagree on the signature: %q", got)
		}
	}
}

func TestDKIMKeys(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	for _, k := range []DKIMKey{
		{Domain: "Example.com", Selector: "s1", Algorithm: "rsa2048", PrivateKey: []byte("sealed1"), PublicKey: []byte("pub1")},
		{Domain: "example.com", Selector: "s2", Algorithm: "ed25519", PrivateKey: []byte("sealed2"), PublicKey: []byte("pub2")},
		{Domain: "other.test", Selector: "s1", Algorithm: "ed25519", PrivateKey: []byte("sealed3"), PublicKey: []byte("pub3")},
	} {
		if err := s.CreateDKIMKey(t.Context(), k); err != nil {
			t.Fatal(err)
		}
	}
	err := s.CreateDKIMKey(t.Context(), DKIMKey{Domain: "example.com", Selector: "s1", Algorithm: "ed25519", PrivateKey: []byte("x"), PublicKey: []byte("y")})
	if !errors.Is(err, ErrExists) {
		t.Errorf("duplicate selector: %v", err)
	}
	keys, err := s.ActiveDKIMKeys(t.Context(), "EXAMPLE.com")
	if err != nil || len(keys) != 2 || keys[0].Algorithm != "ed25519" || string(keys[1].PrivateKey) != "sealed1" {
		t.Errorf("active keys: %+v %v", keys, err)
	}
	all, err := s.ListDKIMKeys(t.Context())
	if err != nil || len(all) != 3 {
		t.Errorf("list: %d %v", len(all), err)
	}
}

// TestLease: a recipient is in at most one attempt at a time. The lease
// goes to one of many concurrent takers, the same owner may take it over
// (its job reclaimed), another owner only once it lapses, and recipients
// not yet due are not taken at all.
func TestLease(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 2) // user0@dest0, user1@dest1
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	lease := func(owner string, d time.Duration) Lease {
		return Lease{Owner: owner, For: d, Next: now.Add(time.Minute), DueBy: now.Add(time.Second)}
	}

	// Sixteen workers holding copies of one job: exactly one wins. (Their
	// DueBy lies past the Next the winner sets, so the lease alone decides.)
	var wg sync.WaitGroup
	var mu sync.Mutex
	winners := 0
	for i := range 16 {
		wg.Go(func() {
			l := lease(fmt.Sprintf("%d-0", i), time.Minute)
			l.DueBy = now.Add(2 * time.Minute)
			taken, err := s.TakeLease(t.Context(), m.ID, []int{0}, l)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			winners += len(taken)
			mu.Unlock()
		})
	}
	wg.Wait()
	if winners != 1 {
		t.Fatalf("%d workers took the lease on one recipient, want 1", winners)
	}
	owner := ""
	if err := s.pool.QueryRow(t.Context(), "SELECT lease_owner FROM recipients WHERE message_id = $1 AND idx = 0", m.ID).Scan(&owner); err != nil {
		t.Fatal(err)
	}
	// A live lease is never taken over, not even under the same owner
	// name (issue 11: a reclaimed queue entry handed its lease on).
	if taken, err := s.TakeLease(t.Context(), m.ID, []int{0}, Lease{Owner: owner, For: time.Minute, Next: now.Add(time.Minute), DueBy: now.Add(2 * time.Minute)}); err != nil || len(taken) != 0 {
		t.Errorf("same owner took a live lease again: %v %v", taken, err)
	}
	if n, err := s.RenewLease(t.Context(), m.ID, []int{0}, owner, time.Minute); err != nil || n != 1 {
		t.Errorf("renew: %d %v", n, err)
	}
	if n, err := s.RenewLease(t.Context(), m.ID, []int{0}, "someone-else", time.Minute); err != nil || n != 0 {
		t.Errorf("renew by another owner: %d %v", n, err)
	}
	// The lease moved the next attempt a minute ahead: once the lease
	// lapses, a job due by now still does not get the recipient.
	if _, err := s.RenewLease(t.Context(), m.ID, []int{0}, owner, time.Microsecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	if taken, err := s.TakeLease(t.Context(), m.ID, []int{0}, lease("late-0", time.Minute)); err != nil || len(taken) != 0 {
		t.Errorf("took a recipient not yet due: %v %v", taken, err)
	}
	// Due and lapsed: free for anyone.
	l := lease("late-0", time.Minute)
	l.DueBy = now.Add(2 * time.Minute)
	if taken, err := s.TakeLease(t.Context(), m.ID, []int{0}, l); err != nil || len(taken) != 1 {
		t.Errorf("lapsed lease not taken: %v %v", taken, err)
	}
	if _, err := s.TakeLease(t.Context(), m.ID, []int{0}, Lease{For: time.Minute}); err == nil {
		t.Errorf("lease without an owner accepted")
	}
}

// TestPendingJobs: one job per message and domain with recipients still to
// deliver, due at the earliest of them; final recipients and finished
// messages give none. StaleJobs leaves out recent and leased ones.
func TestPendingJobs(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	old := time.Now().Add(-time.Hour).Truncate(time.Microsecond)
	a := testMessage(k, 4) // dest0: 0, 2; dest1: 1, 3
	a.CreatedAt = old
	b := testMessage(k, 1)
	b.SendAt = time.Now().Add(time.Hour).Truncate(time.Microsecond)
	done := testMessage(k, 1)
	if err := s.AcceptBatch(t.Context(), []NewMessage{a, b, done}); err != nil {
		t.Fatal(err)
	}
	retry := old.Add(30 * time.Minute)
	if _, err := s.RecordOutcomes(t.Context(), a.ID, []Outcome{
		{Attempt: Attempt{Recipient: 0, Attempt: 1, StartedAt: old, Outcome: RecipientDeferred}, NextAttemptAt: &retry},
		{Attempt: Attempt{Recipient: 1, Attempt: 1, StartedAt: old, Outcome: RecipientDelivered}},
		{Attempt: Attempt{Recipient: 3, Attempt: 1, StartedAt: old, Outcome: RecipientBounced}},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordOutcomes(t.Context(), done.ID, []Outcome{{Attempt: Attempt{Recipient: 0, Attempt: 1, StartedAt: old, Outcome: RecipientDelivered}}}); err != nil {
		t.Fatal(err)
	}
	got := map[string]time.Time{}
	err := s.PendingJobs(t.Context(), func(j PendingJob) error {
		key := j.MessageID.String() + " " + j.Domain
		if _, dup := got[key]; dup {
			t.Errorf("job %s twice", key)
		}
		got[key] = j.Due
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]time.Time{
		a.ID.String() + " dest0.example": old, // recipient 2 never tried: due at creation
		b.ID.String() + " dest0.example": b.SendAt,
	}
	if len(got) != len(want) {
		t.Fatalf("pending jobs %v, want %v", got, want)
	}
	for key, due := range want {
		if !got[key].Equal(due) {
			t.Errorf("%s due %v, want %v", key, got[key], due)
		}
	}
	stop := errors.New("stop")
	if err := s.PendingJobs(t.Context(), func(PendingJob) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("PendingJobs returned %v, want fn's error", err)
	}

	stale, err := s.StaleJobs(t.Context(), time.Now().Add(-time.Minute), PendingJob{}, 10)
	if err != nil || len(stale) != 1 || stale[0].MessageID != a.ID || !stale[0].Due.Equal(old) {
		t.Fatalf("stale jobs %+v %v, want only %s", stale, err, a.ID)
	}
	if _, err := s.TakeLease(t.Context(), a.ID, []int{2}, Lease{Owner: "1-0", For: time.Minute, Next: old, DueBy: time.Now()}); err != nil {
		t.Fatal(err)
	}
	// Recipient 0 (deferred to old+30m) is still stale and unleased.
	stale, err = s.StaleJobs(t.Context(), time.Now().Add(-time.Minute), PendingJob{}, 10)
	if err != nil || len(stale) != 1 || !stale[0].Due.Equal(retry) {
		t.Errorf("with recipient 2 leased: %+v %v", stale, err)
	}
	if _, err := s.TakeLease(t.Context(), a.ID, []int{0}, Lease{Owner: "1-0", For: time.Minute, Next: old, DueBy: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if stale, err := s.StaleJobs(t.Context(), time.Now().Add(-time.Minute), PendingJob{}, 10); err != nil || len(stale) != 0 {
		t.Errorf("leased jobs reported stale: %+v %v", stale, err)
	}
}

// TestSaveSignatureWaitsForSigner: a signer that commits while another's
// SaveSignature waits for the row wins, and the waiter gets its header,
// though that committed after the waiter's statement began.
func TestSaveSignatureWaitsForSigner(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 1)
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	tx, err := s.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(t.Context(), saveSignature, m.ID, "first"); err != nil {
		t.Fatal(err)
	}
	type result struct {
		h   string
		err error
	}
	done := make(chan result, 1)
	go func() {
		h, err := s.SaveSignature(t.Context(), m.ID, "second")
		done <- result{h, err}
	}()
	for deadline := time.Now().Add(10 * time.Second); count(t, s, `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'`) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("SaveSignature never waited for the row")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.err != nil || r.h != "first" {
		t.Errorf("SaveSignature = %q, %v; want the committed %q", r.h, r.err, "first")
	}
	if _, err := s.SaveSignature(t.Context(), uuid.Must(uuid.NewV7()), "x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown message: %v", err)
	}
}
