package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/smtpclient"
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
}

// Queue is the work list a worker takes jobs from.
type Queue interface {
	Claim(ctx context.Context, limit int, block time.Duration) ([]queue.Claimed, error)
	Ack(ctx context.Context, cs ...queue.Claimed) error
	Retry(ctx context.Context, c queue.Claimed, at time.Time) error
	Extend(ctx context.Context, cs ...queue.Claimed) error
	PromoteDue(ctx context.Context, now time.Time, limit int) (int, error)
}

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

	// Concurrency is how many deliveries run at once; default 256. A
	// delivery mostly waits on the network, so this bounds connections and
	// memory (the messages in flight), not CPU.
	Concurrency int
	// PerDomain caps concurrent transactions to one destination domain;
	// default 8. A domain starts at one and earns a slot with each quick
	// transaction, and falls back to one when a transaction is slow or
	// reaches no host, so slow destinations cannot take every slot.
	PerDomain int
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
// between jobs, so any number may run.
type Worker struct {
	opts    WorkerOptions
	domains *domainSlots
	keys    *keyCache
	// ledger pauses claiming while PostgreSQL fails: jobs claimed then
	// could only be put back.
	ledger backoff
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
	if opts.Concurrency <= 0 {
		opts.Concurrency = 256
	}
	if opts.KeyCacheTTL <= 0 {
		opts.KeyCacheTTL = time.Minute
	}
	if opts.SlowAfter <= 0 {
		opts.SlowAfter = 10 * time.Second
	}
	if opts.PerDomain <= 0 {
		opts.PerDomain = 8
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
	return &Worker{opts: opts, domains: newDomainSlots(opts.PerDomain, opts.SlowAfter),
		keys: newKeyCache(opts.KeyCacheTTL)}, nil
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

	slots := make(chan struct{}, w.opts.Concurrency)
	var wg sync.WaitGroup
	// Deferred first, so it runs last, after wg.Wait: no delivery is using
	// a pooled connection any more, and none is put back after it.
	defer w.opts.Client.CloseIdle()
	defer wg.Wait()
	// Workers move due retries into the ready stream themselves, so a
	// deployment of workers alone still retries (the scheduler role does
	// the same; promotion is atomic and safe to repeat).
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.promoteLoop(ctx)
	}()
	backoff := time.Duration(0)
	for {
		if wait := w.ledger.wait(w.opts.Now()); wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		free := 1
		for free < cap(slots) {
			select {
			case slots <- struct{}{}:
				free++
				continue
			default:
			}
			break
		}
		jobs, err := w.opts.Queue.Claim(ctx, free, time.Second)
		for range free - len(jobs) {
			<-slots
		}
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
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				w.process(work, c)
			}()
		}
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
			w.domains.forget(w.opts.Now())
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

// dueSlack lets a job run this much before its recipients' next attempt
// time: the queue keeps milliseconds, the ledger microseconds, and worker
// clocks differ a little.
const dueSlack = time.Second

