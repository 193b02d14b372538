package store

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
)

// TestTakeLeasesBatch: the batch lease follows TakeLease's rules request by
// request: due recipients not leased elsewhere are taken, two claims of
// one job in one batch get disjoint sets, a live lease and a recipient not
// yet due are left alone.
func TestTakeLeasesBatch(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	msgs := make([]NewMessage, 4)
	for i := range msgs {
		msgs[i] = testMessage(k, 2)
	}
	if err := s.AcceptBatch(t.Context(), msgs); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	lease := func(owner string) Lease {
		return Lease{Owner: owner, For: time.Minute, Next: now.Add(time.Minute), DueBy: now.Add(time.Second)}
	}
	// Message 2 is leased already; message 3's recipient 1 is not due.
	if got, err := s.TakeLease(t.Context(), msgs[2].ID, []int{0, 1}, lease("other")); err != nil || len(got) != 2 {
		t.Fatalf("take lease: %v %v", got, err)
	}
	if _, err := s.pool.Exec(t.Context(), `UPDATE recipients SET next_attempt_at = now() + interval '1 hour' WHERE message_id = $1 AND idx = 1`, msgs[3].ID); err != nil {
		t.Fatal(err)
	}
	reqs := []LeaseRequest{
		{ID: msgs[0].ID, Idxs: []int{0, 1}, Lease: lease("a")},
		{ID: msgs[1].ID, Idxs: []int{0, 1}, Lease: lease("b1")},
		{ID: msgs[1].ID, Idxs: []int{0, 1}, Lease: lease("b2")}, // a second claim of the same job
		{ID: msgs[2].ID, Idxs: []int{0, 1}, Lease: lease("c")},
		{ID: msgs[3].ID, Idxs: []int{0, 1}, Lease: lease("d")},
	}
	taken, err := s.TakeLeases(t.Context(), reqs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(taken[0], []int{0, 1}) || len(taken[3]) != 0 || !slices.Equal(taken[4], []int{0}) {
		t.Errorf("taken %v, want [0 1] for a, none for c (leased), [0] for d (1 not due)", taken)
	}
	both := append(slices.Clone(taken[1]), taken[2]...)
	slices.Sort(both)
	if !slices.Equal(both, []int{0, 1}) {
		t.Errorf("two claims of one job got %v and %v, want [0 1] between them, disjoint", taken[1], taken[2])
	}
	// What the batch took is leased to its owner, as TakeLease leaves it.
	if n := count(t, s, `SELECT count(*) FROM recipients WHERE message_id = $1 AND lease_owner = 'a' AND lease_until > now()`, msgs[0].ID); n != 2 {
		t.Errorf("%d recipients leased to a, want 2", n)
	}
	// Taken again: nothing, the leases are live.
	again, err := s.TakeLeases(t.Context(), reqs[:1])
	if err != nil || len(again[0]) != 0 {
		t.Errorf("second batch took %v (%v), want nothing", again, err)
	}
	// A canceled message's recipients are never leased.
	c := testMessage(k, 1)
	if err := s.AcceptBatch(t.Context(), []NewMessage{c}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CancelMessage(t.Context(), k.TenantID, c.ID); err != nil {
		t.Fatal(err)
	}
	if got, err := s.TakeLeases(t.Context(), []LeaseRequest{{ID: c.ID, Idxs: []int{0}, Lease: lease("e")}}); err != nil || len(got[0]) != 0 {
		t.Errorf("canceled message: took %v (%v), want nothing", got, err)
	}
	if _, err := s.TakeLeases(t.Context(), []LeaseRequest{{ID: msgs[0].ID, Idxs: []int{0}}}); !errors.Is(err, ErrRejected) {
		t.Errorf("lease without owner: %v, want ErrRejected", err)
	}
}

// TestSaveSignaturesBatch: the first stored header wins, in a batch as
// one by one, also for a message named twice in one batch.
func TestSaveSignaturesBatch(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	msgs := []NewMessage{testMessage(k, 1), testMessage(k, 1)}
	if err := s.AcceptBatch(t.Context(), msgs); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SaveSignature(t.Context(), msgs[0].ID, "first\r\n"); err != nil {
		t.Fatal(err)
	}
	got, err := s.SaveSignatures(t.Context(), []SignatureRequest{
		{ID: msgs[0].ID, Header: "late\r\n"},
		{ID: msgs[1].ID, Header: "x\r\n"},
		{ID: msgs[1].ID, Header: "y\r\n"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got[0] != "first\r\n" || got[1] != "x\r\n" || got[2] != "x\r\n" {
		t.Errorf("headers %q, want the first stored for each message", got)
	}
}

// TestRecordOutcomesBatch: many messages' outcomes in one transaction
// land as RecordOutcomes lands them, are safe to repeat, and one invalid
// outcome fails the whole batch, which then writes nothing.
func TestRecordOutcomesBatch(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	msgs := make([]NewMessage, 10)
	for i := range msgs {
		msgs[i] = testMessage(k, 2) // user0@dest0, user1@dest1
	}
	if err := s.AcceptBatch(t.Context(), msgs); err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Microsecond)
	retry := now.Add(time.Hour)
	out := func(idx int, outcome string) Outcome {
		o := Outcome{Attempt: Attempt{Recipient: idx, Attempt: 1, StartedAt: now, SMTPCode: 250, Outcome: outcome}}
		if outcome == RecipientDeferred {
			o.Attempt.SMTPCode, o.NextAttemptAt = 451, &retry
		}
		return o
	}
	// Even messages: both domains in the batch (one of them deferred);
	// odd ones: only recipient 0, so not complete.
	var batch []MessageOutcomes
	for i, m := range msgs {
		batch = append(batch, MessageOutcomes{ID: m.ID, Outcomes: []Outcome{out(0, RecipientDelivered)}})
		if i%2 == 0 {
			batch = append(batch, MessageOutcomes{ID: m.ID, Outcomes: []Outcome{out(1, RecipientDelivered)}})
		}
	}
	// A hard bounce that suppresses its address: its events too.
	bounce := out(1, RecipientBounced)
	bounce.Attempt.SMTPCode, bounce.Attempt.EnhancedCode, bounce.Attempt.BounceType, bounce.Attempt.BounceClass = 550, "5.1.1", "hard", "invalid_recipient"
	bounce.Suppress = true
	batch = append(batch, MessageOutcomes{ID: msgs[1].ID, Outcomes: []Outcome{bounce}})
	bad := slices.Clone(batch)
	bad = append(bad, MessageOutcomes{ID: msgs[1].ID, Outcomes: []Outcome{out(1, "bogus")}})
	if _, err := s.RecordOutcomesBatch(t.Context(), bad); !errors.Is(err, ErrRejected) {
		t.Fatalf("batch with an invalid outcome: %v, want ErrRejected", err)
	}
	if n := count(t, s, `SELECT count(*) FROM attempts`); n != 0 {
		t.Fatalf("a refused batch wrote %d attempts", n)
	}

	for round := range 2 { // the second is a repeat after a lost reply
		complete, err := s.RecordOutcomesBatch(t.Context(), batch)
		if err != nil {
			t.Fatal(err)
		}
		completes := 0
		for _, c := range complete {
			if c {
				completes++
			}
		}
		if want := []int{6, 0}[round]; completes != want {
			t.Errorf("round %d: %d messages reported complete, want %d", round, completes, want)
		}
	}
	if n := count(t, s, `SELECT count(*) FROM attempts`); n != 16 {
		t.Errorf("%d attempts, want 16 (once each, the repeat adds none)", n)
	}
	if n := count(t, s, `SELECT count(*) FROM messages WHERE completed_at IS NOT NULL AND body IS NULL`); n != 6 {
		t.Errorf("%d messages complete, want 6", n)
	}
	for _, typ := range []string{"message.bounced", "message.suppressed"} {
		if n := count(t, s, `SELECT count(*) FROM events WHERE type = $1 AND message_id = $2`, typ, msgs[1].ID); n != 1 {
			t.Errorf("%d %s events, want 1", n, typ)
		}
	}
	if n := count(t, s, `SELECT count(*) FROM suppressions WHERE reason = 'hard_bounce' AND message_id = $1`, msgs[1].ID); n != 1 {
		t.Errorf("%d suppressions, want 1", n)
	}
	if n := count(t, s, `SELECT count(*) FROM recipients WHERE status = 'delivered' AND attempts = 1 AND lease_owner IS NULL`); n != 15 {
		t.Errorf("%d recipients delivered at attempt 1, want 15", n)
	}
	if n := count(t, s, `SELECT count(*) FROM events WHERE type = 'message.delivered'`); n != 15 {
		t.Errorf("%d delivered events, want 15", n)
	}
	// An empty batch, and messages without outcomes, write nothing.
	if c, err := s.RecordOutcomesBatch(t.Context(), []MessageOutcomes{{ID: uuid.New()}}); err != nil || c[0] {
		t.Errorf("empty outcomes: %v %v", c, err)
	}
}

// TestLoadDeliveriesBatch: each job of a batch gets what LoadDelivery
// gives it, a missing message its own ErrNotFound.
func TestLoadDeliveriesBatch(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 4) // user0,2 @dest0.example; user1,3 @dest1.example
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SaveSignature(t.Context(), m.ID, "sig\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := s.ParkJob(t.Context(), m.ID, "dest1.example", "test"); err != nil {
		t.Fatal(err)
	}
	reqs := []DeliveryRequest{{m.ID, "dest0.example"}, {uuid.New(), "dest0.example"}, {m.ID, "dest1.example"}, {m.ID, "nowhere.example"}}
	got, err := s.LoadDeliveries(t.Context(), reqs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range reqs {
		want, werr := s.LoadDelivery(t.Context(), r.ID, r.Domain)
		if !errors.Is(got[i].Err, ErrNotFound) && !errors.Is(werr, ErrNotFound) && (got[i].Err != nil || werr != nil) {
			t.Errorf("%d: errors %v and %v", i, got[i].Err, werr)
		}
		if errors.Is(got[i].Err, ErrNotFound) != errors.Is(werr, ErrNotFound) {
			t.Errorf("%d: not found %v, LoadDelivery says %v", i, got[i].Err, werr)
			continue
		}
		if werr != nil {
			continue
		}
		g := got[i].Delivery
		if g.MessageID != want.MessageID || string(g.Body) != string(want.Body) || g.DKIMHeader != want.DKIMHeader || g.Signed != want.Signed ||
			g.Parked != want.Parked || !slices.EqualFunc(g.Recipients, want.Recipients, func(a, b PendingRecipient) bool { return a.Idx == b.Idx && a.Email == b.Email }) {
			t.Errorf("%d: %+v, LoadDelivery gives %+v", i, g, want)
		}
	}
	if got[0].Delivery == nil || len(got[0].Delivery.Recipients) != 2 || got[2].Delivery.Parked != "test" || got[3].Delivery == nil || len(got[3].Delivery.Recipients) != 0 {
		t.Errorf("deliveries %+v", got)
	}
}
