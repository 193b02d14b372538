package store

import (
	"sync"
	"testing"
	"time"
)

// TestRecordOutcomesConcurrentDomains: workers for two domains of one
// message record their last recipients at once. Exactly one of them must
// see the message complete, or its body would never be cleared.
func TestRecordOutcomesConcurrentDomains(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	const messages = 40
	msgs := make([]NewMessage, messages)
	for i := range msgs {
		msgs[i] = testMessage(k, 2) // user0@dest0, user1@dest1
	}
	if err := s.AcceptBatch(t.Context(), msgs); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, m := range msgs {
		start := make(chan struct{})
		var wg sync.WaitGroup
		completes := make([]bool, 2)
		for r := range 2 {
			wg.Go(func() {
				<-start
				c, err := s.RecordOutcomes(t.Context(), m.ID, []Outcome{{Attempt: Attempt{Recipient: r, Attempt: 1, StartedAt: now, Outcome: RecipientDelivered}}})
				if err != nil {
					t.Error(err)
				}
				completes[r] = c
			})
		}
		close(start)
		wg.Wait()
		if completes[0] == completes[1] {
			t.Errorf("message %s: complete reported %v by both domains, want by exactly one", m.ID, completes)
		}
	}
	if n := count(t, s, "SELECT count(*) FROM messages WHERE body IS NOT NULL OR completed_at IS NULL"); n != 0 {
		t.Errorf("%d of %d messages left incomplete with every recipient final", n, messages)
	}
}
