package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/store"
)

// dueSlack lets a job run this much before its recipients' next attempt
// time: the queue keeps milliseconds, the ledger microseconds, and worker
// clocks differ a little.
const dueSlack = time.Second

// ending is how a job leaves a worker: acknowledged (nothing left for it to
// do), put back for a time, or kept (its outcome could not be recorded; the
// queue hands it to another worker once the claim goes silent).
type ending struct {
	kind endKind
	at   time.Time // for endLater
}

type endKind int

const (
	endDone endKind = iota
	endLater
	endKept
)

func done() ending              { return ending{kind: endDone} }
func later(at time.Time) ending { return ending{kind: endLater, at: at} }
func kept() ending              { return ending{kind: endKept} }

// process handles one job: route → wait for the destination → load →
// lease → deliver → record → end. It never returns an error: every path
// ends in Ack, Retry, or (if Redis or PostgreSQL is down) a claim that goes
// silent and is reclaimed. stop ends the wait for a destination (the
// worker is stopping); ctx, the delivery, outlives it by the grace period.
//
// Redis may hold a job twice (a requeue, a reclaim): the recipients' lease
// in the ledger makes sure only one claim attempts them. A copy that finds
// them leased to another claim comes back when that lease can have lapsed
// (the holder died: it takes over; the holder lives: nothing is left to
// do); a copy that comes before they are due is put off until then.
func (w *Worker) process(stop, ctx context.Context, c queue.Claimed) {
	log := w.opts.Logger.With(slog.String("message_id", c.Job.MessageID), slog.String("rcpt_domain", c.Job.Domain))
	id, err := uuid.Parse(c.Job.MessageID)
	if err != nil {
		log.Error("dropping job with an invalid message id", "error", err)
		w.ack(ctx, log, c)
		return
	}
	// Deferred first, so it runs last: the slot, heartbeat and lease are
	// let go before a panicked job is retried or parked.
	defer w.recoverJob(ctx, log, c, id)
	// The route comes first (from the DNS cache, as a rule): it names the
	// destination whose transactions the job must wait for.
	hop := w.route(ctx, c.Job.Domain)
	if hop.dest != "" {
		slot, ok := w.await(stop, log, c, hop)
		if !ok {
			return
		}
		hop.slot = slot
		defer w.endSlot(hop)
	}
	select {
	case w.runners <- struct{}{}:
	case <-stop.Done():
		w.giveBack(stop, log, c)
		return
	}
	w.started(c)
	defer func() { <-w.runners }()
	switch e := w.run(ctx, log, c, id, hop); e.kind {
	case endDone:
		w.ack(ctx, log, c)
	case endLater:
		w.retry(ctx, log, c, e.at)
	}
}

// await parks the job until its destination has a transaction free for
// it, fleet-wide. The job stays claimed (the worker's hold loop renews the
// claim), so it is never written back to Redis for want of a slot. ok is
// false when the job ends here: reclaimed by another worker meanwhile, or
// given back because the worker is stopping.
func (w *Worker) await(stop context.Context, log *slog.Logger, c queue.Claimed, hop *nextHop) (*slot, bool) {
	wctx, cancel := context.WithCancel(stop)
	defer cancel()
	h := w.park(c, cancel)
	w.gate.note(hop.dest, hop.max, hop.hosts)
	s, err := w.gate.wait(wctx, stop, hop.dest, hop.max)
	w.unpark(h)
	if err == nil {
		return s, true
	}
	if h.lost.Load() {
		log.Info("job reclaimed by another worker while it waited for its destination")
		return nil, false
	}
	w.giveBack(stop, log, c)
	return nil, false
}

// endSlot gives back the job's transaction slot, if it still holds one,
// with the verdict on its transaction.
func (w *Worker) endSlot(hop *nextHop) {
	if hop.slot == nil {
		return
	}
	if hop.att != nil {
		hop.slot.judge(*hop.att)
	}
	w.gate.release(hop.slot)
	hop.slot = nil
}

// giveBack returns a job the stopping worker has not started to the ready
// queue, so another worker takes it now rather than after the visibility
// timeout.
func (w *Worker) giveBack(stop context.Context, log *slog.Logger, c queue.Claimed) {
	w.retry(context.WithoutCancel(stop), log, c, time.Time{})
}

