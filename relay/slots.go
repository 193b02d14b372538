package relay

import (
	"cmp"
	"slices"
	"sync"
	"time"
)

// destSlots limits transactions in flight per destination (the next hop:
// see destinationOf), with feedback in the manner of Postfix's destination
// concurrency: a destination starts with startSlots, earns one more with
// each quick transaction up to its cap, and halves after a transaction
// that was slow, reached no host, or was told 421 (RFC 5321 3.8: the
// server is closing the channel). A tarpit or a dead destination so holds
// one slot, not its cap, and the worker's other slots keep moving mail for
// everyone else.
type destSlots struct {
	slowAfter time.Duration

	mu         sync.Mutex
	m          map[string]*destState
	lastForget time.Time
}

type destState struct {
	limit  int
	starts []time.Time // of the transactions in flight
	last   time.Time   // last release
}

// slot is one transaction's hold on its destination.
type slot struct {
	dest  string
	max   int
	start time.Time
	att   *Attempt // the transaction run under it; nil if none was
}

// startSlots is where a destination not seen lately begins: a few
// connections, so a fast next hop is not held to one while it proves
// itself, and a bad one costs little.
const startSlots = 2

// idleForget is how long a destination with nothing in flight keeps its
// earned limit.
const idleForget = 10 * time.Minute

func newDestSlots(slowAfter time.Duration) *destSlots {
	return &destSlots{slowAfter: slowAfter, m: map[string]*destState{}}
}

// acquire takes a slot for dest, whose cap is limit, or says how long to
// wait: as long as its oldest transaction has been running, between 1s
// and 1m, so jobs for a stuck destination are not claimed over and over
// while it holds them.
func (d *destSlots) acquire(dest string, limit int, now time.Time) (*slot, time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.m[dest]
	if st == nil {
		st = &destState{limit: min(startSlots, limit)}
		d.m[dest] = st
	}
	st.limit = min(st.limit, limit)
	if len(st.starts) >= st.limit {
		return nil, min(max(now.Sub(st.starts[0]), time.Second), time.Minute)
	}
	st.starts = append(st.starts, now)
	return &slot{dest: dest, max: limit, start: now}, 0
}

// judge notes the transaction run under the slot, for release.
func (s *slot) judge(a Attempt) { s.att = &a }

func (d *destSlots) release(s *slot) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.m[s.dest]
	if st == nil {
		return
	}
	if i := slices.Index(st.starts, s.start); i >= 0 {
		st.starts = slices.Delete(st.starts, i, i+1)
	}
	st.last = s.start
	if a := s.att; a != nil {
		st.last = a.Started.Add(a.Duration)
		if d.healthy(a) {
			st.limit = min(st.limit+1, s.max)
		} else {
			st.limit = max(st.limit/2, 1)
		}
	}
}

// healthy says whether a transaction is one to grow on: a host answered,
// quickly, and did not send us away with 421.
func (d *destSlots) healthy(a *Attempt) bool {
	if a.Host == "" || a.Duration >= d.slowAfter {
		return false
	}
	for _, r := range a.Results {
		if r.Code == 421 {
			return false
		}
	}
	return true
}

// forget drops destinations idle for a while, at most once a minute, so
// the map holds the destinations of recent traffic only.
func (d *destSlots) forget(now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if now.Sub(d.lastForget) < time.Minute {
		return
	}
	d.lastForget = now
	for k, st := range d.m {
		if len(st.starts) == 0 && now.Sub(st.last) > idleForget {
			delete(d.m, k)
		}
	}
}

// destLoad is one destination's transactions in flight and current limit.
type destLoad struct {
	dest            string
	inflight, limit int
}

// loads lists the destinations with transactions in flight, busiest first.
func (d *destSlots) loads() []destLoad {
	d.mu.Lock()
	out := make([]destLoad, 0, len(d.m))
	for k, st := range d.m {
		if len(st.starts) > 0 {
			out = append(out, destLoad{dest: k, inflight: len(st.starts), limit: st.limit})
		}
	}
	d.mu.Unlock()
	sortLoads(out)
	return out
}

func sortLoads(ls []destLoad) {
	slices.SortFunc(ls, func(a, b destLoad) int {
		return cmp.Or(cmp.Compare(b.inflight, a.inflight), cmp.Compare(a.dest, b.dest))
	})
}
