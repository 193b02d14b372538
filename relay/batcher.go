package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailferry/mailferry/store"
)

// BatchLedger is the ledger's batch forms of a job's writes. A Ledger that
// has them (*store.Store does) gets its jobs' leases, signatures and
// outcomes group-committed by the worker: PostgreSQL commits once per batch
// of jobs, not once per job (issue 12, Build item 4). One that lacks them
// is written job by job.
type BatchLedger interface {
	LoadDeliveries(ctx context.Context, reqs []store.DeliveryRequest) ([]store.LoadedDelivery, error)
	TakeLeases(ctx context.Context, reqs []store.LeaseRequest) ([][]int, error)
	SaveSignatures(ctx context.Context, reqs []store.SignatureRequest) ([]string, error)
	RecordOutcomesBatch(ctx context.Context, msgs []store.MessageOutcomes) ([]bool, error)
}

var _ BatchLedger = (*store.Store)(nil)

const (
	// ledgerBatchMax caps the jobs one ledger write carries: enough that a
	// worker's full Concurrency of one destination commits in a handful of
	// batches, few enough that one batch's locks and its round trip stay
	// short.
	ledgerBatchMax = 64
	// ledgerCommitters is how many batches of one kind may be in flight at
	// once: while one commits, the jobs that arrive gather for the next.
	ledgerCommitters = 2
	// ledgerBatchTimeout bounds one batch's write, as record bounds one
	// try of its own write.
	ledgerBatchTimeout = 10 * time.Second
)

// batcher group-commits one kind of ledger write, as intake's committer
// does for accepts: a job hands its request in and waits; whoever finds a
// committer slot free writes everything waiting then (up to ledgerBatchMax)
// as one statement or one transaction, answers each job, and goes on until
// its own request is written. Nothing waits on a timer: an idle worker's
// lone job is written at once, alone; under load the jobs that arrive
// while a batch commits form the next.
//
// A batch that fails is written again one request at a time (single), so
// a write PostgreSQL refuses for one job's data (store.ErrRejected) fails
// that job alone, and an error that is the batch's own (a deadlock between
// two batches, a lost connection) is answered per job as the one-job write
// would answer it. Every write here is safe to repeat (a lease is taken
// only from no holder, a signature stored only once, an outcome keyed by
// attempt number), so a batch that committed though its reply was lost
// changes nothing when written again.
type batcher[Req, Resp any] struct {
	batch  func(ctx context.Context, reqs []Req) ([]Resp, error)
	single func(ctx context.Context, req Req) (Resp, error)
	slots  chan struct{}

	mu    sync.Mutex
	queue []*ledgerCall[Req, Resp]

	stats batchStats
}

// batchStats count a batcher's work: the transactions it ran (batches and
// one-by-one writes), the requests they carried, and the batches that
// failed and were written one by one.
type batchStats struct {
	commits, requests, fallbacks atomic.Int64
}

type ledgerCall[Req, Resp any] struct {
	req   Req
	resp  Resp
	err   error
	taken bool // in a batch; answered when done closes
	done  chan struct{}
}

func newBatcher[Req, Resp any](batch func(context.Context, []Req) ([]Resp, error), single func(context.Context, Req) (Resp, error)) *batcher[Req, Resp] {
	return &batcher[Req, Resp]{batch: batch, single: single, slots: make(chan struct{}, ledgerCommitters)}
}

// do writes req in a batch and returns its answer. If ctx ends before a
// batch takes req, req is withdrawn, unwritten; once taken, do waits for
// its batch (bounded by ledgerBatchTimeout and the one-by-one writes).
func (b *batcher[Req, Resp]) do(ctx context.Context, req Req) (Resp, error) {
	c := &ledgerCall[Req, Resp]{req: req, done: make(chan struct{})}
	b.mu.Lock()
	b.queue = append(b.queue, c)
	b.mu.Unlock()
	select {
	case <-c.done:
	case b.slots <- struct{}{}:
		func() {
			defer func() { <-b.slots }()
			b.commitUntilTaken(c)
		}()
	case <-ctx.Done():
		if b.withdraw(c) {
			var zero Resp
			return zero, fmt.Errorf("ledger write not taken into a batch: %w", context.Cause(ctx))
		}
	}
	<-c.done
	return c.resp, c.err
}

// commitUntilTaken writes batches, oldest requests first, until c is in
// one: a committer does not go on writing for newcomers past its own job.
func (b *batcher[Req, Resp]) commitUntilTaken(c *ledgerCall[Req, Resp]) {
	for {
		b.mu.Lock()
		if c.taken {
			b.mu.Unlock()
			return
		}
		n := min(len(b.queue), ledgerBatchMax)
		calls := slices.Clone(b.queue[:n])
		for _, x := range calls {
			x.taken = true
		}
		b.queue = b.queue[n:]
		if len(b.queue) == 0 {
			b.queue = nil // let the backing array go
		}
		b.mu.Unlock()
		b.writeAndAnswer(calls)
	}
}

