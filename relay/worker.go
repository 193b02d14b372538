package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/bounce"
	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/returnpath"
	"github.com/mailferry/mailferry/store"
)

// Ledger is what a worker reads and writes in PostgreSQL.
type Ledger interface {
	LoadDelivery(ctx context.Context, id uuid.UUID, domain string) (*store.Delivery, error)
	SaveSignature(ctx context.Context, id uuid.UUID, header string) (string, error)
	TakeLease(ctx context.Context, id uuid.UUID, idxs []int, l store.Lease) ([]int, error)
	RenewLease(ctx context.Context, id uuid.UUID, idxs []int, owner string, d time.Duration) (int, error)
	RecordOutcomes(ctx context.Context, id uuid.UUID, outs []store.Outcome) (bool, error)
	ActiveDKIMKeys(ctx context.Context, domain string) ([]store.DKIMKey, error)
	CountJobFailure(ctx context.Context, id uuid.UUID, domain, failure string, limit int) (parked bool, err error)
	ParkJob(ctx context.Context, id uuid.UUID, domain, reason string) error
}

// Queue is the work list a worker takes jobs from.
type Queue interface {
	Claim(ctx context.Context, limit int, block time.Duration) ([]queue.Claimed, error)
	Ack(ctx context.Context, cs ...queue.Claimed) error
	Retry(ctx context.Context, c queue.Claimed, at time.Time) error
	Extend(ctx context.Context, cs ...queue.Claimed) error
	Hold(ctx context.Context, cs ...queue.Claimed) ([]string, error)
	PromoteDue(ctx context.Context, now time.Time, limit int) (int, error)
	// Leases are the fleet-wide destination leases, under this worker's
	// consumer name.
	Leases(ttl time.Duration) (*queue.Leases, error)
}

// Classifier puts a failed result in the failure taxonomy; *bounce.Rules
// is one.
type Classifier interface {
	Classify(code int, enhanced, text string) bounce.Verdict
}

// ReturnPaths makes the envelope sender of a transaction; a
// *returnpath.Signer is one.
type ReturnPaths interface {
	Address(messageID uuid.UUID, rcptIdx int) string
	// AddressAt is Address at bounces.<sending>, the sending domain's
	// custom return path.
	AddressAt(sending string, messageID uuid.UUID, rcptIdx int) string
}

// CustomReturnPaths says which tenant owns a sending domain whose custom
// return path (bounces.<domain>, a CNAME to the bounce domain) is
// verified, "" for none; *store.ReturnPathCache is one.
type CustomReturnPaths interface {
	ReturnPathTenant(ctx context.Context, domain string) (string, error)
}

var (
	_ Classifier        = (*bounce.Rules)(nil)
	_ ReturnPaths       = (*returnpath.Signer)(nil)
	_ CustomReturnPaths = (*store.ReturnPathCache)(nil)
)

