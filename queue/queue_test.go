package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/internal/redisconn"
	"github.com/mailferry/mailferry/internal/testenv"
)

// TestMain starts a Redis Cluster beside the single server: the suite runs
// on both (testenv.EachRedis), which proves every multi-key command and
// script stays in one slot.
func TestMain(m *testing.M) { testenv.Main(m, testenv.WithCluster()) }

// connect opens a client to url and closes it when the test ends.
func connect(t testing.TB, url string) *redis.Client {
	t.Helper()
	o, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("parse redis url: %v", err)
	}
	rdb := redis.NewClient(o)
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// shared connects to the test server of the test's mode (the cluster
// under testenv.EachRedis's cluster subtest) and returns a key prefix of
// the test's own; its keys are deleted when the test ends.
func shared(t testing.TB) (redis.UniversalClient, string) {
	t.Helper()
	rdb := testenv.Redis(t, redisconn.Options{})
	prefix := testenv.KeyPrefix(t)
	t.Cleanup(func() {
		if err := testenv.DeleteKeys(context.Background(), rdb, prefix); err != nil {
			t.Errorf("delete test keys: %v", err)
		}
	})
	return rdb, prefix
}

func newQueue(t testing.TB, rdb redis.UniversalClient, opts Options) *Queue {
	t.Helper()
	q, err := New(rdb, opts)
	if err != nil {
		t.Fatalf("New(%+v): %v", opts, err)
	}
	return q
}

func job(i int) Job {
	return Job{MessageID: fmt.Sprintf("msg-%05d", i), Domain: "example.net"}
}

func ready(jobs ...Job) []Item {
	items := make([]Item, len(jobs))
	for i, j := range jobs {
		items[i] = Item{Job: j}
	}
	return items
}

func enqueue(t testing.TB, q *Queue, items ...Item) {
	t.Helper()
	if err := q.Enqueue(context.Background(), items...); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
}

// claimAll claims without waiting until nothing is left.
func claimAll(t testing.TB, q *Queue) []Claimed {
	t.Helper()
	var all []Claimed
	for {
		cs, err := q.Claim(context.Background(), 100, 0)
		if err != nil {
			t.Fatalf("claim: %v", err)
		}
		if len(cs) == 0 {
			return all
		}
		all = append(all, cs...)
	}
}

func depth(t testing.TB, q *Queue) Depth {
	t.Helper()
	d, err := q.Depth(context.Background())
	if err != nil {
		t.Fatalf("depth: %v", err)
	}
	return d
}

func jobsOf(cs []Claimed) []Job {
	js := make([]Job, len(cs))
	for i, c := range cs {
		js[i] = c.Job
	}
	slices.SortFunc(js, func(a, b Job) int {
		return strings.Compare(a.MessageID+a.Domain, b.MessageID+b.Domain)
	})
	return js
}

func TestOptions(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, _ := shared(t)
		good := func(name string, in Options, want Options) {
			t.Run(name, func(t *testing.T) {
				q, err := New(rdb, in)
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				if q.opts != want {
					t.Errorf("options = %+v, want %+v", q.opts, want)
				}
			})
		}
		bad := func(name string, in Options, wantErr ...string) {
			t.Run(name, func(t *testing.T) {
				_, err := New(rdb, in)
				if err == nil {
					t.Fatal("New succeeded")
				}
				for _, w := range wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
			})
		}
		good("defaults", Options{},
			Options{Prefix: "mailferry", Shards: 1, Group: "workers", VisibilityTimeout: 5 * time.Minute})
		good("kept", Options{Prefix: "p", Shards: 8, Group: "g", Consumer: "c", VisibilityTimeout: time.Second},
			Options{Prefix: "p", Shards: 8, Group: "g", Consumer: "c", VisibilityTimeout: time.Second})
		bad("negative shards", Options{Shards: -1}, "shards -1")
		bad("too many shards", Options{Shards: 100000}, "shards 100000")
		bad("brace in prefix", Options{Prefix: "a{b}"}, "prefix")
		bad("negative visibility", Options{VisibilityTimeout: -time.Second}, "visibility timeout")
		bad("sub-millisecond visibility", Options{VisibilityTimeout: time.Microsecond}, "visibility timeout")
		bad("every fault at once", Options{Prefix: "{", Shards: -2, VisibilityTimeout: -1},
			"prefix", "shards -2", "visibility timeout")
		t.Run("nil client", func(t *testing.T) {
			if _, err := New(nil, Options{}); err == nil {
				t.Error("New(nil) succeeded")
			}
		})
	})
}

