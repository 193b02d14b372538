package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/store"
)

// waiting is how many requests wait in b for a batch.
func (b *batcher[Req, Resp]) waiting() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
}

// waitingReq is the i-th request waiting for a batch.
func (b *batcher[Req, Resp]) waitingReq(i int) Req {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.queue[i].req
}

// TestBatcher: concurrent callers each get their own answer; while the
// committers are busy the others gather into one batch; a batch that fails
// is written one by one, so only the request the ledger refuses fails; a
// caller whose context ends before a batch takes it is never written.
func TestBatcher(t *testing.T) {
	t.Parallel()
	const bad = 13
	gate := make(chan struct{})
	var mu sync.Mutex
	var written []int // every request passed to a write
	var batchSizes []int
	b := newBatcher(func(_ context.Context, reqs []int) ([]int, error) {
		<-gate
		mu.Lock()
		defer mu.Unlock()
		batchSizes = append(batchSizes, len(reqs))
		if slices.Contains(reqs, bad) {
			return nil, fmt.Errorf("batch: %w", store.ErrRejected)
		}
		written = append(written, reqs...)
		out := make([]int, len(reqs))
		for i, r := range reqs {
			out[i] = 2 * r
		}
		return out, nil
	}, func(_ context.Context, r int) (int, error) {
		<-gate
		mu.Lock()
		defer mu.Unlock()
		if r == bad {
			return 0, fmt.Errorf("single: %w", store.ErrRejected)
		}
		written = append(written, r)
		return 2 * r, nil
	})

	const n = 50
	var wg sync.WaitGroup
	errs := make([]error, n)
	got := make([]int, n)
	// Two callers take the committer slots and block at the gate, one at
	// a time: started together, the first committer could take both
	// requests and leave the second slot free.
	for i := range ledgerCommitters {
		wg.Go(func() { got[i], errs[i] = b.do(context.Background(), i) })
		wait.For(t, "a committer busy with a lone write", func() bool { return len(b.slots) == i+1 && b.waiting() == 0 })
	}
	// A caller that gives up before any batch takes it is never written.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.do(ctx, 1000); !errors.Is(err, context.Canceled) {
		t.Errorf("withdrawn request: %v, want context.Canceled", err)
	}
	for i := 2; i < n; i++ {
		wg.Go(func() { got[i], errs[i] = b.do(context.Background(), i) })
	}
	wait.For(t, "the other requests waiting", func() bool { return b.waiting() == n-2 })
	close(gate)
	wg.Wait()

	for i := range n {
		switch {
		case i == bad && !errors.Is(errs[i], store.ErrRejected):
			t.Errorf("request %d: %v, want ErrRejected", i, errs[i])
		case i != bad && (errs[i] != nil || got[i] != 2*i):
			t.Errorf("request %d: %d, %v; want %d", i, got[i], errs[i], 2*i)
		}
	}
	slices.Sort(written)
	if want := slices.DeleteFunc(slices.Collect(func(yield func(int) bool) {
		for i := range n {
			if !yield(i) {
				return
			}
		}
	}), func(i int) bool { return i == bad }); !slices.Equal(written, want) {
		t.Errorf("written %v, want every request but %d once, never the withdrawn one", written, bad)
	}
	s := &b.stats
	t.Logf("batches %v; requests %d, commits %d, fallbacks %d", batchSizes, s.requests.Load(), s.commits.Load(), s.fallbacks.Load())
	if s.requests.Load() != n || s.fallbacks.Load() != 1 {
		t.Errorf("requests %d, fallbacks %d: want %d and 1", s.requests.Load(), s.fallbacks.Load(), n)
	}
	// 2 alone, then 48 in one batch that fails and is written one by one.
	if c := s.commits.Load(); c != 2+1+(n-2) {
		t.Errorf("%d commits, want %d", c, 2+1+(n-2))
	}
}