// writeAndAnswer writes calls and wakes their callers, even if the write
// panics: the other jobs of the batch then get an error (their own retry
// goes on) rather than wait for ever, and the panic goes on to the
// committer's job, whose recovery counts it.
func (b *batcher[Req, Resp]) writeAndAnswer(calls []*ledgerCall[Req, Resp]) {
	defer func() {
		r := recover()
		for _, x := range calls {
			if r != nil && x.err == nil {
				x.err = fmt.Errorf("ledger batch panicked: %v", r)
			}
			close(x.done)
		}
		if r != nil {
			panic(r)
		}
	}()
	b.write(calls)
}

// withdraw takes c out of the queue if no batch has it, and reports
// whether it did.
func (b *batcher[Req, Resp]) withdraw(c *ledgerCall[Req, Resp]) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c.taken {
		return false
	}
	if i := slices.Index(b.queue, c); i >= 0 {
		b.queue = slices.Delete(b.queue, i, i+1)
	}
	return true
}

// write runs calls as one batch and sets each call's answer. A single
// request goes straight to the one-job write: the same transaction,
// without the batch's bookkeeping. A batch that fails is written again one
// by one, each job answered as its own write answers; once one of those
// fails other than by store.ErrRejected or ErrNotFound (the ledger is
// down, or slow), the
// rest get that error unwritten, so an outage costs one timeout per batch,
// not one per job, and each job's own retry goes on as it does for a
// one-job write.
func (b *batcher[Req, Resp]) write(calls []*ledgerCall[Req, Resp]) {
	b.stats.requests.Add(int64(len(calls)))
	if len(calls) > 1 {
		ctx, cancel := context.WithTimeout(context.Background(), ledgerBatchTimeout)
		reqs := make([]Req, len(calls))
		for i, c := range calls {
			reqs[i] = c.req
		}
		b.stats.commits.Add(1)
		resps, err := b.batch(ctx, reqs)
		cancel()
		if err == nil && len(resps) != len(calls) {
			err = fmt.Errorf("ledger batch answered %d of %d requests", len(resps), len(calls))
		}
		if err == nil {
			for i, c := range calls {
				c.resp = resps[i]
			}
			return
		}
		b.stats.fallbacks.Add(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ledgerBatchTimeout)
	defer cancel()
	var down error
	for _, c := range calls {
		if down != nil {
			c.err = down
			continue
		}
		b.stats.commits.Add(1)
		c.resp, c.err = b.single(ctx, c.req)
		if c.err != nil && !errors.Is(c.err, store.ErrRejected) && !errors.Is(c.err, store.ErrNotFound) {
			down = c.err
		}
	}
}

// ledgerBatcher is a worker's batchers, one per kind of call. The
// signature keeps a write of its own rather than riding on the lease or
// the outcome: on the outcome it would be stored after the SMTP
// transaction, so a crash in between would let the retry send other bytes
// (a new signature) than the copy already delivered, and a second domain's
// worker could sign differently meanwhile; on the lease the worker would
// have to sign before it knows it holds any recipient. Batched on its own
// it costs a share of a commit, stored, as before, before any SMTP byte.
type ledgerBatcher struct {
	loads      *batcher[store.DeliveryRequest, store.LoadedDelivery]
	leases     *batcher[store.LeaseRequest, []int]
	signatures *batcher[store.SignatureRequest, string]
	outcomes   *batcher[store.MessageOutcomes, bool]
}

// newLedgerBatcher batches l's writes, or returns nil when l has no batch
// forms (the worker then writes job by job).
func newLedgerBatcher(l Ledger) *ledgerBatcher {
	bl, ok := l.(BatchLedger)
	if !ok {
		return nil
	}
	return &ledgerBatcher{
		// A load is read only, so "commits" counts its round trips.
		loads: newBatcher(bl.LoadDeliveries, func(ctx context.Context, r store.DeliveryRequest) (store.LoadedDelivery, error) {
			d, err := l.LoadDelivery(ctx, r.ID, r.Domain)
			return store.LoadedDelivery{Delivery: d, Err: err}, nil
		}),
		leases: newBatcher(bl.TakeLeases, func(ctx context.Context, r store.LeaseRequest) ([]int, error) {
			return l.TakeLease(ctx, r.ID, r.Idxs, r.Lease)
		}),
		signatures: newBatcher(bl.SaveSignatures, func(ctx context.Context, r store.SignatureRequest) (string, error) {
			return l.SaveSignature(ctx, r.ID, r.Header)
		}),
		outcomes: newBatcher(bl.RecordOutcomesBatch, func(ctx context.Context, m store.MessageOutcomes) (bool, error) {
			return l.RecordOutcomes(ctx, m.ID, m.Outcomes)
		}),
	}
}

// loadDelivery is Ledger.LoadDelivery through the batcher when there is
// one.
func (w *Worker) loadDelivery(ctx context.Context, id uuid.UUID, domain string) (*store.Delivery, error) {
	if w.batch == nil {
		return w.opts.Ledger.LoadDelivery(ctx, id, domain)
	}
	r, err := w.batch.loads.do(ctx, store.DeliveryRequest{ID: id, Domain: domain})
	if err != nil {
		return nil, err
	}
	return r.Delivery, r.Err
}

// takeLease is Ledger.TakeLease through the batcher when there is one.
func (w *Worker) takeLease(ctx context.Context, id uuid.UUID, idxs []int, l store.Lease) ([]int, error) {
	if w.batch == nil {
		return w.opts.Ledger.TakeLease(ctx, id, idxs, l)
	}
	return w.batch.leases.do(ctx, store.LeaseRequest{ID: id, Idxs: idxs, Lease: l})
}

// saveSignature is Ledger.SaveSignature through the batcher when there is
// one.
func (w *Worker) saveSignature(ctx context.Context, id uuid.UUID, header string) (string, error) {
	if w.batch == nil {
		return w.opts.Ledger.SaveSignature(ctx, id, header)
	}
	return w.batch.signatures.do(ctx, store.SignatureRequest{ID: id, Header: header})
}

// recordOutcomes is Ledger.RecordOutcomes through the batcher when there
// is one.
func (w *Worker) recordOutcomes(ctx context.Context, id uuid.UUID, outs []store.Outcome) (bool, error) {
	if w.batch == nil {
		return w.opts.Ledger.RecordOutcomes(ctx, id, outs)
	}
	return w.batch.outcomes.do(ctx, store.MessageOutcomes{ID: id, Outcomes: outs})
}

// LedgerStats are a worker's ledger writes so far: Requests the jobs'
// writes, Commits the transactions that carried them (a batch counts one),
// Fallbacks the batches written again one by one after an error.
type LedgerStats struct {
	Requests, Commits, Fallbacks int64
}

// LedgerStats reports the ledger batcher's counters by kind of write
// ("load", "lease", "signature", "outcome"); nil when the ledger is written job by
// job.
func (w *Worker) LedgerStats() map[string]LedgerStats {
	if w.batch == nil {
		return nil
	}
	get := func(s *batchStats) LedgerStats {
		return LedgerStats{Requests: s.requests.Load(), Commits: s.commits.Load(), Fallbacks: s.fallbacks.Load()}
	}
	return map[string]LedgerStats{
		"load":      get(&w.batch.loads.stats),
		"lease":     get(&w.batch.leases.stats),
		"signature": get(&w.batch.signatures.stats),
		"outcome":   get(&w.batch.outcomes.stats),
	}
}

// ledgerCollector reads the workers' ledger batchers at scrape time:
// requests against transactions per kind show how much batching saves.
type ledgerCollector struct {
	requests, transactions *prometheus.Desc

	mu      sync.Mutex
	workers []*Worker
}

func newLedgerCollector() *ledgerCollector {
	return &ledgerCollector{
		requests: prometheus.NewDesc("mailferry_ledger_requests_total",
			"Jobs' ledger calls made through the worker's batcher, by kind (load, lease, signature, outcome).",
			[]string{"kind"}, nil),
		transactions: prometheus.NewDesc("mailferry_ledger_transactions_total",
			"PostgreSQL transactions that carried them (a batch counts one), by kind.",
			[]string{"kind"}, nil),
	}
}

// watchLedger adds w's batcher to the ledger counters.
func (m *Metrics) watchLedger(w *Worker) {
	if m != nil && w.batch != nil {
		m.ledger.mu.Lock()
		m.ledger.workers = append(m.ledger.workers, w)
		m.ledger.mu.Unlock()
	}
}

func (c *ledgerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.requests
	ch <- c.transactions
}

func (c *ledgerCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	workers := c.workers
	c.mu.Unlock()
	sum := map[string]LedgerStats{}
	for _, w := range workers {
		for kind, s := range w.LedgerStats() {
			t := sum[kind]
			t.Requests += s.Requests
			t.Commits += s.Commits
			sum[kind] = t
		}
	}
	for kind, s := range sum {
		ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue, float64(s.Requests), kind)
		ch <- prometheus.MustNewConstMetric(c.transactions, prometheus.CounterValue, float64(s.Commits), kind)
	}
}