func TestBadCalls(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		q := newQueue(t, rdb, Options{Prefix: prefix, Consumer: "c"})
		anon := newQueue(t, rdb, Options{Prefix: prefix})
		ctx := context.Background()
		for _, tc := range []struct {
			name string
			call func() error
			want string
		}{
			{"empty message id", func() error { return q.Enqueue(ctx, Item{Job: Job{Domain: "d"}}) }, "item 0: empty message id"},
			{"empty domain", func() error { return q.Enqueue(ctx, ready(job(1), Job{MessageID: "m"})...) }, "item 1: empty domain"},
			{"negative attempt", func() error { return q.Enqueue(ctx, ready(Job{MessageID: "m", Domain: "d", Attempt: -1})...) }, "attempt -1"},
			{"space in domain", func() error { return q.Enqueue(ctx, ready(Job{MessageID: "m", Domain: "a b"})...) }, `domain "a b"`},
			{"claim without consumer", func() error { _, err := anon.Claim(ctx, 1, 0); return err }, "Options.Consumer"},
			{"extend without consumer", func() error { return anon.Extend(ctx, Claimed{ID: "1-0", Job: job(1)}) }, "Options.Consumer"},
			{"claim zero", func() error { _, err := q.Claim(ctx, 0, 0); return err }, "limit 0"},
			{"promote zero", func() error { _, err := q.PromoteDue(ctx, time.Now(), 0); return err }, "limit 0"},
			{"ack without id", func() error { return q.Ack(ctx, Claimed{Job: job(1)}) }, "no entry id"},
			{"retry without id", func() error { return q.Retry(ctx, Claimed{Job: job(1)}, time.Now()) }, "no entry id"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				err := tc.call()
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("error = %v, want one mentioning %q", err, tc.want)
				}
			})
		}
		// A refused Enqueue adds nothing, not even its valid items.
		if d := depth(t, q); d != (Depth{}) {
			t.Errorf("depth after refused enqueues = %+v, want zero", d)
		}
	})
}

func TestEnqueueClaimAck(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		q := newQueue(t, rdb, Options{Prefix: prefix, Consumer: "c"})
		ctx := context.Background()
		want := []Job{
			{MessageID: "m1", Domain: "a.example"},
			{MessageID: "m1", Domain: "b.example"},
			{MessageID: "m2", Domain: "a.example", Attempt: 3},
		}
		enqueue(t, q, ready(want...)...)
		if d := depth(t, q); d != (Depth{Ready: 3}) {
			t.Errorf("depth after enqueue = %+v, want 3 ready", d)
		}

		cs, err := q.Claim(ctx, 10, 0)
		if err != nil {
			t.Fatalf("claim: %v", err)
		}
		if got := jobsOf(cs); !slices.Equal(got, want) {
			t.Errorf("claimed %v, want %v", got, want)
		}
		if d := depth(t, q); d != (Depth{Inflight: 3}) {
			t.Errorf("depth after claim = %+v, want 3 inflight", d)
		}
		if more, err := q.Claim(ctx, 10, 0); err != nil || len(more) != 0 {
			t.Errorf("second claim = %v, %v; want nothing", more, err)
		}

		if err := q.Ack(ctx, cs...); err != nil {
			t.Fatalf("ack: %v", err)
		}
		if d := depth(t, q); d != (Depth{}) {
			t.Errorf("depth after ack = %+v, want zero", d)
		}
		if n := rdb.XLen(ctx, q.shards[0].stream).Val(); n != 0 {
			t.Errorf("stream length after ack = %d, want 0", n)
		}
		// A second ack finds nothing to do and says nothing.
		if err := q.Ack(ctx, cs...); err != nil {
			t.Errorf("repeated ack: %v", err)
		}
	})
}

