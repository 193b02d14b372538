package scheduler_test

import (
	"context"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/teststack"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/scheduler"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// TestPromotesDueJobs runs the scheduler against real Redis and
// PostgreSQL: a job whose time has come becomes ready, one in the future
// stays scheduled, and the chores leave attempt partitions in place.
func TestPromotesDueJobs(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ts := teststack.New(t, teststack.Options{Queue: queue.Options{Consumer: "c"}})
	st, q := ts.Store, ts.Queue
	now := time.Now()
	if err := q.Enqueue(ctx,
		queue.Item{Job: queue.Job{MessageID: "m1", Domain: "a.example"}, NotBefore: now.Add(300 * time.Millisecond)},
		queue.Item{Job: queue.Job{MessageID: "m2", Domain: "a.example"}, NotBefore: now.Add(time.Hour)},
	); err != nil {
		t.Fatal(err)
	}
	s, err := scheduler.New(scheduler.Options{Queue: q, Ledger: st, PromoteEvery: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, err := q.Depth(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d.Ready == 1 && d.Scheduled == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("due job not promoted: %+v", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
	got, err := q.Claim(ctx, 10, 0)
	if err != nil || len(got) != 1 || got[0].Job.MessageID != "m1" {
		t.Fatalf("claimed %+v %v, want m1", got, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}
