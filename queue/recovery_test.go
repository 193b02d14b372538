package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/wait"

	"github.com/mailferry/mailferry/internal/devstack"
)

// msSlack allows for Redis truncating idle times to whole milliseconds.
const msSlack = 2 * time.Millisecond

// reclaimWithin polls q until it claims something or limit passes.
func reclaimWithin(t *testing.T, q *Queue, limit time.Duration) []Claimed {
	t.Helper()
	end := time.Now().Add(limit)
	for time.Now().Before(end) {
		cs, err := q.Claim(context.Background(), 10, 0)
		if err != nil {
			t.Fatalf("claim: %v", err)
		}
		if len(cs) > 0 {
			return cs
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

func TestVisibilityTimeout(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		const vt = 300 * time.Millisecond
		a := newQueue(t, rdb, Options{Prefix: prefix, Consumer: "a"})
		b := newQueue(t, rdb, Options{Prefix: prefix, Consumer: "b", VisibilityTimeout: vt})
		ctx := context.Background()
		enqueue(t, a, ready(job(1))...)
		// Taken before the claim so that Redis's clock starts no earlier.
		claimedAt := time.Now()
		held, err := a.Claim(ctx, 10, 0)
		if err != nil || len(held) != 1 {
			t.Fatalf("a claims = %v, %v; want one job", held, err)
		}

		// Until the timeout, b keeps finding nothing.
		for time.Since(claimedAt) < vt*2/3 {
			cs, err := b.Claim(ctx, 10, 0)
			if err != nil {
				t.Fatalf("b claims: %v", err)
			}
			if len(cs) > 0 && time.Since(claimedAt) < vt {
				t.Fatalf("b took %v after %v, before the %v timeout", cs, time.Since(claimedAt), vt)
			}
			time.Sleep(20 * time.Millisecond)
		}

		cs := reclaimWithin(t, b, 5*time.Second)
		if elapsed := time.Since(claimedAt); len(cs) != 1 || elapsed < vt-msSlack {
			t.Fatalf("b reclaimed %v after %v; want the job after %v", cs, elapsed, vt)
		}
		if cs[0] != held[0] {
			t.Errorf("b reclaimed %+v, want %+v", cs[0], held[0])
		}
		if err := a.Extend(ctx, held...); !errors.Is(err, ErrLost) {
			t.Errorf("a extends a lost job: %v, want ErrLost", err)
		}
		if err := b.Extend(ctx, cs...); err != nil {
			t.Errorf("b extends its job: %v", err)
		}
		if err := b.Ack(ctx, cs...); err != nil {
			t.Fatalf("b acks: %v", err)
		}
		if err := a.Ack(ctx, held...); err != nil {
			t.Errorf("a acks late: %v", err)
		}
		if d := depth(t, a); d != (Depth{}) {
			t.Errorf("depth = %+v, want zero", d)
		}
	})
}

func TestExtend(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		const vt = 300 * time.Millisecond
		a := newQueue(t, rdb, Options{Prefix: prefix, Consumer: "a", VisibilityTimeout: vt})
		b := newQueue(t, rdb, Options{Prefix: prefix, Consumer: "b", VisibilityTimeout: vt})
		ctx := context.Background()
		enqueue(t, a, ready(job(1), job(2))...)
		held, err := a.Claim(ctx, 10, 0)
		if err != nil || len(held) != 2 {
			t.Fatalf("a claims = %v, %v; want two jobs", held, err)
		}
		// Heartbeats for three timeouts keep both jobs with a.
		lastBeat := time.Now()
		for start := time.Now(); time.Since(start) < 3*vt; {
			time.Sleep(vt / 3)
			lastBeat = time.Now()
			if err := a.Extend(ctx, held...); err != nil {
				t.Fatalf("extend: %v", err)
			}
			if cs, err := b.Claim(ctx, 10, 0); err != nil || len(cs) != 0 {
				t.Fatalf("b claims while a extends = %v, %v; want nothing", cs, err)
			}
		}
		if d := depth(t, a); d != (Depth{Inflight: 2}) {
			t.Errorf("depth = %+v, want 2 inflight", d)
		}
		// Without them, b takes over.
		var got []Claimed
		for len(got) < 2 {
			cs := reclaimWithin(t, b, 5*time.Second)
			if cs == nil {
				t.Fatalf("b reclaimed %d of 2 jobs", len(got))
			}
			got = append(got, cs...)
		}
		if elapsed := time.Since(lastBeat); elapsed < vt-msSlack {
			t.Errorf("b reclaimed %v after the last heartbeat, before the %v timeout", elapsed, vt)
		}
	})
}

