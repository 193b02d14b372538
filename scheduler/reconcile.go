package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/store"
)

// PendingLister is the ledger's account of the work left: PostgreSQL is
// the system of record, so it says what the queue ought to hold.
type PendingLister interface {
	PendingJobs(ctx context.Context, fn func(store.PendingJob) error) error
}

// Pending adds the long-due jobs the reconciler's sweep looks at.
type Pending interface {
	PendingLister
	StaleJobs(ctx context.Context, dueBefore time.Time, after store.PendingJob, limit int) ([]store.PendingJob, error)
}

// Enqueuer is the one queue operation Requeue needs.
type Enqueuer interface {
	Enqueue(ctx context.Context, items ...queue.Item) error
}

// Requeuer is the queue as the reconciler inspects and refills it.
type Requeuer interface {
	Enqueuer
	Jobs(ctx context.Context, fn func(queue.Job) error) error
}

// Marker tells whether Redis kept its data since the queue was last
// rebuilt (queue.Queue's Intact and MarkIntact).
type Marker interface {
	Intact(ctx context.Context) (bool, error)
	StartRebuild(ctx context.Context) (queue.Rebuild, error)
	MarkIntact(ctx context.Context, rb queue.Rebuild) error
}

// ReconcileOptions configures a Reconciler.
type ReconcileOptions struct {
	Ledger Pending
	Queue  Requeuer
	Marker Marker
	Logger *slog.Logger
	// Every is how often the ledger is swept for lost jobs
	// (MAILFERRY_RECONCILE_INTERVAL); default 5m.
	Every time.Duration
	// CheckEvery is how often the queue's marker is checked for a Redis
	// that lost its data; default 10s, at most Every. It costs one EXISTS
	// per shard.
	CheckEvery time.Duration
	// StaleAfter: a recipient due this long ago that no worker holds is a
	// candidate for a lost job. It must exceed the moments a job spends
	// between the ledger and Redis (accept, promotion) and the queue's
	// visibility timeout (lease.Timing.StaleAfter). Default 90s.
	StaleAfter time.Duration
	// MaxStale is the page of candidates the sweep holds at once: it walks
	// every stale job, a page at a time, checking the queue per page, so
	// memory stays bounded in a large backlog and none is left unseen;
	// default 10000.
	MaxStale int
	// Batch is how many jobs go to Redis per round trip; default 1000.
	Batch int
	Now   func() time.Time
}

// Reconciler keeps the Redis queue honest against the ledger. When Redis
// has lost its data (the marker is gone: a restart without persistence,
// FLUSHALL, a failover to an empty replica) it requeues every pending job;
// and every so often it sweeps for recipients long due that no worker
// holds and the queue does not list (an accept that crashed between
// PostgreSQL and Redis, writes lost in an asynchronous failover), and
// requeues those. A job requeued twice is harmless: workers lease the
// recipients in the ledger, so one copy attempts them and the rest drop.
type Reconciler struct{ opts ReconcileOptions }

// NewReconciler checks opts.
func NewReconciler(opts ReconcileOptions) (*Reconciler, error) {
	if opts.Ledger == nil || opts.Queue == nil || opts.Marker == nil {
		return nil, errors.New("reconciler: Ledger, Queue and Marker are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Every <= 0 {
		opts.Every = 5 * time.Minute
	}
	if opts.CheckEvery <= 0 {
		opts.CheckEvery = 10 * time.Second
	}
	opts.CheckEvery = min(opts.CheckEvery, opts.Every)
	if opts.StaleAfter <= 0 {
		opts.StaleAfter = 90 * time.Second
	}
	if opts.MaxStale <= 0 {
		opts.MaxStale = 10000
	}
	if opts.Batch <= 0 {
		opts.Batch = 1000
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Reconciler{opts: opts}, nil
}

// Run reconciles at once, then checks the marker every CheckEvery and
// sweeps every Every, until ctx ends; it returns nil. Failures (Redis or
// PostgreSQL down) are logged and the work is tried again next time.
func (r *Reconciler) Run(ctx context.Context) error {
	check := time.NewTicker(r.opts.CheckEvery)
	defer check.Stop()
	sweep := time.NewTicker(r.opts.Every)
	defer sweep.Stop()
	r.logged(ctx, r.Reconcile)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-check.C:
			r.logged(ctx, r.restoreIfLost)
		case <-sweep.C:
			r.logged(ctx, r.Reconcile)
		}
	}
}

func (r *Reconciler) logged(ctx context.Context, step func(context.Context) (Reconciled, error)) {
	res, err := step(ctx)
	if err != nil {
		if ctx.Err() == nil {
			r.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "reconcile queue with ledger", slog.Any("error", err))
		}
		return
	}
	switch {
	case res.Restored && res.Requeued == 0:
		// A new Redis, or one emptied with nothing pending: nothing lost.
		r.opts.Logger.LogAttrs(ctx, slog.LevelInfo, "queue marked whole; nothing pending in PostgreSQL")
	case res.Restored:
		r.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "redis had lost the queue; requeued every pending job from PostgreSQL",
			slog.Int("jobs", res.Requeued))
	case res.Requeued > 0:
		r.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "requeued jobs missing from redis",
			slog.Int("jobs", res.Requeued), slog.Int("examined", res.Stale))
	}
}

