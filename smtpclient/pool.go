package smtpclient

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Reuse bounds how SMTP connections are kept for the next message to the
// same host. A connection returns to the pool only after a transaction
// that left it usable (a complete reply other than 421, no I/O error), and
// is checked with RSET before it carries another (RFC 5321 4.1.1.5).
type Reuse struct {
	// Disabled closes every connection after one transaction.
	Disabled bool
	// Idle is how long an unused connection is kept; default 5s. Receivers
	// spend a process or a slot on an idle session, so this stays short
	// (Postfix keeps cached connections 2s).
	Idle time.Duration
	// MaxMessages per connection; default 100. Bounds what one session
	// carries and spreads load over a host's addresses again.
	MaxMessages int
	// MaxMessagesFor, when set, gives the cap for connections to an MX
	// host (the shaping file's max_messages_per_connection); 0 from it
	// means MaxMessages.
	MaxMessagesFor func(host string) int
	// MaxAge of a connection; default 5m.
	MaxAge time.Duration
	// MaxIdle connections kept in all; default 256.
	MaxIdle int
	// MaxIdlePerHost connections kept to one host address; default 32.
	MaxIdlePerHost int
}

func (r Reuse) withDefaults() Reuse {
	if r.Idle <= 0 {
		r.Idle = 5 * time.Second
	}
	if r.MaxMessages <= 0 {
		r.MaxMessages = 100
	}
	if r.MaxAge <= 0 {
		r.MaxAge = 5 * time.Minute
	}
	if r.MaxIdle <= 0 {
		r.MaxIdle = 256
	}
	if r.MaxIdlePerHost <= 0 {
		r.MaxIdlePerHost = 32
	}
	return r
}

// poolKey names a destination: the MX host name (the TLS server name and
// what the attempt records) and the address dialled.
type poolKey struct {
	host string
	ip   netip.Addr
}

// connPool holds idle sessions, newest last: taking the newest keeps the
// warmest connections busy and lets the oldest reach Idle and close.
type connPool struct {
	opts Reuse
	now  func() time.Time

	mu    sync.Mutex
	idle  map[poolKey][]*session
	count int
	// open counts the connections to each host name, busy or idle, from
	// dial to close: what TrimIdle holds to a fleet-wide lease count.
	open map[string]int
	// closing counts, per host name, the sessions taken out of the pool
	// to be closed whose close has not finished; changed is closed and
	// replaced each time one finishes (awaitClosing).
	closing map[string]int
	changed chan struct{}
}

func newConnPool(opts Reuse) *connPool {
	return &connPool{opts: opts.withDefaults(), now: time.Now, idle: map[poolKey][]*session{}, open: map[string]int{},
		closing: map[string]int{}, changed: make(chan struct{})}
}

// opened counts a new connection to host.
func (p *connPool) opened(host string) {
	p.mu.Lock()
	p.open[host]++
	p.mu.Unlock()
}

// closed uncounts s's connection.
func (p *connPool) closed(s *session) {
	host := s.host.Name
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.open[host]--; p.open[host] <= 0 {
		delete(p.open, host)
	}
	if s.closing {
		if p.closing[host]--; p.closing[host] <= 0 {
			delete(p.closing, host)
		}
		close(p.changed)
		p.changed = make(chan struct{})
	}
}

// detach marks s, taken out of the pool, as being closed; p.mu must be
// held.
func (p *connPool) detach(s *session) *session {
	s.closing = true
	p.closing[s.host.Name]++
	return s
}

// closingWait bounds how long a dial waits for closes in flight to its
// hosts: a close takes a QUIT round trip and the server's own close, so
// milliseconds, unless the server has vanished.
const closingWait = 2 * time.Second

// awaitClosing waits until no session to hosts is being closed, or
// closingWait, or ctx ends. A new connection that replaces one being
// closed then never overlaps it at the receiver, which counts both: the
// fleet-wide lease count is per connection (relay/slots.go).
func (p *connPool) awaitClosing(ctx context.Context, hosts []string) {
	timer := time.NewTimer(closingWait)
	defer timer.Stop()
	for {
		p.mu.Lock()
		n := 0
		for _, h := range hosts {
			n += p.closing[h]
		}
		ch := p.changed
		p.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		case <-timer.C:
			return
		}
	}
}

