// Package lease owns the one rule behind every delivery timing: how often a
// worker proves it is alive, how long its recipients stay reserved in the
// ledger without that proof, when the queue hands its job to another
// worker, and when the reconciler calls a job lost. It does no I/O.
//
// The order is what keeps a recipient in one SMTP transaction at a time
// and a dead worker's mail moving:
//
//	Heartbeat < Lease < Visibility < StaleAfter
//
// A live worker renews both leases every Heartbeat, so neither lapses. A
// dead one's ledger lease lapses first, so when the queue reclaims its job
// (after Visibility) the recipients are free for the new holder. Only a
// job the queue lost altogether waits for the reconciler (StaleAfter).
package lease

import (
	"errors"
	"fmt"
	"time"
)

// Var is the environment variable the timings are built from.
const Var = "MAILFERRY_VISIBILITY_TIMEOUT"

// DefaultVisibility is Var's default. With it a worker beats every 5s, its
// recipients stay reserved 15s, and its job goes to another worker 30s
// after its last beat: a dead worker's mail is attempted again within about
// 35s (the 30s plus the queue's reclaim scan, Visibility/10), well inside a
// minute, while a loaded worker still has six beats to be heard in.
const DefaultVisibility = 30 * time.Second

// Timing is the set of durations workers, the queue and the reconciler use.
type Timing struct {
	// Heartbeat is how often a worker renews its leases.
	Heartbeat time.Duration
	// Lease is how long recipients stay reserved in the ledger unrenewed.
	Lease time.Duration
	// Visibility is how long the queue waits on a silent job's holder
	// before another worker may claim it.
	Visibility time.Duration
	// StaleAfter: a recipient due this long ago that no one holds is a
	// candidate for a job the queue lost (the reconciler's sweep).
	StaleAfter time.Duration
}

// New derives the timings from the visibility timeout and checks them.
func New(visibility time.Duration) (Timing, error) {
	t := Timing{
		Heartbeat:  visibility / 6,
		Lease:      visibility / 2,
		Visibility: visibility,
		// Past the visibility timeout, a job in the queue is claimed or
		// reclaimed; the minute covers accepts and promotions in transit.
		StaleAfter: visibility + time.Minute,
	}
	return t, t.Validate()
}

// Validate reports every broken ratio, each naming Var.
func (t Timing) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", Var, fmt.Sprintf(format, args...)))
	}
	if t.Heartbeat < 10*time.Millisecond {
		bad("heartbeat %v is below 10ms: the timeout is too short", t.Heartbeat)
	}
	// Two missed beats are tolerated before the ledger lease lapses.
	if t.Lease < 3*t.Heartbeat {
		bad("ledger lease %v is under three heartbeats (%v)", t.Lease, t.Heartbeat)
	}
	if t.Lease >= t.Visibility {
		bad("ledger lease %v must lapse before the queue reclaims a job (%v)", t.Lease, t.Visibility)
	}
	if t.StaleAfter <= t.Visibility {
		bad("stale-after %v must exceed the visibility timeout %v", t.StaleAfter, t.Visibility)
	}
	return errors.Join(errs...)
}
