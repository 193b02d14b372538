package submission

import (
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
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
type failureLimiter struct {
	max    int
	window time.Duration
	block  time.Duration
	now    func() time.Time

	mu      sync.Mutex
	clients map[netip.Prefix]*failures
}

type failures struct {
	count int
	since time.Time // first failure of the current window
	until time.Time // refused until then; zero when not blocked
}

// maxTracked bounds the limiter's memory. Beyond it, expired entries are
// dropped; if none has expired, a new address is not tracked (fail open)
// rather than letting a flood of addresses evict the ones being limited.
const maxTracked = 100_000

func newFailureLimiter(max int, block time.Duration, now func() time.Time) *failureLimiter {
	return &failureLimiter{max: max, window: block, block: block, now: now, clients: make(map[netip.Prefix]*failures)}
}

func clientKey(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.Prefix(bits)
	if err != nil { // the zero Addr: a connection without an IP address
		return netip.Prefix{}
	}
	return p
}

// wait is how long AUTH from ip is still refused; 0 when it is allowed.
func (l *failureLimiter) wait(ip netip.Addr) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.clients[clientKey(ip)]
	if f == nil {
		return 0
	}
	if d := f.until.Sub(l.now()); d > 0 {
		return d
	}
	return 0
}

// fail records a failed login from ip and reports whether the address is
// now refused.
func (l *failureLimiter) fail(ip netip.Addr) (blocked bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	key := clientKey(ip)
	f := l.clients[key]
	if f == nil {
		if len(l.clients) >= maxTracked {
			l.prune(now)
			if len(l.clients) >= maxTracked {
				return false
			}
		}
		f = &failures{}
		l.clients[key] = f
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

func (l *failureLimiter) prune(now time.Time) {
	for k, f := range l.clients {
		if now.Sub(f.since) > l.window && !now.Before(f.until) {
			delete(l.clients, k)
		}
	}
}