func TestClaimLimit(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		q := newQueue(t, rdb, Options{Prefix: prefix, Shards: 3, Consumer: "c"})
		var jobs []Job
		for i := range 10 {
			jobs = append(jobs, job(i))
		}
		enqueue(t, q, ready(jobs...)...)
		for _, n := range []int{1, 4, 5} {
			cs, err := q.Claim(context.Background(), n, 0)
			if err != nil {
				t.Fatalf("claim %d: %v", n, err)
			}
			if len(cs) != n {
				t.Errorf("claim %d returned %d jobs", n, len(cs))
			}
		}
		if d := depth(t, q); d != (Depth{Inflight: 10}) {
			t.Errorf("depth = %+v, want 10 inflight", d)
		}
	})
}

func TestScheduled(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		q := newQueue(t, rdb, Options{Prefix: prefix, Consumer: "c"})
		ctx := context.Background()
		now := time.Now()
		at := now.Add(time.Hour)
		j := job(1)
		enqueue(t, q, Item{Job: j, NotBefore: at})
		// The same job again is the same member: harmless.
		enqueue(t, q, Item{Job: j, NotBefore: at})
		if d := depth(t, q); d != (Depth{Scheduled: 1}) {
			t.Errorf("depth = %+v, want 1 scheduled", d)
		}
		if cs, err := q.Claim(ctx, 10, 0); err != nil || len(cs) != 0 {
			t.Errorf("claim before due = %v, %v; want nothing", cs, err)
		}

		for _, tc := range []struct {
			name string
			now  time.Time
			want int
		}{
			{"before its time", now, 0},
			{"a millisecond early", at.Add(-time.Millisecond), 0},
			{"at its time", at, 1},
			{"after it moved", at.Add(time.Hour), 0},
		} {
			t.Run(tc.name, func(t *testing.T) {
				n, err := q.PromoteDue(ctx, tc.now, 100)
				if err != nil || n != tc.want {
					t.Errorf("PromoteDue = %d, %v; want %d", n, err, tc.want)
				}
			})
		}
		if d := depth(t, q); d != (Depth{Ready: 1}) {
			t.Errorf("depth after promotion = %+v, want 1 ready", d)
		}
		cs, err := q.Claim(ctx, 10, 0)
		if err != nil || len(cs) != 1 || cs[0].Job != j {
			t.Fatalf("claim after promotion = %v, %v; want %v", cs, err, j)
		}
	})
}

func TestPromoteDueLimit(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		q := newQueue(t, rdb, Options{Prefix: prefix, Shards: 4, Consumer: "c"})
		ctx := context.Background()
		at := time.Now().Add(time.Minute)
		var items []Item
		for i := range 25 {
			items = append(items, Item{Job: job(i), NotBefore: at})
		}
		enqueue(t, q, items...)
		later := at.Add(time.Second)
		total := 0
		for _, limit := range []int{3, 7, 100} {
			n, err := q.PromoteDue(ctx, later, limit)
			if err != nil {
				t.Fatalf("PromoteDue(%d): %v", limit, err)
			}
			if n > limit {
				t.Errorf("PromoteDue(%d) moved %d", limit, n)
			}
			total += n
		}
		if total != 25 {
			t.Errorf("moved %d in all, want 25", total)
		}
		if got := len(claimAll(t, q)); got != 25 {
			t.Errorf("claimed %d, want 25", got)
		}
	})
}