// Reconciled says what one pass did.
type Reconciled struct {
	// Restored: Redis had lost its data and every pending job was requeued.
	Restored bool
	// Stale is how many long-due jobs the sweep examined.
	Stale int
	// Requeued is how many jobs were put back into the queue.
	Requeued int
}

// Reconcile makes one pass: a full requeue if Redis lost its data, else a
// sweep for lost jobs.
func (r *Reconciler) Reconcile(ctx context.Context) (Reconciled, error) {
	res, err := r.restoreIfLost(ctx)
	if err != nil || res.Restored {
		return res, err
	}
	return r.sweep(ctx)
}

// restoreIfLost requeues every pending job when the queue's marker is gone,
// then sets it. The marker is set only after the requeue succeeded, so a
// failure halfway is retried in full, and only if Redis kept the rebuild's
// token meanwhile, so a second loss during the requeue is not hidden.
func (r *Reconciler) restoreIfLost(ctx context.Context) (Reconciled, error) {
	intact, err := r.opts.Marker.Intact(ctx)
	if err != nil || intact {
		return Reconciled{}, err
	}
	rb, err := r.opts.Marker.StartRebuild(ctx)
	if err != nil {
		return Reconciled{}, err
	}
	n, err := Requeue(ctx, r.opts.Ledger, r.opts.Queue, r.opts.Batch)
	if err != nil {
		return Reconciled{Requeued: n}, fmt.Errorf("requeue after redis data loss: %w", err)
	}
	if err := r.opts.Marker.MarkIntact(ctx, rb); err != nil {
		return Reconciled{Requeued: n}, err
	}
	return Reconciled{Restored: true, Requeued: n}, nil
}

type jobKey struct{ message, domain string }

// sweep requeues long-due, unleased jobs the queue does not hold. Long
// due alone does not prove a job lost (a backlog, a domain held back), so
// the queue is walked and every candidate found there is left alone. The
// candidates come a page at a time (a keyset walk over the whole stale
// set), each page checked against the queue, so a backlog of queued jobs
// larger than a page does not hide a lost one behind it.
func (r *Reconciler) sweep(ctx context.Context) (Reconciled, error) {
	var res Reconciled
	dueBefore := r.opts.Now().Add(-r.opts.StaleAfter)
	after := store.PendingJob{}
	for {
		page, err := r.opts.Ledger.StaleJobs(ctx, dueBefore, after, r.opts.MaxStale)
		if err != nil {
			return res, err
		}
		res.Stale += len(page)
		n, err := r.requeueMissing(ctx, page)
		res.Requeued += n
		if err != nil || len(page) < r.opts.MaxStale {
			return res, err
		}
		after = page[len(page)-1]
	}
}

// requeueMissing enqueues the jobs of page the queue does not hold and
// returns how many.
func (r *Reconciler) requeueMissing(ctx context.Context, page []store.PendingJob) (int, error) {
	if len(page) == 0 {
		return 0, nil
	}
	missing := make(map[jobKey]store.PendingJob, len(page))
	for _, j := range page {
		missing[jobKey{j.MessageID.String(), j.Domain}] = j
	}
	err := r.opts.Queue.Jobs(ctx, func(j queue.Job) error {
		delete(missing, jobKey{j.MessageID, j.Domain})
		if len(missing) == 0 {
			return queue.ErrStop
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("list queued jobs: %w", err)
	}
	items := make([]queue.Item, 0, len(missing))
	for _, j := range missing {
		items = append(items, item(j))
	}
	done := 0
	for len(items) > 0 {
		n := min(len(items), r.opts.Batch)
		if err := r.opts.Queue.Enqueue(ctx, items[:n]...); err != nil {
			return done, err
		}
		done += n
		items = items[n:]
	}
	return done, nil
}

var (
	_ Pending  = (*store.Store)(nil)
	_ Requeuer = (*queue.Queue)(nil)
	_ Marker   = (*queue.Queue)(nil)
)

// Requeue puts every pending job of the ledger into the queue, due at its
// recipients' next attempt, batch jobs per round trip, and returns how many
// it queued. Jobs the queue already holds are queued again; workers drop
// the extra copies (see Reconciler). It is `mailferry requeue` and the
// reconciler's answer to Redis data loss.
func Requeue(ctx context.Context, ledger PendingLister, q Enqueuer, batch int) (int, error) {
	if batch <= 0 {
		batch = 1000
	}
	items := make([]queue.Item, 0, batch)
	n := 0
	flush := func() error {
		if len(items) == 0 {
			return nil
		}
		if err := q.Enqueue(ctx, items...); err != nil {
			return err
		}
		n += len(items)
		items = items[:0]
		return nil
	}
	err := ledger.PendingJobs(ctx, func(j store.PendingJob) error {
		items = append(items, item(j))
		if len(items) == batch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	return n, err
}

func item(j store.PendingJob) queue.Item {
	return queue.Item{Job: queue.Job{MessageID: j.MessageID.String(), Domain: j.Domain}, NotBefore: j.Due}
}
