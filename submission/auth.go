package submission

import (
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/mailferry/mailferry/connlimit"
)

// loginServer is the server side of the obsolete but ubiquitous LOGIN
// mechanism (draft-murchison-sasl-login): the user name, then the password,
// each as the answer to a challenge. go-sasl has only its client. A client
// may send the user name as an initial response (RFC 4954 4).
type loginServer struct {
	authenticate func(username, password string) error
	username     string
	step         int // 0: want the user name, 1: want the password, 2: done
}

func newLoginServer(authenticate func(username, password string) error) sasl.Server {
	return &loginServer{authenticate: authenticate}
}

func (s *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch s.step {
	case 0:
		if response == nil { // no initial response
			return []byte("Username:"), false, nil
		}
		s.username = string(response)
		s.step = 1
		return []byte("Password:"), false, nil
	case 1:
		s.step = 2
		return nil, true, s.authenticate(s.username, string(response))
	}
	return nil, false, errors.New("unexpected response after LOGIN completed")
}

// failureLimiter refuses AUTH from a client address after too many failed
// logins, so that API keys cannot be guessed over SMTP. IPv6 clients are
// counted by /64, the block a single host usually holds.
//
// A client that reaches max failures within window is refused for block
// from its last failure. Successful logins do not clear the count, so one
// valid key cannot be used to keep probing for others.
//
// An attempt counts from when its key check starts (begin), not when it
// ends: otherwise parallel sessions all pass the check before the first
// failure is recorded, and one address gets as many guesses at once as it
// opens sessions. A check that succeeds, or that the key store cannot
// answer, gives its attempt back (end).
type failureLimiter struct {
	max    int
	window time.Duration
	block  time.Duration
	now    func() time.Time

	mu      sync.Mutex
	clients map[netip.Prefix]*failures
}

type failures struct {
	count    int
	inflight int       // key checks begun and not yet ended
	since    time.Time // first failure of the current window
	until    time.Time // refused until then; zero when not blocked
}

// busyWait is the wait told to a client refused because its other
// sessions' checks are in progress: they end within a key check's time.
const busyWait = time.Second

// maxTracked bounds the limiter's memory. Beyond it, expired entries are
// dropped; if none has expired, a new address is not tracked (fail open)
// rather than letting a flood of addresses evict the ones being limited.
const maxTracked = 100_000

func newFailureLimiter(max int, block time.Duration, now func() time.Time) *failureLimiter {
	return &failureLimiter{max: max, window: block, block: block, now: now, clients: make(map[netip.Prefix]*failures)}
}

// wait is how long AUTH from ip is still refused; 0 when it is allowed.
func (l *failureLimiter) wait(ip netip.Addr) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.clients[connlimit.ClientKey(ip)]
	if f == nil {
		return 0
	}
	if d := f.until.Sub(l.now()); d > 0 {
		return d
	}
	return 0
}

// begin starts an attempt from ip: it is counted as a failure until end
// says otherwise. When the address is blocked, or its failures and the
// checks in progress already reach max, it returns how long to wait and
// false, and the key must not be checked.
func (l *failureLimiter) begin(ip netip.Addr) (wait time.Duration, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	f := l.entry(now, connlimit.ClientKey(ip))
	if f == nil { // not tracked: fail open, see maxTracked
		return 0, true
	}
	if d := f.until.Sub(now); d > 0 {
		return d, false
	}
	if now.Sub(f.since) > l.window {
		f.count, f.since = 0, now
	}
	if f.count+f.inflight >= l.max {
		return busyWait, false
	}
	f.inflight++
	return 0, true
}

// end finishes an attempt begun from ip. A failure adds to the count and
// reports whether the address is now refused; anything else gives the
// attempt back.
func (l *failureLimiter) end(ip netip.Addr, failed bool) (blocked bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	f := l.clients[connlimit.ClientKey(ip)]
	if f == nil {
		return false
	}
	if f.inflight > 0 {
		f.inflight--
	}
	if !failed {
		return false
	}
	if now.Sub(f.since) > l.window {
		f.count, f.since = 0, now
	}
	f.count++
	if f.count >= l.max {
		f.until = now.Add(l.block)
		f.count, f.since = 0, now
		return true
	}
	return false
}

// fail records a failed login from ip that needed no key check and
// reports whether the address is now refused.
func (l *failureLimiter) fail(ip netip.Addr) (blocked bool) {
	if _, ok := l.begin(ip); !ok {
		return true
	}
	return l.end(ip, true)
}

// entry is key's record, made if need be; nil when the limiter is full.
func (l *failureLimiter) entry(now time.Time, key netip.Prefix) *failures {
	if f := l.clients[key]; f != nil {
		return f
	}
	if len(l.clients) >= maxTracked {
		l.prune(now)
		if len(l.clients) >= maxTracked {
			return nil
		}
	}
	f := &failures{}
	l.clients[key] = f
	return f
}

func (l *failureLimiter) prune(now time.Time) {
	for k, f := range l.clients {
		if f.inflight == 0 && now.Sub(f.since) > l.window && !now.Before(f.until) {
			delete(l.clients, k)
		}
	}
}
