package store

import (
	"testing"
	"time"
)

// TestRecordOutcomesIdempotent: RecordOutcomes retried after its commit
// reply was lost (the worker cannot tell) must not count the attempt twice:
// the second call with the same outcomes changes nothing, and the next
// attempt is still recorded.
func TestRecordOutcomesIdempotent(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 2)
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Microsecond)
	retry := now.Add(time.Minute)
	deferred := []Outcome{{Attempt: Attempt{Recipient: 0, Attempt: 1, StartedAt: now, SMTPCode: 451,
		Response: "greylisted", Outcome: RecipientDeferred}, NextAttemptAt: &retry}}
	for try := range 2 {
		if _, err := s.RecordOutcomes(t.Context(), m.ID, deferred); err != nil {
			t.Fatalf("record, try %d: %v", try+1, err)
		}
	}
	if n := count(t, s, "SELECT count(*) FROM attempts WHERE message_id = $1 AND rcpt_idx = 0", m.ID); n != 1 {
		t.Errorf("%d attempt rows after recording attempt 1 twice, want 1", n)
	}
	if n := count(t, s, "SELECT attempts FROM recipients WHERE message_id = $1 AND idx = 0", m.ID); n != 1 {
		t.Errorf("recipient counts %d attempts after recording attempt 1 twice, want 1", n)
	}
	delivered := []Outcome{{Attempt: Attempt{Recipient: 0, Attempt: 2, StartedAt: now.Add(time.Minute), SMTPCode: 250,
		Outcome: RecipientDelivered}}}
	for range 2 {
		if _, err := s.RecordOutcomes(t.Context(), m.ID, delivered); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, s, "SELECT count(*) FROM attempts WHERE message_id = $1 AND rcpt_idx = 0", m.ID); n != 2 {
		t.Errorf("%d attempt rows after attempts 1 and 2, want 2", n)
	}
	if n := count(t, s, "SELECT attempts FROM recipients WHERE message_id = $1 AND idx = 0 AND status = 'delivered'", m.ID); n != 2 {
		t.Errorf("delivered recipient counts %d attempts, want 2", n)
	}
}