// WorkerOptions configure a Worker.
type WorkerOptions struct {
	Ledger Ledger
	Queue  Queue
	// Route gives the hosts for a destination domain: Router.Route, or a
	// smarthost for every domain.
	Route  func(ctx context.Context, domain string) ([]Host, error)
	Client Client
	Signer *dkim.Signer
	Sealer *dkim.Sealer // opens stored private keys
	Logger *slog.Logger
	// Metrics may be nil.
	Metrics *Metrics
	// ReturnPaths, when set (MAILFERRY_BOUNCE_DOMAIN), gives each
	// transaction a VERP envelope sender naming the message and, when the
	// transaction has one recipient, that recipient; nil keeps the stored
	// MAIL FROM.
	ReturnPaths ReturnPaths
	// CustomReturnPaths, when set with ReturnPaths, puts the return path
	// at bounces.<From domain> for a tenant whose domain has it verified.
	// It is asked on every attempt, so it should cache: a
	// *store.ReturnPathCache.
	CustomReturnPaths CustomReturnPaths
	// Rules classify every failed result (bounced or deferred) into a
	// bounce type and class; nil: bounce.DefaultRules().
	Rules Classifier
	// CountBounce counts a recipient bounced in the SMTP session, by
	// class (mailferry_bounces_total{kind="sync"}); nil: not counted.
	CountBounce func(class string)

	// Concurrency is how many deliveries run at once; default 256. A
	// delivery mostly waits on the network, so this bounds connections and
	// memory (the messages in flight), not CPU.
	Concurrency int
	// ActiveLimit is how many claimed jobs the worker holds at once,
	// running or waiting for their destination; default 4×Concurrency.
	// Jobs waiting hold no delivery slot: a busy destination's backlog
	// does not stop the worker claiming mail for free ones until it
	// reaches this.
	ActiveLimit int
	// PerDestination caps concurrent transactions to one destination, the
	// next hop (an MX host: every domain it serves shares the cap), over
	// the whole fleet; default 32. A destination starts at a few and earns
	// a slot with each quick transaction, and halves when a transaction is
	// slow, reaches no host or is answered 421, so slow destinations
	// cannot take every slot.
	PerDestination int
	// Smarthost: Route sends every domain to one relay host, which is then
	// the one destination, capped fleet-wide at SmarthostConnections
	// (default 50).
	Smarthost            bool
	SmarthostConnections int
	// Shaper applies MAILFERRY_SHAPING_FILE to destinations: their
	// max_connections in place of the caps above, their message rates and
	// automation rules. Nil: none.
	Shaper Shaper
	// SlowAfter is when a transaction counts as slow; default 10s.
	SlowAfter time.Duration
	// KeyCacheTTL is how long a sender domain's opened DKIM keys are
	// reused before the ledger is asked again; default 1m. A new or
	// retired key takes effect within it.
	KeyCacheTTL time.Duration
	// RetrySchedule is the delay after the 1st, 2nd, … failed attempt; the
	// last repeats (MAILFERRY_RETRY_SCHEDULE).
	RetrySchedule []time.Duration
	// MaxQueueAge: a recipient still deferred this long after acceptance
	// (or send_at) bounces as expired (MAILFERRY_MAX_QUEUE_AGE).
	MaxQueueAge time.Duration
	// Heartbeat is how often a held job's lease and its recipients' lease
	// are renewed; it must be well under the queue's visibility timeout.
	// Default 5s (lease.Timing.Heartbeat).
	Heartbeat time.Duration
	// Lease is how long the recipients of an attempt stay reserved to it in
	// the ledger without a heartbeat; default 3×Heartbeat. It must exceed
	// Heartbeat, and should stay under the queue's visibility timeout: then
	// whatever copy of a job comes after a worker died holding it finds
	// the recipients free (lease.Timing.Lease).
	Lease time.Duration
	// ParkAfter is how many panics of one job (counted in the ledger, over
	// every worker and restart) park it instead of retrying it; default 3.
	ParkAfter int
	// ShutdownGrace is how long deliveries in flight may finish, and their
	// outcomes be recorded, once Run's context ends; default 30s.
	// Unfinished ones are left to be reclaimed.
	ShutdownGrace time.Duration
	// PromoteEvery is how often due retries are moved to the ready queue;
	// default 250ms.
	PromoteEvery time.Duration
	// AcceptWindow is how long after its id was made a job whose message
	// is not in the ledger is kept and retried; default 1m. Intake queues
	// before it records, so such a job's rows may still be committing; it
	// must exceed intake's MaxWait plus CommitTimeout (10s each by default)
	// and the clock difference between API and worker hosts.
	AcceptWindow time.Duration
	Now          func() time.Time
	// Jitter spreads retries: it returns d changed by up to ±10%.
	Jitter func(d time.Duration) time.Duration
}

// Worker carries queued messages to their destinations: claim → load →
// sign → route → SMTP → record → ack or retry. Workers keep no state
// between jobs that Redis and PostgreSQL do not hold too (a job waiting
// for its destination is still a claim in Redis), so any number may run.
type Worker struct {
	opts WorkerOptions
	gate *destGate
	keys *keyCache
	// batch group-commits the jobs' ledger writes; nil: job by job.
	batch *ledgerBatcher
	// ledger pauses claiming while PostgreSQL fails: jobs claimed then
	// could only be put back.
	ledger backoff
	// runners bound the transactions in flight to Concurrency.
	runners chan struct{}

	mu sync.Mutex
	// held: jobs claimed and not yet ended; parked: those waiting for
	// their destination; waiting: the claims not yet under a delivery's
	// heartbeat, renewed by the hold loop.
	held, parked int
	waiting      map[string]*holding
	// wake tells the claim loop that a job ended or parked.
	wake chan struct{}
}

// holding is a claimed job not yet started.
type holding struct {
	c      queue.Claimed
	cancel context.CancelFunc // ends its wait for the destination
	lost   atomic.Bool        // another worker reclaimed it
}