func TestConcurrentClaimers(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		const n, workers = 1000, 4
		producer := newQueue(t, rdb, Options{Prefix: prefix, Shards: 2})
		var items []Item
		for i := range n {
			items = append(items, Item{Job: job(i)})
		}
		enqueue(t, producer, items...)

		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var (
			mu    sync.Mutex
			seen  = make(map[Job]int)
			total atomic.Int64
			wg    sync.WaitGroup
		)
		for w := range workers {
			q := newQueue(t, rdb, Options{Prefix: prefix, Shards: 2, Consumer: fmt.Sprintf("w%d", w)})
			wg.Go(func() {
				for total.Load() < n && ctx.Err() == nil {
					cs, err := q.Claim(ctx, 25, 50*time.Millisecond)
					if err != nil {
						t.Errorf("worker %d claims: %v", w, err)
						return
					}
					mu.Lock()
					for _, c := range cs {
						seen[c.Job]++
					}
					mu.Unlock()
					if err := q.Ack(ctx, cs...); err != nil {
						t.Errorf("worker %d acks: %v", w, err)
						return
					}
					total.Add(int64(len(cs)))
				}
			})
		}
		wg.Wait()
		for i := range n {
			if c := seen[job(i)]; c != 1 {
				t.Errorf("job %d claimed %d times", i, c)
			}
		}
		if len(seen) != n {
			t.Errorf("claimed %d distinct jobs, want %d", len(seen), n)
		}
		if d := depth(t, producer); d != (Depth{}) {
			t.Errorf("depth = %+v, want zero", d)
		}
	})
}

func TestClaimWaits(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		for _, shards := range []int{1, 3} {
			t.Run(fmt.Sprintf("%d shards", shards), func(t *testing.T) {
				t.Parallel()
				rdb, prefix := shared(t)
				q := newQueue(t, rdb, Options{Prefix: prefix, Shards: shards, Consumer: "c"})
				ctx := context.Background()

				t.Run("times out empty", func(t *testing.T) {
					start := time.Now()
					cs, err := q.Claim(ctx, 1, 300*time.Millisecond)
					if err != nil || len(cs) != 0 {
						t.Fatalf("claim = %v, %v; want nothing, no error", cs, err)
					}
					if waited := time.Since(start); waited < 300*time.Millisecond {
						t.Errorf("claim returned after %v, before its 300ms wait", waited)
					}
				})
				t.Run("wakes for a job", func(t *testing.T) {
					// A job for each shard in turn: each must end the wait.
					for s := range shards {
						j := job(0)
						for i := 1; q.shardOf(j) != s; i++ {
							j = job(i)
						}
						enqueued := make(chan error, 1)
						time.AfterFunc(100*time.Millisecond, func() { enqueued <- q.Enqueue(ctx, ready(j)...) })
						cs, err := q.Claim(ctx, 5, 10*time.Second)
						if err := <-enqueued; err != nil {
							t.Fatalf("enqueue: %v", err)
						}
						if err != nil || len(cs) != 1 || cs[0].Job != j {
							t.Fatalf("claim = %v, %v; want %v", cs, err, j)
						}
					}
				})
			})
		}
	})
}

func TestClaimCancel(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		for _, tc := range []struct {
			name   string
			shards int
			ctx    func() (context.Context, context.CancelFunc)
			want   error
		}{
			{"cancel", 1, func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(100*time.Millisecond, cancel)
				return ctx, cancel
			}, context.Canceled},
			{"cancel with shards", 3, func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(100*time.Millisecond, cancel)
				return ctx, cancel
			}, context.Canceled},
			{"deadline", 1, func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 150*time.Millisecond)
			}, context.DeadlineExceeded},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				q := newQueue(t, rdb, Options{Prefix: prefix + ":" + tc.name, Shards: tc.shards, Consumer: "c"})
				ctx, cancel := tc.ctx()
				defer cancel()
				start := time.Now()
				cs, err := q.Claim(ctx, 1, time.Minute)
				if !errors.Is(err, tc.want) || len(cs) != 0 {
					t.Errorf("claim = %v, %v; want %v", cs, err, tc.want)
				}
				// The wait is a minute; anything near the slice length is prompt.
				if took := time.Since(start); took > 2*time.Second {
					t.Errorf("claim returned %v after the context ended", took)
				}
			})
		}
	})
}