// gatedLedger is the real store whose outcome writes wait at a gate, so
// that the outcomes of many jobs gather in the worker's batcher, and
// which refuses bad's outcomes as PostgreSQL refuses a row's data
// (store.ErrRejected), alone or in a batch.
type gatedLedger struct {
	*store.Store
	gate chan struct{}
	bad  uuid.UUID
}

func (l *gatedLedger) RecordOutcomes(ctx context.Context, id uuid.UUID, outs []store.Outcome) (bool, error) {
	select {
	case <-l.gate:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	if id == l.bad {
		return false, fmt.Errorf("record outcomes %s: %w: refused by the test", id, store.ErrRejected)
	}
	return l.Store.RecordOutcomes(ctx, id, outs)
}

func (l *gatedLedger) RecordOutcomesBatch(ctx context.Context, msgs []store.MessageOutcomes) ([]bool, error) {
	select {
	case <-l.gate:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for _, m := range msgs {
		if m.ID == l.bad {
			return nil, fmt.Errorf("record outcomes %s: %w: refused by the test", m.ID, store.ErrRejected)
		}
	}
	return l.Store.RecordOutcomesBatch(ctx, msgs)
}

// TestLedgerWritesBatched: many jobs to one destination, their outcomes
// gathered while the ledger is slow to answer, are recorded in a few
// commits, each exactly once; a job whose outcome the ledger refuses
// (inside a batch) is parked alone, and every other job of its batch is
// recorded.
func TestLedgerWritesBatched(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			reject bool
		}{{"all good", false}, {"one refused", true}} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				const n = 60
				p := newPipeline(t)
				s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
				ids := p.sendMany(n, func(i int) string { return fmt.Sprintf("u%d@example.net", i) })
				l := &gatedLedger{Store: p.st, gate: make(chan struct{})}
				p.start("w1", func(o *WorkerOptions) { o.Ledger = l })
				w := p.worker
				if w.batch == nil {
					t.Fatal("the worker writes the ledger job by job; want batched")
				}
				// Two writes hold the committers at the gate; the rest gather.
				wait.For(t, "outcomes gathered", func() bool { return w.batch.outcomes.waiting() >= n/2 })
				if tc.reject {
					// One of those gathered, so its first write is in a batch
					// (one held at the gate would be written alone); every
					// ledger call reads l.bad after the gate opens.
					l.bad = w.batch.outcomes.waitingReq(n / 4).ID
				}
				close(l.gate)
				var good []uuid.UUID
				for _, id := range ids {
					if id != l.bad {
						good = append(good, id)
					}
				}
				p.waitAll(good, time.Minute)
				if tc.reject {
					wait.For(t, "the refused job parked", func() bool {
						d, err := p.st.LoadDelivery(context.Background(), l.bad, "example.net")
						return err == nil && d.Parked != ""
					})
				}
				for _, id := range good {
					v := p.wait(id, time.Second)
					if r := v.Recipients[0]; r.Attempts != 1 {
						t.Errorf("%s: %d attempts recorded, want 1", id, r.Attempts)
					}
				}
				if got := len(s.Messages()); got != n {
					t.Errorf("receiver got %d messages, want %d (each once)", got, n)
				}
				stats := w.LedgerStats()
				t.Logf("ledger writes: %+v", stats)
				out := stats["outcome"]
				// The refused job tries recordRejects times, each a request.
				wantReq := int64(n)
				if tc.reject {
					wantReq = n - 1 + recordRejects
				}
				if out.Requests != wantReq {
					t.Errorf("%d outcome requests, want %d", out.Requests, wantReq)
				}
				if tc.reject && out.Fallbacks < 1 {
					t.Error("no batch written one by one, though one job's outcome was refused in it")
				}
				if !tc.reject {
					if out.Commits > n-n/2+2 || out.Fallbacks != 0 {
						t.Errorf("%d outcome commits for %d messages (%d fallbacks); want at most %d", out.Commits, n, out.Fallbacks, n-n/2+2)
					}
				}
				if lease := stats["lease"]; lease.Requests != n || lease.Commits > lease.Requests {
					t.Errorf("lease writes %+v, want %d requests", lease, n)
				}
			})
		}
	})
}

