package relay

import (
	"slices"
	"sync"
	"time"
)

// domainSlots limits transactions in flight per recipient domain, with
// feedback in the manner of Postfix's destination concurrency: a domain
// starts with one slot, earns one more with each quick transaction up to
// max, and drops back to one after a slow transaction or one that reached
// no host. A tarpit or a dead destination so holds one slot, not max, and
// the worker's other slots keep moving mail for everyone else.
type domainSlots struct {
	max       int
	slowAfter time.Duration

	mu         sync.Mutex
	m          map[string]*domainState
	lastForget time.Time
}

type domainState struct {
	limit  int
	starts []time.Time // of the transactions in flight
	last   time.Time   // last release
}

// slot is one transaction's hold on its domain.
type slot struct {
	domain string
	start  time.Time
	att    *Attempt // the transaction run under it; nil if none was
}

// idleForget is how long a domain with nothing in flight keeps its earned
// limit.
const idleForget = 10 * time.Minute

func newDomainSlots(max int, slowAfter time.Duration) *domainSlots {
	return &domainSlots{max: max, slowAfter: slowAfter, m: map[string]*domainState{}}
}

// acquire takes a slot for domain, or says how long to wait: as long as
// its oldest transaction has been running, between 1s and 1m, so jobs for
// a stuck destination are not claimed over and over while it holds them.
func (d *domainSlots) acquire(domain string, now time.Time) (*slot, time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.m[domain]
	if st == nil {
		st = &domainState{limit: 1}
		d.m[domain] = st
	}
	if len(st.starts) >= st.limit {
		return nil, min(max(now.Sub(st.starts[0]), time.Second), time.Minute)
	}
	st.starts = append(st.starts, now)
	return &slot{domain: domain, start: now}, 0
}

// judge notes the transaction run under the slot, for release.
func (s *slot) judge(a Attempt) { s.att = &a }

func (d *domainSlots) release(s *slot) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.m[s.domain]
	if st == nil {
		return
	}
	if i := slices.Index(st.starts, s.start); i >= 0 {
		st.starts = slices.Delete(st.starts, i, i+1)
	}
	st.last = s.start
	if a := s.att; a != nil {
		st.last = a.Started.Add(a.Duration)
		if a.Host != "" && a.Duration < d.slowAfter {
			st.limit = min(st.limit+1, d.max)
		} else {
			st.limit = 1 // slow, or no host answered
		}
	}
}

// forget drops domains idle for a while, at most once a minute, so the map
// holds the domains of recent traffic only.
func (d *domainSlots) forget(now time.Time) {
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