// TestRedisLoss flushes Redis under a running queue. It uses a server of
// its own: FLUSHALL on the shared one would wipe other tests' keys.
func TestRedisLoss(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, err := devstack.StartRedis(ctx, devstack.RedisOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("start redis: %v", err)
	}
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	rdb := connect(t, srv.URL)
	q := newQueue(t, rdb, Options{Shards: 2, Consumer: "c"})
	flush := func(t *testing.T) {
		t.Helper()
		if err := rdb.FlushAll(ctx).Err(); err != nil {
			t.Fatalf("flushall: %v", err)
		}
	}

	enqueue(t, q, ready(job(1), job(2), job(3))...)
	held := claimAll(t, q)
	if len(held) != 3 {
		t.Fatalf("claimed %d jobs, want 3", len(held))
	}
	flush(t)

	t.Run("ack after loss", func(t *testing.T) {
		if err := q.Ack(ctx, held[0]); err != nil {
			t.Errorf("ack: %v", err)
		}
	})
	t.Run("extend after loss", func(t *testing.T) {
		if err := q.Extend(ctx, held[1]); !errors.Is(err, ErrLost) {
			t.Errorf("extend = %v, want ErrLost", err)
		}
	})
	t.Run("retry after loss", func(t *testing.T) {
		// The worker still holds the job, so its retry is kept.
		if err := q.Retry(ctx, held[2], time.Now().Add(time.Hour)); err != nil {
			t.Errorf("retry: %v", err)
		}
		if d := depth(t, q); d != (Depth{Scheduled: 1}) {
			t.Errorf("depth = %+v, want 1 scheduled", d)
		}
	})
	t.Run("claim recreates the group", func(t *testing.T) {
		if cs, err := q.Claim(ctx, 10, 0); err != nil || len(cs) != 0 {
			t.Fatalf("claim = %v, %v; want nothing, no error", cs, err)
		}
		enqueue(t, q, ready(job(4))...)
		cs := claimAll(t, q)
		if len(cs) != 1 || cs[0].Job != job(4) {
			t.Fatalf("claimed %v, want %v", cs, job(4))
		}
		if err := q.Ack(ctx, cs...); err != nil {
			t.Fatalf("ack: %v", err)
		}
	})
	t.Run("jobs enqueued before the group", func(t *testing.T) {
		flush(t)
		// The stream is recreated by XADD, without the group.
		enqueue(t, q, ready(job(5), job(6))...)
		if d := depth(t, q); d != (Depth{Ready: 2}) {
			t.Errorf("depth = %+v, want 2 ready", d)
		}
		if got := claimAll(t, q); len(got) != 2 {
			t.Errorf("claimed %v, want jobs 5 and 6", got)
		}
	})
	t.Run("blocked claim", func(t *testing.T) {
		type result struct {
			cs  []Claimed
			err error
		}
		done := make(chan result, 1)
		go func() {
			cs, err := q.Claim(ctx, 1, 10*time.Second)
			done <- result{cs, err}
		}()
		// The claim is blocked in Redis when the flush comes; the job
		// enqueued after it must reach the claim whatever the order of
		// the claim's next read and the enqueue.
		wait.For(t, "the claim to block in Redis", func() bool {
			info, err := rdb.Info(ctx, "clients").Result()
			return err == nil && !strings.Contains(info, "blocked_clients:0\r\n")
		})
		flush(t)
		enqueue(t, q, ready(job(7))...)
		select {
		case r := <-done:
			if r.err != nil || len(r.cs) != 1 || r.cs[0].Job != job(7) {
				t.Errorf("claim = %v, %v; want %v", r.cs, r.err, job(7))
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a claim blocked across FLUSHALL did not return the new job")
		}
	})
}

func TestPruneConsumers(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		ctx := context.Background()
		a := newQueue(t, rdb, Options{Prefix: prefix, Consumer: "a"})
		b := newQueue(t, rdb, Options{Prefix: prefix, Consumer: "b"})
		if n, err := a.PruneConsumers(ctx, time.Second); err != nil || n != 0 {
			t.Errorf("prune before any stream = %d, %v; want 0", n, err)
		}
		if _, err := a.PruneConsumers(ctx, 0); err == nil {
			t.Error("prune with zero idle succeeded")
		}
		enqueue(t, a, ready(job(1), job(2))...)
		if cs, err := a.Claim(ctx, 1, 0); err != nil || len(cs) != 1 {
			t.Fatalf("a claims = %v, %v", cs, err)
		}
		cs, err := b.Claim(ctx, 1, 0)
		if err != nil || len(cs) != 1 {
			t.Fatalf("b claims = %v, %v", cs, err)
		}
		if err := b.Ack(ctx, cs...); err != nil {
			t.Fatalf("b acks: %v", err)
		}
		// b must have been idle longer than the second case's 20ms.
		wait.For(t, "consumer b to idle 20ms", func() bool {
			cs, err := rdb.XInfoConsumers(ctx, prefix+":{q0}:ready", "workers").Result()
			if err != nil {
				return false
			}
			for _, c := range cs {
				if c.Name == "b" {
					return c.Idle >= 25*time.Millisecond
				}
			}
			return false
		})

		for _, tc := range []struct {
			name string
			idle time.Duration
			want int
			left []string
		}{
			{"nobody idle that long", time.Hour, 0, []string{"a", "b"}},
			{"idle without jobs", 20 * time.Millisecond, 1, []string{"a"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				n, err := a.PruneConsumers(ctx, tc.idle)
				if err != nil || n != tc.want {
					t.Errorf("prune = %d, %v; want %d", n, err, tc.want)
				}
				infos, err := rdb.XInfoConsumers(ctx, a.shards[0].stream, "workers").Result()
				if err != nil {
					t.Fatalf("xinfo consumers: %v", err)
				}
				var left []string
				for _, c := range infos {
					left = append(left, c.Name)
				}
				if !slices.Equal(left, tc.left) {
					t.Errorf("consumers left = %v, want %v", left, tc.left)
				}
			})
		}
		// A pruned worker rejoins by claiming.
		enqueue(t, b, ready(job(3))...)
		if cs, err := b.Claim(ctx, 1, 0); err != nil || len(cs) != 1 {
			t.Errorf("b claims after pruning = %v, %v", cs, err)
		}
	})
}