// process handles one job. It never returns an error: every path ends in
// Ack, Retry, or (if Redis or PostgreSQL is down) a lease that expires and
// is reclaimed.
//
// Redis may hold a job twice (a requeue, a reclaim): the recipients' lease
// in the ledger makes sure only one claim attempts them. A copy that finds
// them leased to another claim comes back when that lease can have lapsed
// (the holder died: it takes over; the holder lives: nothing is left to
// do); a copy that comes before they are due is put off until then.
func (w *Worker) process(ctx context.Context, c queue.Claimed) {
	log := w.opts.Logger.With(slog.String("message_id", c.Job.MessageID), slog.String("rcpt_domain", c.Job.Domain))
	id, err := uuid.Parse(c.Job.MessageID)
	if err != nil {
		log.Error("dropping job with an invalid message id", "error", err)
		w.ack(ctx, log, c)
		return
	}
	// First deferred, so it runs last: the slot, heartbeat and lease are
	// let go before the job is retried or parked.
	defer w.recoverJob(ctx, log, c, id)
	slot, wait := w.domains.acquire(c.Job.Domain, w.opts.Now())
	if slot == nil {
		// The domain has its share of transactions; come back once one
		// may have ended rather than hold a worker. Checked before the
		// ledger is read: this costs one queue write.
		w.retry(ctx, log, c, w.opts.Now().Add(w.opts.Jitter(wait)))
		return
	}
	defer w.domains.release(slot)
	d, err := w.opts.Ledger.LoadDelivery(ctx, id, c.Job.Domain)
	if err == nil {
		w.ledger.ok()
	}
	now := w.opts.Now()
	switch {
	case errors.Is(err, store.ErrNotFound):
		// Intake queues before it records: the rows may still be on their
		// way, or their commit failed and the client heard 503.
		if at, wait := w.unrecordedRetry(id, now); wait {
			w.retry(ctx, log, c, at)
			return
		}
		log.Info("dropping job: its message was never recorded")
		w.ack(ctx, log, c)
		return
	case err != nil:
		w.ledgerDown(ctx, log, c, "load message", err)
		return
	case len(d.Recipients) == 0:
		w.ack(ctx, log, c) // done earlier (a reclaimed or repeated job)
		return
	case d.Parked != "":
		// Taken out of delivery; unparking requeues it.
		log.Info("job is parked; dropping it", "reason", d.Parked)
		w.ack(ctx, log, c)
		return
	case d.SendAt != nil && d.SendAt.After(now):
		w.retry(ctx, log, c, *d.SendAt)
		return
	}
	due, later := dueRecipients(d.Recipients, now.Add(dueSlack))
	if len(due) == 0 {
		// Early: a repeated job, or one reclaimed from a worker that died
		// after setting the next attempt. Come back when it is due.
		w.retry(ctx, log, c, later)
		return
	}
	expiry := d.CreatedAt.Add(w.opts.MaxQueueAge)
	if d.SendAt != nil && d.SendAt.After(d.CreatedAt) {
		expiry = d.SendAt.Add(w.opts.MaxQueueAge)
	}
	idxs := make([]int, len(due))
	for i, r := range due {
		idxs[i] = r.Idx
	}
	// Reserve the recipients for this claim alone (an owner no other claim
	// shares, not even a reclaim of the same queue entry), and set their
	// next attempt to when the lease lapses unrenewed: after a crash the
	// job reclaimed from the dead worker finds them due and free at once,
	// not a whole retry delay later. If the ledger is down, do not dial.
	owner := c.ID + "/" + uuid.NewString()
	taken, err := w.opts.Ledger.TakeLease(ctx, id, idxs, store.Lease{Owner: owner, For: w.opts.Lease, Next: now.Add(w.opts.Lease), DueBy: now.Add(dueSlack)})
	if err != nil {
		w.ledgerDown(ctx, log, c, "lease recipients", err)
		return
	}
	if len(taken) == 0 {
		// Another claim holds them, or just finished them. Never drop this
		// copy for good: that holder may be dead.
		log.Info("recipients leased by another claim; retrying once that lease can have lapsed")
		w.retry(ctx, log, c, now.Add(w.opts.Lease))
		return
	}
	due = keep(due, taken)

	dctx, cancelDelivery := context.WithCancel(ctx)
	defer cancelDelivery()
	watch := &leaseWatch{cancel: cancelDelivery}
	watch.delivering.Store(true)
	stopBeat := w.heartbeat(ctx, log, c, id, taken, owner, watch)
	defer stopBeat()
	outs, att := w.deliver(dctx, log, d, c.Job.Domain, due, expiry)
	watch.delivering.Store(false)
	slot.judge(att)
	if watch.lost.Load() && !anyAnswered(outs) {
		// Another claim owns these recipients now; an outcome written
		// here (our own cancellation) would stand in for its attempt.
		log.Warn("recipient lease lost during the delivery; leaving the recipients to their new holder")
		w.retry(ctx, log, c, w.opts.Now().Add(w.opts.Lease))
		return
	}
	alignRetries(outs)
	if !w.record(ctx, log, id, outs) {
		// Not recorded before shutdown: keep the job; its lease lapses and
		// another worker takes it over.
		return
	}
	// Every recipient still pending gets this job back at its own time:
	// those just deferred and those that were not due yet.
	if at := earliestRetry(outs, later); !at.IsZero() {
		w.retry(ctx, log, c, at)
		return
	}
	w.ack(ctx, log, c)
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

// leaseWatch is how the heartbeat stops a delivery whose lease is lost.
type leaseWatch struct {
	// delivering: the SMTP transaction has not ended; a lease found lost
	// afterwards is the recording's doing.
	delivering atomic.Bool
	lost       atomic.Bool
	cancel     context.CancelFunc
}

func (l *leaseWatch) lose() {
	if l.delivering.Load() {
		l.lost.Store(true)
		l.cancel()
	}
}

// anyAnswered reports whether an outcome is final (delivered or bounced):
// the receiver answered, and that must be recorded whoever holds the lease.
func anyAnswered(outs []store.Outcome) bool {
	for _, o := range outs {
		if o.Attempt.Outcome != store.RecipientDeferred {
			return true
		}
	}
	return false
}

// alignRetries gives the recipients of one job deferred at the same
// attempt one retry time, the earliest drawn: jitter spreads jobs, and one
// jitter per job lets a single retry of it serve all of them.
func alignRetries(outs []store.Outcome) {
	first := map[int]time.Time{}
	for _, o := range outs {
		if o.NextAttemptAt == nil {
			continue
		}
		if t, ok := first[o.Attempt.Attempt]; !ok || o.NextAttemptAt.Before(t) {
			first[o.Attempt.Attempt] = *o.NextAttemptAt
		}
	}
	for i, o := range outs {
		if o.NextAttemptAt != nil {
			t := first[o.Attempt.Attempt]
			outs[i].NextAttemptAt = &t
		}
	}
}

// recoverJob turns a panic in a job into a logged, counted failure: the
// other deliveries of the process go on, and a job that panics ParkAfter
// times (over all workers and restarts) is parked instead of crash-looping
// every worker. It must be deferred directly.
func (w *Worker) recoverJob(ctx context.Context, log *slog.Logger, c queue.Claimed, id uuid.UUID) {
	r := recover()
	if r == nil {
		return
	}
	w.opts.Metrics.panicked()
	reason := fmt.Sprintf("panic: %v", r)
	if len(reason) > 500 {
		reason = reason[:500]
	}
	log.Error("job panicked", "panic", reason, "stack", string(debug.Stack()))
	ctx = context.WithoutCancel(ctx)
	// Its lease (if it took one) lapses by then.
	again := w.opts.Now().Add(w.opts.Lease)
	parked, err := w.opts.Ledger.CountJobFailure(ctx, id, c.Job.Domain, reason, w.opts.ParkAfter)
	switch {
	case err != nil:
		log.Warn("count the panic of a job; retrying it", "error", err)
		w.retry(ctx, log, c, again)
	case parked:
		w.opts.Metrics.parked()
		log.Error("job parked after repeated panics; its recipients stay pending until it is unparked",
			"reason", reason, "panics", w.opts.ParkAfter)
		w.ack(ctx, log, c)
	default:
		w.retry(ctx, log, c, again)
	}
}

// ledgerDown puts a job back for a few seconds when the ledger failed
// before anything was sent, and slows claiming until it answers again.
func (w *Worker) ledgerDown(ctx context.Context, log *slog.Logger, c queue.Claimed, op string, err error) {
	log.Warn(op+"; retrying soon", "error", err)
	w.ledger.fail(w.opts.Now())
	w.retry(ctx, log, c, w.opts.Now().Add(w.opts.Jitter(5*time.Second)))
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

// dueRecipients splits rs into those due by t and the earliest next
// attempt of the others.
func dueRecipients(rs []store.PendingRecipient, t time.Time) (due []store.PendingRecipient, later time.Time) {
	for _, r := range rs {
		switch {
		case r.NextAttemptAt == nil || !r.NextAttemptAt.After(t):
			due = append(due, r)
		case later.IsZero() || r.NextAttemptAt.Before(later):
			later = *r.NextAttemptAt
		}
	}
	return due, later
}

// keep returns the recipients of rs whose index is in idxs.
func keep(rs []store.PendingRecipient, idxs []int) []store.PendingRecipient {
	var out []store.PendingRecipient
	for _, r := range rs {
		if slices.Contains(idxs, r.Idx) {
			out = append(out, r)
		}
	}
	return out
}

// deliver runs one attempt for rcpts, the recipients of d in domain that
// this worker leased, and returns their outcomes.
func (w *Worker) deliver(ctx context.Context, log *slog.Logger, d *store.Delivery, domain string, rcpts []store.PendingRecipient, expiry time.Time) ([]store.Outcome, Attempt) {
	now := w.opts.Now()
	to := make([]string, len(rcpts))
	fewest := rcpts[0].Attempts
	for i, r := range rcpts {
		to[i] = r.Email
		fewest = min(fewest, r.Attempts)
	}
	var att Attempt
	header, err := w.signature(ctx, d)
	if err != nil {
		log.Error("dkim signing failed; deferring", "error", err)
		att = Attempt{Started: now, Results: repeat(Result{Enhanced: "4.7.0", Err: fmt.Errorf("dkim signing: %w", err)}, len(to))}
	} else if hosts, err := w.opts.Route(ctx, domain); err != nil {
		att = Attempt{Started: now, Results: repeat(RouteResult(err), len(to))}
	} else {
		// The signature and the stored body are read in place, never
		// joined into a copy of the message.
		att = w.opts.Client.Deliver(ctx, hosts, smtpclient.Envelope{
			From: d.MailFrom, To: to, Body: smtpclient.Message(header, d.Body),
			Needs8Bit: d.Needs8Bit, NeedsUTF8: d.NeedsUTF8,
		})
	}
	w.opts.Metrics.attempt(att)

	done := w.opts.Now()
	outs := make([]store.Outcome, len(rcpts))
	for i, r := range rcpts {
		res := att.Results[i]
		a := store.Attempt{
			Recipient: r.Idx, Attempt: r.Attempts + 1, StartedAt: att.Started, Duration: att.Duration,
			MXHost: att.Host, SMTPCode: res.Code, EnhancedCode: res.Enhanced, Response: responseText(res),
			Outcome: recipientOutcome(res),
		}
		if att.IP.IsValid() {
			a.MXIP = att.IP.String()
		}
		if att.TLS != nil {
			a.TLSVersion, a.TLSCipher, a.TLSVerified = att.TLS.Version, att.TLS.Cipher, att.TLS.Verified
		}
		o := store.Outcome{Attempt: a}
		if a.Outcome == store.RecipientDeferred {
			if !done.Before(expiry) {
				// RFC 5321 4.5.4.1: give up after the queue lifetime; X.4.7
				// is "delivery time expired" (RFC 3463 3.5).
				o.Attempt.Outcome = store.RecipientBounced
				o.Attempt.EnhancedCode = "5.4.7"
				o.Attempt.Response = fmt.Sprintf("expired: not delivered within %s; last error: %s", w.opts.MaxQueueAge, a.Response)
			} else {
				n := w.nextAttempt(done, r.Attempts+1, expiry)
				o.NextAttemptAt = &n
			}
		}
		outs[i] = o
		w.opts.Metrics.outcome(o.Attempt.Outcome)
	}
	log.LogAttrs(ctx, slog.LevelInfo, "delivery attempt",
		slog.String("mx", att.Host), slog.Int("attempt", fewest+1), slog.Int("recipients", len(outs)),
		slog.Any("results", summarize(outs)), slog.Duration("duration", att.Duration))
	return outs, att
}

// nextAttempt is when attempt n+1 is due after attempt n fails, never past
// the expiry (so the last attempt happens at the queue lifetime).
func (w *Worker) nextAttempt(now time.Time, n int, expiry time.Time) time.Time {
	s := w.opts.RetrySchedule
	delay := s[min(n-1, len(s)-1)]
	t := now.Add(w.opts.Jitter(delay))
	if t.After(expiry) {
		t = expiry
	}
	return t
}

// earliestRetry is the earliest next attempt among the deferred outcomes
// and also (the recipients not attempted; zero if none): zero when nothing
// is left pending.
func earliestRetry(outs []store.Outcome, also time.Time) time.Time {
	t := also
	for _, o := range outs {
		if o.NextAttemptAt != nil && (t.IsZero() || o.NextAttemptAt.Before(t)) {
			t = *o.NextAttemptAt
		}
	}
	return t
}

// signature returns the message's DKIM header, signing once per message:
// the first worker to sign stores it and every transaction reuses it.
func (w *Worker) signature(ctx context.Context, d *store.Delivery) (string, error) {
	if d.Signed {
		return d.DKIMHeader, nil
	}
	from, err := mail.ParseAddress(d.From)
	if err != nil {
		return "", fmt.Errorf("from header %q: %w", d.From, err)
	}
	keys, err := w.keys.get(w.opts.Now(), from.Domain(), func() ([]dkim.Key, error) {
		return w.openKeys(ctx, from.Domain())
	})
	if err != nil {
		return "", err
	}
	header := "" // no key: sent unsigned, as the 202 warned
	if len(keys) > 0 {
		if header, err = w.opts.Signer.Sign(ctx, keys, d.Body); err != nil {
			return "", err
		}
	}
	return w.opts.Ledger.SaveSignature(ctx, d.ID, header)
}

// openKeys reads and unseals domain's active signing keys.
func (w *Worker) openKeys(ctx context.Context, domain string) ([]dkim.Key, error) {
	stored, err := w.opts.Ledger.ActiveDKIMKeys(ctx, domain)
	if err != nil {
		return nil, err
	}
	keys := make([]dkim.Key, len(stored))
	for i, k := range stored {
		priv, err := w.opts.Sealer.Open(k.PrivateKey)
		if err != nil {
			return nil, fmt.Errorf("open key %s._domainkey.%s: %w", k.Selector, k.Domain, err)
		}
		keys[i] = dkim.Key{Domain: k.Domain, Selector: k.Selector, Algorithm: dkim.Algorithm(k.Algorithm),
			PrivateKey: priv, PublicKey: k.PublicKey, CreatedAt: k.CreatedAt}
	}
	return keys, nil
}

// record writes outcomes, retrying while the ledger is unreachable: the
// SMTP work is done and must not be lost or repeated for want of a write.
// The outcomes wait in memory, the heartbeat keeps the job and the
// recipients reserved, and the write is tried until it succeeds or ctx ends
// (the end of the shutdown grace), so a PostgreSQL restart costs nothing.
func (w *Worker) record(ctx context.Context, log *slog.Logger, id uuid.UUID, outs []store.Outcome) bool {
	delay := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		// Even after ctx ends each try gets its time: one last try is made.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		_, err := w.opts.Ledger.RecordOutcomes(rctx, id, outs)
		cancel()
		if err == nil {
			if attempt > 1 {
				log.Info("recorded outcomes once the ledger answered", "tries", attempt)
			}
			return true
		}
		if ctx.Err() != nil {
			log.Error("outcomes not recorded before shutdown; these recipients will be attempted again",
				"error", err, "tries", attempt, "results", summarize(outs))
			return false
		}
		if attempt == 1 || attempt%10 == 0 {
			log.Warn("record outcomes; keeping them and retrying", "error", err, "tries", attempt)
		}
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// heartbeat renews the job's lease in the queue and the recipients' lease
// in the ledger while they are delivered and recorded, so a slow but alive
// delivery is not handed to a second worker. Either store may be down for
// a while: each renewal that fails is logged and tried again next beat.
// The lease is lost when the ledger says another claim took recipients
// over, or when the queue gave the job to another worker and the ledger
// cannot confirm the lease: then watch stops the delivery before DATA.
func (w *Worker) heartbeat(ctx context.Context, log *slog.Logger, c queue.Claimed, id uuid.UUID, idxs []int, owner string, watch *leaseWatch) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(w.opts.Heartbeat)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				qerr := w.opts.Queue.Extend(ctx, c)
				if qerr != nil && !errors.Is(qerr, queue.ErrLost) {
					log.Warn("extend job lease", "error", qerr)
				}
				n, err := w.opts.Ledger.RenewLease(ctx, id, idxs, owner, w.opts.Lease)
				switch {
				case err == nil && n < len(idxs) && watch.delivering.Load():
					log.Warn("recipient lease lost; stopping the delivery", "held", n, "leased", len(idxs))
					watch.lose()
				case err != nil && errors.Is(qerr, queue.ErrLost) && watch.delivering.Load():
					log.Warn("job reclaimed by another worker and the recipient lease not renewed; stopping the delivery", "error", err)
					watch.lose()
				case err != nil:
					log.Warn("renew recipient lease", "error", err)
				}
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func (w *Worker) ack(ctx context.Context, log *slog.Logger, c queue.Claimed) {
	if err := w.opts.Queue.Ack(context.WithoutCancel(ctx), c); err != nil {
		log.Warn("ack job", "error", err)
	}
}

func (w *Worker) retry(ctx context.Context, log *slog.Logger, c queue.Claimed, at time.Time) {
	if err := w.opts.Queue.Retry(context.WithoutCancel(ctx), c, at); err != nil {
		log.Warn("reschedule job", "error", err)
	}
}

func repeat(r Result, n int) []Result {
	out := make([]Result, n)
	for i := range out {
		out[i] = r
	}
	return out
}

func responseText(r Result) string {
	if r.Line != "" {
		return r.Line
	}
	if r.Err != nil {
		return r.Err.Error()
	}
	return ""
}

func summarize(outs []store.Outcome) map[string]int {
	m := map[string]int{}
	for _, o := range outs {
		m[o.Attempt.Outcome]++
	}
	return m
}