func TestRetry(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		q := newQueue(t, rdb, Options{Prefix: prefix, Shards: 2, Consumer: "c"})
		ctx := context.Background()
		j := Job{MessageID: "m1", Domain: "example.org", Attempt: 0}
		enqueue(t, q, ready(j)...)

		t.Run("later", func(t *testing.T) {
			cs := claimAll(t, q)
			if len(cs) != 1 {
				t.Fatalf("claimed %d jobs, want 1", len(cs))
			}
			at := time.Now().Add(time.Minute)
			if err := q.Retry(ctx, cs[0], at); err != nil {
				t.Fatalf("retry: %v", err)
			}
			if d := depth(t, q); d != (Depth{Scheduled: 1}) {
				t.Errorf("depth after retry = %+v, want 1 scheduled", d)
			}
			if n := rdb.XLen(ctx, q.shards[q.shardOf(j)].stream).Val(); n != 0 {
				t.Errorf("stream length after retry = %d, want 0", n)
			}
			if n, err := q.PromoteDue(ctx, at, 10); err != nil || n != 1 {
				t.Fatalf("PromoteDue = %d, %v; want 1", n, err)
			}
			cs = claimAll(t, q)
			want := j
			want.Attempt = 0 // the ledger counts attempts, not the job
			if len(cs) != 1 || cs[0].Job != want {
				t.Fatalf("claimed %v, want %v", cs, want)
			}
			j = cs[0].Job
			if err := q.Retry(ctx, cs[0], time.Time{}); err != nil {
				t.Fatalf("retry now: %v", err)
			}
		})
		t.Run("now", func(t *testing.T) {
			// A zero time makes the retry ready at once, as in Enqueue.
			if d := depth(t, q); d != (Depth{Ready: 1}) {
				t.Errorf("depth after immediate retry = %+v, want 1 ready", d)
			}
			cs := claimAll(t, q)
			if len(cs) != 1 || cs[0].Job != (Job{MessageID: j.MessageID, Domain: j.Domain}) {
				t.Fatalf("claimed %v, want %v", cs, j)
			}
		})
	})
}

func TestShards(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		const shards, n = 4, 200
		q := newQueue(t, rdb, Options{Prefix: prefix, Shards: shards, Consumer: "c"})
		ctx := context.Background()
		var jobs []Job
		for i := range n {
			jobs = append(jobs, job(i))
		}
		enqueue(t, q, ready(jobs...)...)
		var sum int64
		for i := range q.shards {
			sh := &q.shards[i]
			if !strings.Contains(sh.stream, fmt.Sprintf("{q%d}", i)) || !strings.HasPrefix(sh.stream, prefix+":") {
				t.Errorf("shard %d stream key %q", i, sh.stream)
			}
			l := rdb.XLen(ctx, sh.stream).Val()
			if l == 0 {
				t.Errorf("shard %d got no jobs", i)
			}
			sum += l
		}
		if sum != n {
			t.Errorf("streams hold %d jobs, want %d", sum, n)
		}
		cs := claimAll(t, q)
		if got := jobsOf(cs); !slices.Equal(got, jobs) {
			t.Errorf("claimed %d jobs, want the %d enqueued", len(got), n)
		}
		// Retries stay in their job's shard.
		for _, c := range cs[:10] {
			if err := q.Retry(ctx, c, time.Now().Add(time.Hour)); err != nil {
				t.Fatalf("retry: %v", err)
			}
			s := &q.shards[q.shardOf(c.Job)]
			if rdb.ZCard(ctx, s.scheduled).Val() == 0 {
				t.Errorf("retry of %s not in shard %d", c.Job.MessageID, s.index)
			}
		}
		if err := q.Ack(ctx, cs[10:]...); err != nil {
			t.Fatalf("ack: %v", err)
		}
		if d := depth(t, q); d != (Depth{Scheduled: 10}) {
			t.Errorf("depth = %+v, want 10 scheduled", d)
		}
	})
}