// TestLedgerCommitsFallUnderLoad: with nothing held back, a worker busy
// with one destination writes fewer transactions than jobs: the writes
// that arrive while one commits go together into the next.
func TestLedgerCommitsFallUnderLoad(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		const n = 1000
		p := newPipeline(t)
		s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
		ids := p.sendMany(n, func(i int) string { return fmt.Sprintf("u%d@example.net", i) })
		var commits atomic.Int64
		reg := prometheus.NewRegistry()
		p.start("w1", func(o *WorkerOptions) { o.PerDestination, o.Concurrency, o.Metrics = 64, 64, NewMetrics(reg) })
		p.waitAll(ids, 2*time.Minute)
		if got := len(s.Messages()); got != n {
			t.Errorf("receiver got %d messages, want %d", got, n)
		}
		stats := p.worker.LedgerStats()
		var req int64
		for _, st := range stats {
			req += st.Requests
			commits.Add(st.Commits)
		}
		t.Logf("%d messages: %+v; %.2f transactions per message for loads, leases, signatures and outcomes (4.00 unbatched)", n, stats, float64(commits.Load())/n)
		if req != 4*n {
			t.Errorf("%d ledger requests, want %d (4 per message)", req, 4*n)
		}
		if commits.Load() >= req {
			t.Errorf("%d transactions for %d requests: nothing batched", commits.Load(), req)
		}
		// The metrics say the same.
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		metric := map[string]float64{}
		for _, f := range families {
			for _, m := range f.GetMetric() {
				if len(m.GetLabel()) == 1 && m.GetLabel()[0].GetName() == "kind" {
					metric[f.GetName()] += m.GetCounter().GetValue()
				}
			}
		}
		if metric["mailferry_ledger_requests_total"] != float64(req) || metric["mailferry_ledger_transactions_total"] != float64(commits.Load()) {
			t.Errorf("metrics %v, want %d requests and %d transactions", metric, req, commits.Load())
		}
	})
}

// TestBatcherPanic: a write that panics answers every other caller of its
// batch with an error instead of leaving it waiting, frees its committer
// slot, and goes on to the committer's own job.
func TestBatcherPanic(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	var panicked atomic.Bool
	b := newBatcher(func(_ context.Context, reqs []int) ([]int, error) {
		<-gate
		if panicked.CompareAndSwap(false, true) {
			panic("boom")
		}
		return reqs, nil
	}, func(_ context.Context, r int) (int, error) {
		<-gate
		return r, nil
	})
	// Both committers hold a lone write at the gate (one after the other:
	// started together, the first could take both); ten more gather.
	var wg sync.WaitGroup
	for i := range ledgerCommitters {
		wg.Go(func() { b.do(context.Background(), i) })
		wait.For(t, "a committer busy with a lone write", func() bool { return len(b.slots) == i+1 && b.waiting() == 0 })
	}
	const n = 10
	errs := make([]error, n)
	var panics atomic.Int64
	for i := range n {
		wg.Go(func() {
			defer func() {
				if recover() != nil {
					panics.Add(1)
				}
			}()
			_, errs[i] = b.do(context.Background(), 100+i)
		})
	}
	wait.For(t, "the others waiting", func() bool { return b.waiting() == n })
	close(gate)
	wg.Wait()
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
		}
	}
	if panics.Load() != 1 || failed != n-1 {
		t.Errorf("%d callers saw the panic and %d an error; want 1 and %d", panics.Load(), failed, n-1)
	}
	if len(b.slots) != 0 {
		t.Errorf("%d committer slots still held", len(b.slots))
	}
	if got, err := b.do(context.Background(), 7); err != nil || got != 7 {
		t.Errorf("after the panic: %d, %v", got, err)
	}
}
