package scheduler_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/wait"

	"github.com/mailferry/mailferry/scheduler"
	"github.com/mailferry/mailferry/store"
)

// TestSweepPastQueuedBacklog: more long-due jobs than one page of the
// sweep are all still queued (a backlog), and one job beyond them is lost.
// The sweep must walk past the queued ones and requeue the lost one.
func TestSweepPastQueuedBacklog(t *testing.T) {
	e := newReconcileEnv(t)
	ctx := t.Context()
	old := time.Now().Add(-time.Hour)
	e.accept(6, old) // 12 jobs, queued below
	r, err := scheduler.NewReconciler(scheduler.ReconcileOptions{Ledger: e.st, Queue: e.q, Marker: e.q,
		StaleAfter: time.Minute, MaxStale: 5})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := r.Reconcile(ctx); err != nil || !res.Restored || res.Requeued != 12 {
		t.Fatalf("restore: %+v %v", res, err)
	}
	// Accepted after the restore, and never enqueued: lost. Newer than the
	// backlog, so it sorts after it.
	lost := e.accept(1, old.Add(time.Minute))
	res, err := r.Reconcile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Requeued != 2 {
		t.Errorf("sweep %+v: want the lost message's 2 jobs requeued past a backlog of 12 queued ones", res)
	}
	got := e.queued()
	for _, j := range jobsOf(lost, "a.example", "b.example") {
		if !slices.Contains(got, j) {
			t.Errorf("lost job %s not requeued", j)
		}
	}
}

// TestChoresDropOldAttempts: the scheduler's chores apply the attempt
// retention (MAILFERRY_ATTEMPT_RETENTION, 90 days by default): attempts
// older than that go, recent ones stay.
func TestChoresDropOldAttempts(t *testing.T) {
	e := newReconcileEnv(t)
	ctx := t.Context()
	ids := e.accept(1, time.Now().Add(-200*24*time.Hour))
	old := time.Now().Add(-200 * 24 * time.Hour)
	if err := e.st.InsertAttempts(ctx, []store.Attempt{
		{MessageID: ids[0], Recipient: 0, Attempt: 1, StartedAt: old, Outcome: store.RecipientDeferred},
		{MessageID: ids[0], Recipient: 1, Attempt: 1, StartedAt: time.Now(), Outcome: store.RecipientDeferred},
	}); err != nil {
		t.Fatal(err)
	}
	attempts := func() int {
		v, err := e.st.GetMessage(ctx, e.key.TenantID, ids[0])
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, ev := range v.Events {
			if ev.Type == "deferred" {
				n++
			}
		}
		return n
	}
	if n := attempts(); n != 2 {
		t.Fatalf("%d attempts before the chores, want 2", n)
	}
	s, err := scheduler.New(scheduler.Options{Queue: e.q, Ledger: e.st})
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx2) }()
	// A cleanup, so the scheduler stops even when the wait fails the test.
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	wait.For(t, "the 200-day-old attempt dropped (1 attempt left)", func() bool { return attempts() == 1 })
}