func TestDepth(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		q := newQueue(t, rdb, Options{Prefix: prefix, Shards: 2, Consumer: "c"})
		ctx := context.Background()
		later := time.Now().Add(time.Hour)
		steps := []struct {
			name string
			do   func(t *testing.T)
			want Depth
		}{
			{"empty", func(t *testing.T) {}, Depth{}},
			{"enqueue", func(t *testing.T) {
				enqueue(t, q, ready(job(1), job(2), job(3), job(4))...)
				enqueue(t, q, Item{Job: job(5), NotBefore: later}, Item{Job: job(6), NotBefore: later}, Item{Job: job(7), NotBefore: later})
			}, Depth{Ready: 4, Scheduled: 3}},
			{"claim", func(t *testing.T) {
				if cs, err := q.Claim(ctx, 3, 0); err != nil || len(cs) != 3 {
					t.Fatalf("claim = %d, %v", len(cs), err)
				}
			}, Depth{Ready: 1, Scheduled: 3, Inflight: 3}},
			{"promote", func(t *testing.T) {
				if n, err := q.PromoteDue(ctx, later, 2); err != nil || n != 2 {
					t.Fatalf("PromoteDue = %d, %v", n, err)
				}
			}, Depth{Ready: 3, Scheduled: 1, Inflight: 3}},
		}
		for _, s := range steps {
			t.Run(s.name, func(t *testing.T) {
				s.do(t)
				if d := depth(t, q); d != s.want {
					t.Errorf("depth = %+v, want %+v", d, s.want)
				}
			})
		}
	})
}

func TestAckMissing(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		q := newQueue(t, rdb, Options{Prefix: prefix, Consumer: "c"})
		ctx := context.Background()
		ghost := Claimed{ID: "1-1", Job: job(1)}
		// No stream at all, then a stream whose group does not know the entry.
		if err := q.Ack(ctx, ghost); err != nil {
			t.Errorf("ack without a stream: %v", err)
		}
		enqueue(t, q, ready(job(2))...)
		if err := q.Ack(ctx, ghost); err != nil {
			t.Errorf("ack without a group: %v", err)
		}
		claimAll(t, q)
		if err := q.Ack(ctx, ghost); err != nil {
			t.Errorf("ack of an unknown entry: %v", err)
		}
		if err := q.Extend(ctx, ghost); !errors.Is(err, ErrLost) {
			t.Errorf("extend of an unknown entry = %v, want ErrLost", err)
		}
	})
}

func TestPing(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		q := newQueue(t, rdb, Options{Prefix: prefix})
		if err := q.Ping(context.Background()); err != nil {
			t.Errorf("ping: %v", err)
		}
		closed := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
		t.Cleanup(func() { closed.Close() })
		dead := newQueue(t, closed, Options{})
		if err := dead.Ping(context.Background()); err == nil {
			t.Error("ping of a closed port succeeded")
		}
	})
}

// FuzzEncode checks that every valid job survives the trip through its
// Redis encoding unchanged.
func FuzzEncode(f *testing.F) {
	f.Add("0193c7e0-5b1a-7cc2-9d1e-2f1c4c1e9a10", "example.net", 0)
	f.Add("id with spaces", "xn--bcher-kva.example", 7)
	f.Add("\x00\xff", "d", 1<<40)
	f.Fuzz(func(t *testing.T, id, domain string, attempt int) {
		j := Job{MessageID: id, Domain: domain, Attempt: attempt}
		if j.validate() != nil {
			return
		}
		got, err := decode(encode(j))
		if err != nil || got != j {
			t.Errorf("decode(encode(%+v)) = %+v, %v", j, got, err)
		}
	})
}

// TestRetriedCopiesMerge: two copies of one job that went through
// different numbers of retries (a requeued copy and the original) are
// retried for later: the scheduled set holds the job once, not once per
// copy, so copies cannot multiply.
func TestRetriedCopiesMerge(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		rdb, prefix := shared(t)
		q := newQueue(t, rdb, Options{Prefix: prefix, Consumer: "c"})
		ctx := context.Background()
		j := job(1)
		older := j
		older.Attempt = 3 // retried three times by an earlier version
		enqueue(t, q, ready(j, older)...)
		cs := claimAll(t, q)
		if len(cs) != 2 {
			t.Fatalf("claimed %v", cs)
		}
		at := time.Now().Add(time.Minute)
		for _, c := range cs {
			if err := q.Retry(ctx, c, at); err != nil {
				t.Fatal(err)
			}
		}
		if d := depth(t, q); d != (Depth{Scheduled: 1}) {
			t.Errorf("depth after retrying two copies = %+v, want the job scheduled once", d)
		}
	})
}