// trim takes idle sessions to hosts out of the pool, oldest first, until
// the connections open to them (busy or idle) are at most keep, and
// returns them for the caller to close.
func (p *connPool) trim(hosts []string, keep int) []*session {
	p.mu.Lock()
	defer p.mu.Unlock()
	total := 0
	for _, h := range hosts {
		total += p.open[h]
	}
	var out []*session
	for total > keep {
		k, ok := p.oldestIdle(hosts)
		if !ok {
			break
		}
		list := p.idle[k]
		out = append(out, p.detach(list[0]))
		p.store(k, list[1:])
		p.count--
		total--
	}
	return out
}

// evict takes the longest idle session to hosts out of the pool, if
// there is one, for the caller to close.
func (p *connPool) evict(hosts []string) []*session {
	p.mu.Lock()
	defer p.mu.Unlock()
	k, ok := p.oldestIdle(hosts)
	if !ok {
		return nil
	}
	list := p.idle[k]
	p.store(k, list[1:])
	p.count--
	return []*session{p.detach(list[0])}
}

// oldestIdle finds the key of the idle session to hosts idle longest;
// p.mu must be held.
func (p *connPool) oldestIdle(hosts []string) (poolKey, bool) {
	var (
		best  poolKey
		since time.Time
		found bool
	)
	for k, list := range p.idle {
		if len(list) == 0 || !slices.Contains(hosts, k.host) {
			continue
		}
		if !found || list[0].idleSince.Before(since) {
			best, since, found = k, list[0].idleSince, true
		}
	}
	return best, found
}

// take returns an idle session for k, or nil. Sessions found expired are
// closed.
func (p *connPool) take(k poolKey) *session {
	if p.opts.Disabled {
		return nil
	}
	now := p.now()
	var stale []*session
	defer func() { closeAll(stale) }()
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.idle[k]
	for len(list) > 0 {
		s := list[len(list)-1]
		list = list[:len(list)-1]
		p.count--
		if p.expired(s, now) {
			stale = append(stale, p.detach(s))
			continue
		}
		p.store(k, list)
		return s
	}
	p.store(k, list)
	return nil
}

// put keeps s for the next message, or closes it if it has done its share
// or the pool is full.
func (p *connPool) put(s *session) {
	now := p.now()
	if p.opts.Disabled || s.used >= p.maxMessages(s.host.Name) || now.Sub(s.born) >= p.opts.MaxAge {
		s.close()
		return
	}
	k := poolKey{host: s.host.Name, ip: s.ip}
	p.mu.Lock()
	if p.count >= p.opts.MaxIdle || len(p.idle[k]) >= p.opts.MaxIdlePerHost {
		p.mu.Unlock()
		s.close()
		return
	}
	s.idleSince = now
	p.idle[k] = append(p.idle[k], s)
	p.count++
	p.mu.Unlock()
}

// maxMessages is the cap on messages per connection to host.
func (p *connPool) maxMessages(host string) int {
	if p.opts.MaxMessagesFor != nil {
		if n := p.opts.MaxMessagesFor(host); n > 0 {
			return n
		}
	}
	return p.opts.MaxMessages
}

// sweep closes the sessions idle longer than Idle.
func (p *connPool) sweep() {
	now := p.now()
	var stale []*session
	p.mu.Lock()
	for k, list := range p.idle {
		kept := list[:0]
		for _, s := range list {
			if p.expired(s, now) {
				stale = append(stale, p.detach(s))
				p.count--
			} else {
				kept = append(kept, s)
			}
		}
		clear(list[len(kept):])
		p.store(k, kept)
	}
	p.mu.Unlock()
	closeAll(stale)
}

// closeIdle closes every idle session.
func (p *connPool) closeIdle() {
	p.mu.Lock()
	var all []*session
	for _, list := range p.idle {
		for _, s := range list {
			all = append(all, p.detach(s))
		}
	}
	p.idle, p.count = map[poolKey][]*session{}, 0
	p.mu.Unlock()
	closeAll(all)
}

func (p *connPool) idleCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.count
}

func (p *connPool) expired(s *session, now time.Time) bool {
	return now.Sub(s.idleSince) >= p.opts.Idle || now.Sub(s.born) >= p.opts.MaxAge
}

func (p *connPool) store(k poolKey, list []*session) {
	if len(list) == 0 {
		delete(p.idle, k)
		return
	}
	p.idle[k] = list
}

// closeAll ends sessions off the caller's path: QUIT waits for a reply.
func closeAll(ss []*session) {
	if len(ss) == 0 {
		return
	}
	go func() {
		for _, s := range ss {
			s.close()
		}
	}()
}
