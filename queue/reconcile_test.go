package queue

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/testenv"
)

// TestIntact: the marker is missing on a new queue, present once set, and
// missing again when any one shard loses it (as a cluster node losing its
// slots would).
func TestIntact(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		q := newQueue(t, rdb, Options{Prefix: prefix, Shards: 3})
		ctx := context.Background()
		check := func(want bool) {
			t.Helper()
			got, err := q.Intact(ctx)
			if err != nil || got != want {
				t.Fatalf("Intact = %v, %v; want %v", got, err, want)
			}
		}
		check(false)
		rb, err := q.StartRebuild(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := q.MarkIntact(ctx, rb); err != nil {
			t.Fatal(err)
		}
		check(true)
		// A rebuild only marks once, with its own token.
		if err := q.MarkIntact(ctx, rb); !errors.Is(err, ErrRebuildInterrupted) {
			t.Errorf("second MarkIntact of one rebuild: %v, want ErrRebuildInterrupted", err)
		}
		if err := q.MarkIntact(ctx, Rebuild{}); err == nil {
			t.Error("MarkIntact without a rebuild succeeded")
		}
		// Redis loses a shard's data while the jobs are being requeued:
		// the queue must not be marked whole over the loss.
		if err := rdb.Del(ctx, prefix+":{q1}:intact").Err(); err != nil {
			t.Fatal(err)
		}
		check(false)
		rb, err = q.StartRebuild(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := rdb.Del(ctx, prefix+":{q1}:rebuild").Err(); err != nil {
			t.Fatal(err)
		}
		if err := q.MarkIntact(ctx, rb); !errors.Is(err, ErrRebuildInterrupted) {
			t.Errorf("MarkIntact after a loss during the rebuild: %v, want ErrRebuildInterrupted", err)
		}
		check(false)
	})
}

// TestJobs: the walk sees every job once whatever its state (scheduled,
// ready, in flight) over several shards and more than a page, and
// ErrStop ends it early.
func TestJobs(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		q := newQueue(t, rdb, Options{Prefix: prefix, Shards: 2, Consumer: "c"})
		ctx := context.Background()
		const n = 2*scanPage + 10
		var items []Item
		for i := range n {
			it := Item{Job: job(i)}
			if i%3 == 0 {
				it.NotBefore = time.Now().Add(time.Hour)
			}
			items = append(items, it)
		}
		enqueue(t, q, items...)
		held, err := q.Claim(ctx, 100, 0)
		if err != nil || len(held) != 100 {
			t.Fatalf("claim: %d %v", len(held), err)
		}
		seen := map[string]int{}
		if err := q.Jobs(ctx, func(j Job) error { seen[j.MessageID]++; return nil }); err != nil {
			t.Fatal(err)
		}
		if len(seen) != n {
			t.Errorf("walk saw %d jobs, want %d", len(seen), n)
		}
		for i := range n {
			if c := seen[job(i).MessageID]; c != 1 {
				t.Errorf("%s seen %d times", job(i).MessageID, c)
			}
		}
		calls := 0
		if err := q.Jobs(ctx, func(Job) error { calls++; return ErrStop }); err != nil || calls != 1 {
			t.Errorf("ErrStop: %d calls, %v", calls, err)
		}
		boom := fmt.Errorf("boom")
		if err := q.Jobs(ctx, func(Job) error { return boom }); err != boom {
			t.Errorf("fn error: %v", err)
		}
	})
}