// run takes a routed job through its steps and says how it ends.
func (w *Worker) run(ctx context.Context, log *slog.Logger, c queue.Claimed, id uuid.UUID, hop *nextHop) ending {
	d, end, ok := w.load(ctx, log, c, id)
	if !ok {
		return end
	}
	lj, end, ok := w.lease(ctx, log, c, d)
	if !ok {
		return end
	}
	// The heartbeat runs until the outcome is recorded, not just until the
	// SMTP transaction ends: a worker waiting out a ledger outage with an
	// answer in memory must keep its claim on the job, or another worker
	// reclaims it and sends the message again.
	dctx, cancelDelivery := context.WithCancel(ctx)
	defer cancelDelivery()
	watch := &leaseWatch{cancel: cancelDelivery}
	watch.delivering.Store(true)
	stopBeat := w.heartbeat(ctx, log, c, lj.d.ID, lj.idxs, lj.owner, watch)
	defer stopBeat()
	outs, att, lost := w.attempt(dctx, log, lj, hop, watch)
	hop.att = &att
	// The destination's slot counts SMTP transactions: the next job may
	// use it while this one's outcome is written.
	w.endSlot(hop)
	if lost {
		// Another claim owns these recipients now; an outcome written
		// here (our own cancellation) would stand in for its attempt.
		log.Warn("recipient lease lost during the delivery; leaving the recipients to their new holder")
		return later(w.opts.Now().Add(w.opts.Lease))
	}
	alignRetries(outs)
	if end, ok := w.record(ctx, log, id, c.Job.Domain, outs); !ok {
		// Not recorded before shutdown (the job is kept: its lease lapses
		// and another worker takes it over), or never recordable (parked).
		return end
	}
	// Every recipient still pending gets this job back at its own time:
	// those just deferred and those that were not due yet.
	if at := earliestRetry(outs, lj.notDue); !at.IsZero() {
		return later(at)
	}
	return done()
}

// load reads the message and its pending recipients in the job's domain.
// ok is false when the job ends here.
func (w *Worker) load(ctx context.Context, log *slog.Logger, c queue.Claimed, id uuid.UUID) (d *store.Delivery, end ending, ok bool) {
	d, err := w.loadFresh(ctx, id, c.Job.Domain)
	switch {
	case errors.Is(err, store.ErrNotFound):
		// Intake queues before it records: the rows may still be on their
		// way, or their commit failed and the client heard 503.
		if at, wait := w.unrecordedRetry(id, w.opts.Now()); wait {
			return nil, later(at), false
		}
		log.Info("dropping job: its message was never recorded")
		return nil, done(), false
	case err != nil:
		return nil, w.ledgerDown(log, "load message", err), false
	}
	w.ledger.ok()
	switch {
	case len(d.Recipients) == 0:
		return nil, done(), false // done earlier (a reclaimed or repeated job)
	case d.Parked != "":
		// Taken out of delivery; unparking requeues it.
		log.Info("job is parked; dropping it", "reason", d.Parked)
		return nil, done(), false
	case d.SendAt != nil && d.SendAt.After(w.opts.Now()):
		return nil, later(*d.SendAt), false
	}
	return d, ending{}, true
}

// commitWaits are the pauses before a worker reads a just-made job's
// message again: intake queues a job a few milliseconds before its commit
// lands, and an idle worker claims it at once. Waiting here costs those
// milliseconds; putting the job back would cost a second or more.
var commitWaits = [...]time.Duration{2 * time.Millisecond, 8 * time.Millisecond, 32 * time.Millisecond, 128 * time.Millisecond}

// loadFresh is LoadDelivery that, for a job made in the last second and not
// found, reads again after each of commitWaits.
func (w *Worker) loadFresh(ctx context.Context, id uuid.UUID, domain string) (*store.Delivery, error) {
	d, err := w.loadDelivery(ctx, id, domain)
	for _, pause := range commitWaits {
		if !errors.Is(err, store.ErrNotFound) || id.Version() != 7 || w.opts.Now().Sub(uuidV7Time(id)) > time.Second {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(pause):
		}
		d, err = w.loadDelivery(ctx, id, domain)
	}
	return d, err
}

// leasedJob is the part of a job this claim holds: the recipients due now
// and leased to it, and when the others are due.
type leasedJob struct {
	d      *store.Delivery
	owner  string
	due    []store.PendingRecipient
	idxs   []int
	notDue time.Time // earliest next attempt of the pending recipients not due yet
	expiry time.Time
}

// lease reserves the due recipients for this claim alone (an owner no
// other claim shares, not even a reclaim of the same queue entry) and sets
// their next attempt to when the lease lapses unrenewed: after a crash the
// job reclaimed from the dead worker finds them due and free at once, not a
// whole retry delay later. If the ledger is down, nothing is dialled.
func (w *Worker) lease(ctx context.Context, log *slog.Logger, c queue.Claimed, d *store.Delivery) (*leasedJob, ending, bool) {
	now := w.opts.Now()
	due, notDue := dueRecipients(d.Recipients, now.Add(dueSlack))
	if len(due) == 0 {
		// Early: a repeated job, or one reclaimed from a worker that died
		// after setting the next attempt. Come back when it is due.
		return nil, later(notDue), false
	}
	lj := &leasedJob{d: d, owner: c.ID + "/" + uuid.NewString(), notDue: notDue,
		expiry: d.CreatedAt.Add(w.opts.MaxQueueAge)}
	if d.SendAt != nil && d.SendAt.After(d.CreatedAt) {
		lj.expiry = d.SendAt.Add(w.opts.MaxQueueAge)
	}
	idxs := make([]int, len(due))
	for i, r := range due {
		idxs[i] = r.Idx
	}
	taken, err := w.takeLease(ctx, d.ID, idxs, store.Lease{Owner: lj.owner, For: w.opts.Lease, Next: now.Add(w.opts.Lease), DueBy: now.Add(dueSlack)})
	if err != nil {
		return nil, w.ledgerDown(log, "lease recipients", err), false
	}
	if len(taken) == 0 {
		// Another claim holds them, or just finished them. Never drop this
		// copy for good: that holder may be dead.
		log.Info("recipients leased by another claim; retrying once that lease can have lapsed")
		return nil, later(now.Add(w.opts.Lease)), false
	}
	lj.due, lj.idxs = keep(due, taken), taken
	return lj, ending{}, true
}