// NewWorker checks opts.
func NewWorker(opts WorkerOptions) (*Worker, error) {
	var errs []error
	if opts.Ledger == nil || opts.Queue == nil || opts.Route == nil || opts.Client == nil || opts.Signer == nil || opts.Sealer == nil {
		errs = append(errs, errors.New("Ledger, Queue, Route, Client, Signer and Sealer are required"))
	}
	if len(opts.RetrySchedule) == 0 {
		errs = append(errs, errors.New("RetrySchedule is empty"))
	}
	if opts.MaxQueueAge <= 0 {
		errs = append(errs, errors.New("MaxQueueAge must be positive"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("relay worker: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Rules == nil {
		opts.Rules = bounce.DefaultRules()
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 256
	}
	if opts.ActiveLimit < opts.Concurrency {
		opts.ActiveLimit = 4 * opts.Concurrency
	}
	if opts.KeyCacheTTL <= 0 {
		opts.KeyCacheTTL = time.Minute
	}
	if opts.SlowAfter <= 0 {
		opts.SlowAfter = 10 * time.Second
	}
	if opts.PerDestination <= 0 {
		opts.PerDestination = 32
	}
	if opts.SmarthostConnections <= 0 {
		opts.SmarthostConnections = 50
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 5 * time.Second
	}
	if opts.ParkAfter <= 0 {
		opts.ParkAfter = 3
	}
	if opts.Lease <= 0 {
		opts.Lease = 3 * opts.Heartbeat
	}
	if opts.Lease <= opts.Heartbeat {
		return nil, fmt.Errorf("relay worker: Lease %v must exceed Heartbeat %v", opts.Lease, opts.Heartbeat)
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = 30 * time.Second
	}
	if opts.PromoteEvery <= 0 {
		opts.PromoteEvery = 250 * time.Millisecond
	}
	if opts.AcceptWindow <= 0 {
		opts.AcceptWindow = time.Minute
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Jitter == nil {
		opts.Jitter = func(d time.Duration) time.Duration {
			return d + time.Duration((rand.Float64()*0.2-0.1)*float64(d))
		}
	}
	leases, err := opts.Queue.Leases(opts.Lease)
	if err != nil {
		return nil, fmt.Errorf("relay worker: %w", err)
	}
	w := &Worker{opts: opts, gate: newDestGate(leases, opts.Shaper, opts.SlowAfter, opts.Now, opts.Logger), keys: newKeyCache(opts.KeyCacheTTL),
		runners: make(chan struct{}, opts.Concurrency), waiting: map[string]*holding{}, wake: make(chan struct{}, 1),
		batch: newLedgerBatcher(opts.Ledger)}
	if t, ok := opts.Client.(IdleTrimmer); ok {
		w.gate.trim = t
	}
	opts.Metrics.watch(w.gate)
	opts.Metrics.watchLedger(w)
	return w, nil
}

// Run claims and delivers jobs until ctx ends, then lets deliveries in
// flight finish for up to ShutdownGrace and returns.
func (w *Worker) Run(ctx context.Context) error {
	// Deliveries outlive ctx by the grace period: an SMTP transaction cut
	// off mid-DATA is a likely duplicate later.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopGrace := context.AfterFunc(ctx, func() { time.AfterFunc(w.opts.ShutdownGrace, cancelWork) })
	defer stopGrace()

	var wg sync.WaitGroup
	// Deferred first, so it runs last, after wg.Wait: no delivery is using
	// a pooled connection any more, and none is put back after it.
	defer w.opts.Client.CloseIdle()
	// Leases and held claims are renewed until the deliveries end.
	holdCtx, stopHold := context.WithCancel(work)
	var holdWG sync.WaitGroup
	holdWG.Go(func() { w.holdLoop(holdCtx) })
	holdWG.Go(func() { w.leaseLoop(holdCtx) })
	defer holdWG.Wait()
	defer stopHold()
	defer wg.Wait()
	// Workers move due retries into the ready stream themselves, so a
	// deployment of workers alone still retries (the scheduler role does
	// the same; promotion is atomic and safe to repeat).
	wg.Go(func() { w.promoteLoop(ctx) })
	backoff := time.Duration(0)
	for {
		if wait := w.ledger.wait(w.opts.Now()); wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		free := w.claimable()
		if free <= 0 {
			select {
			case <-w.wake:
			case <-ctx.Done():
				return nil
			}
			continue
		}
		jobs, err := w.opts.Queue.Claim(ctx, free, time.Second)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
			w.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "claim jobs", slog.Any("error", err), slog.Duration("backoff", backoff))
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		for _, c := range jobs {
			w.hold(c)
			wg.Go(func() {
				defer w.end(c)
				w.process(ctx, work, c)
			})
		}
	}
}

// claimable is how many jobs the claim loop may take now: those that
// could start at once (Concurrency less the jobs held that are not
// waiting for their destination), within ActiveLimit. A destination whose
// jobs wait so never stops the worker from claiming mail for free ones.
func (w *Worker) claimable() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return min(w.opts.ActiveLimit-w.held, w.opts.Concurrency-(w.held-w.parked))
}

// hold notes a claimed job; the hold loop renews its claim until the
// delivery's own heartbeat takes over (started).
func (w *Worker) hold(c queue.Claimed) {
	w.mu.Lock()
	w.held++
	w.waiting[c.ID] = &holding{c: c}
	w.mu.Unlock()
}

// park notes that a held job waits for its destination.
func (w *Worker) park(c queue.Claimed, cancel context.CancelFunc) *holding {
	w.mu.Lock()
	h := w.waiting[c.ID]
	if h == nil {
		h = &holding{c: c}
		w.waiting[c.ID] = h
	}
	h.cancel = cancel
	w.parked++
	w.mu.Unlock()
	poke(w.wake)
	return h
}

func (w *Worker) unpark(h *holding) {
	w.mu.Lock()
	h.cancel = nil
	w.parked--
	w.mu.Unlock()
}

// started hands the job's claim to the delivery's heartbeat.
func (w *Worker) started(c queue.Claimed) {
	w.mu.Lock()
	delete(w.waiting, c.ID)
	w.mu.Unlock()
}

func (w *Worker) end(c queue.Claimed) {
	w.mu.Lock()
	w.held--
	delete(w.waiting, c.ID)
	w.mu.Unlock()
	poke(w.wake)
}

// holdLoop renews, every Heartbeat, the claims of jobs not yet started
// (a script call per shard for up to 500 of them). A job another worker
// reclaimed meanwhile stops waiting and is dropped here, neither acked nor
// retried: it is the other worker's now.
func (w *Worker) holdLoop(ctx context.Context) {
	t := time.NewTicker(w.opts.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		cs := make([]queue.Claimed, 0, len(w.waiting))
		for _, h := range w.waiting {
			cs = append(cs, h.c)
		}
		w.mu.Unlock()
		bctx, cancel := context.WithTimeout(ctx, w.opts.Heartbeat)
		if len(cs) > 0 {
			lost, err := w.opts.Queue.Hold(bctx, cs...)
			if err != nil && ctx.Err() == nil {
				w.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "renew claims of waiting jobs", slog.Any("error", err))
			}
			w.mu.Lock()
			for _, id := range lost {
				if h := w.waiting[id]; h != nil {
					h.lost.Store(true)
					if h.cancel != nil {
						h.cancel()
					}
				}
			}
			w.mu.Unlock()
		}
		cancel()
	}
}

// leaseLoop renews this worker's destination leases every Heartbeat, on
// its own: their TTL (Lease) is shorter than a claim's visibility, so a
// slow renewal of many claims must not make them lapse.
func (w *Worker) leaseLoop(ctx context.Context) {
	t := time.NewTicker(w.opts.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		bctx, cancel := context.WithTimeout(ctx, w.opts.Heartbeat)
		w.gate.renew(bctx)
		cancel()
	}
}

func (w *Worker) promoteLoop(ctx context.Context) {
	t := time.NewTicker(w.opts.PromoteEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.opts.Client.SweepIdle()
			w.gate.forget(w.opts.Now())
			for ctx.Err() == nil {
				n, err := w.opts.Queue.PromoteDue(ctx, w.opts.Now(), 1000)
				if err != nil {
					if ctx.Err() == nil {
						w.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "promote due jobs", slog.Any("error", err))
					}
					break
				}
				if n < 1000 {
					break
				}
			}
		}
	}
}

