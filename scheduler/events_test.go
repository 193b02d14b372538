package scheduler_test

import (
	"context"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/teststack"
	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/scheduler"
	"github.com/mailferry/mailferry/store"
)

// TestChoresPurgeEventsPastRetention: the chores delete events older than
// EventRetention (MAILFERRY_EVENT_RETENTION). The scheduler's clock is
// moved 31 days on, past the 30-day default.
func TestChoresPurgeEventsPastRetention(t *testing.T) {
	ts := teststack.New(t, teststack.Options{Queue: queue.Options{Consumer: "c"}})
	st := ts.Store
	if _, _, err := st.CreateAPIKey(t.Context(), "acme", []string{"example.com"}); err != nil {
		t.Fatal(err)
	}
	if err := st.AppendEvents(t.Context(), []store.NewEvent{{Type: store.EventDomainVerified, TenantID: "acme",
		Data: map[string]any{"domain": "example.com"}}}); err != nil {
		t.Fatal(err)
	}
	feed := func() int {
		evs, _, err := st.ListEvents(t.Context(), "acme", store.EventQuery{})
		if err != nil {
			t.Fatal(err)
		}
		return len(evs)
	}
	wait.For(t, "the event in the feed", func() bool { return feed() == 1 })
	s, err := scheduler.New(scheduler.Options{Queue: ts.Queue, Ledger: st,
		Now: func() time.Time { return time.Now().Add(31 * 24 * time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	wait.For(t, "the 30-day-old event purged", func() bool { return feed() == 0 })
}