// attempt delivers the leased recipients under the heartbeat started by
// run, which stops the delivery before DATA if the lease is lost. lost
// reports that, with nothing answered that must be recorded.
func (w *Worker) attempt(ctx context.Context, log *slog.Logger, lj *leasedJob, hop *nextHop, watch *leaseWatch) (outs []store.Outcome, att Attempt, lost bool) {
	outs, att = w.deliver(ctx, log, lj.d, hop, lj.due, lj.expiry)
	watch.delivering.Store(false)
	return outs, att, watch.lost.Load() && !anyAnswered(outs)
}

// ledgerDown puts a job back for a few seconds when the ledger failed
// before anything was sent, and slows claiming until it answers again.
func (w *Worker) ledgerDown(log *slog.Logger, op string, err error) ending {
	log.Warn(op+"; retrying soon", "error", err)
	w.ledger.fail(w.opts.Now())
	return later(w.opts.Now().Add(w.opts.Jitter(5 * time.Second)))
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

// recordRejects is how many times record tries a write the ledger refused
// (store.ErrRejected) before it parks the job: a refusal is not an outage,
// and trying it for ever would hold the worker, the domain's slot and the
// recipients' lease for good.
const recordRejects = 5

// record writes outcomes, retrying while the ledger is unreachable: the
// SMTP work is done and must not be lost or repeated for want of a write.
// The outcomes wait in memory, the heartbeat keeps the job and the
// recipients reserved, and the write is tried until it succeeds or ctx ends
// (the end of the shutdown grace), so a PostgreSQL restart costs nothing.
// A write the ledger refuses recordRejects times parks the job instead.
// ok is false when the outcomes were not recorded, with how the job ends.
func (w *Worker) record(ctx context.Context, log *slog.Logger, id uuid.UUID, domain string, outs []store.Outcome) (end ending, ok bool) {
	delay := 200 * time.Millisecond
	rejects := 0
	for attempt := 1; ; attempt++ {
		// Even after ctx ends each try gets its time: one last try is made.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		_, err := w.recordOutcomes(rctx, id, outs)
		cancel()
		if err == nil {
			if attempt > 1 {
				log.Info("recorded outcomes once the ledger answered", "tries", attempt)
			}
			return ending{}, true
		}
		if errors.Is(err, store.ErrRejected) {
			if rejects++; rejects >= recordRejects && w.parkUnrecorded(ctx, log, id, domain, outs, err, attempt) {
				return done(), false
			}
		}
		if ctx.Err() != nil {
			log.Error("outcomes not recorded before shutdown; these recipients will be attempted again",
				"error", err, "tries", attempt, "results", summarize(outs))
			return kept(), false
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

// parkUnrecorded parks a job whose outcomes the ledger keeps refusing, so
// that it never loops, and reports whether it is parked. The ledger still
// shows its recipients pending, though the receiver may have taken the
// message: the reason says what the SMTP attempt ended in, for an operator
// to decide before releasing it (a release attempts every recipient still
// pending in the ledger, these included).
func (w *Worker) parkUnrecorded(ctx context.Context, log *slog.Logger, id uuid.UUID, domain string, outs []store.Outcome, err error, tries int) bool {
	results := summarize(outs)
	reason := fmt.Sprintf("outcomes not recordable after %d tries (delivered %d, bounced %d, deferred %d by the SMTP attempt; "+
		"the ledger still shows them pending): %v", tries, results[store.RecipientDelivered], results[store.RecipientBounced],
		results[store.RecipientDeferred], err)
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if perr := w.opts.Ledger.ParkJob(pctx, id, domain, reason); perr != nil {
		log.Warn("park a job whose outcomes cannot be recorded; retrying", "error", perr)
		return false
	}
	w.opts.Metrics.parked()
	w.opts.Metrics.unrecorded()
	log.Error("job parked: its outcomes cannot be recorded; recipients delivered by this attempt get another copy if it is released",
		"reason", reason, "results", results)
	return true
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
				// Each renewal gets one beat: a store that hangs must not hold
				// up the other's renewal, nor the next beat.
				bctx, cancel := context.WithTimeout(ctx, w.opts.Heartbeat)
				qerr := w.opts.Queue.Extend(bctx, c)
				if qerr != nil && !errors.Is(qerr, queue.ErrLost) {
					log.Warn("extend job lease", "error", qerr)
				}
				n, err := w.opts.Ledger.RenewLease(bctx, id, idxs, owner, w.opts.Lease)
				cancel()
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