// unrecordedRetry says when to look again for a job's message that is not
// in the ledger, and whether to. The UUIDv7 id carries the time intake
// made it; until the id is AcceptWindow old a commit may still land, so
// the job comes back after as long again as it has waited (at least a
// second), a handful of reads in all. After that it is dropped.
func (w *Worker) unrecordedRetry(id uuid.UUID, now time.Time) (time.Time, bool) {
	if id.Version() != 7 {
		return time.Time{}, false
	}
	age := now.Sub(uuidV7Time(id))
	if age >= w.opts.AcceptWindow {
		return time.Time{}, false
	}
	return now.Add(min(max(age, time.Second), w.opts.AcceptWindow-age)), true
}

// uuidV7Time is the Unix time in milliseconds in the first 48 bits of a
// version 7 UUID (RFC 9562 5.7).
func uuidV7Time(id uuid.UUID) time.Time {
	var ms int64
	for _, b := range id[:6] {
		ms = ms<<8 | int64(b)
	}
	return time.UnixMilli(ms)
}

// backoff is a pause that doubles with each failure, up to 2s, and ends
// with a success: short enough that delivery resumes soon after the ledger
// returns, long enough that a down ledger sees a few tries a second.
type backoff struct {
	mu    sync.Mutex
	delay time.Duration
	until time.Time
}

func (b *backoff) fail(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.delay = min(max(2*b.delay, 250*time.Millisecond), 2*time.Second)
	b.until = now.Add(b.delay)
}

func (b *backoff) ok() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.delay, b.until = 0, time.Time{}
}

func (b *backoff) wait(now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.until.Sub(now)
}
