// Package testmx runs real mail-routing servers on loopback for tests: a DNS
// server serving per-test records (DNS), a go-smtp server with STARTTLS that
// records what it receives and can be scripted per command (SMTP), and a raw
// TCP peer for behaviour no well-behaved server shows (Peer).
//
// Everything binds inside 127.0.0.0/8 and nowhere else: a relay under test
// must never be pointed at another machine. Mail servers of one test share a
// port number on different loopback addresses (127.0.0.2, 127.0.0.3, …), the
// way real MX hosts share port 25, so the client under test needs a single
// Port option.
package testmx

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
)

// Listen binds one TCP listener on each of ips, all on the same port, and
// returns that port. Each ip must be in 127.0.0.0/8. The port is chosen by
// the kernel for the first address and reused for the others; if it is taken
// on one of them, Listen starts over with a new port. The listeners are
// closed when the test ends.
func Listen(t testing.TB, ips ...string) (port int, lns []net.Listener) {
	t.Helper()
	if len(ips) == 0 {
		t.Fatal("testmx.Listen: no addresses")
	}
	for _, ip := range ips {
		mustLoopback(t, ip)
	}
	var lastErr error
	for range 50 {
		lns, err := listenSamePort(ips)
		if err == nil {
			t.Cleanup(func() {
				for _, ln := range lns {
					ln.Close()
				}
			})
			return lns[0].Addr().(*net.TCPAddr).Port, lns
		}
		lastErr = err
	}
	t.Fatalf("testmx.Listen %v: no common free port: %v", ips, lastErr)
	return 0, nil
}

func listenSamePort(ips []string) ([]net.Listener, error) {
	first, err := net.Listen("tcp", net.JoinHostPort(ips[0], "0"))
	if err != nil {
		return nil, err
	}
	lns := []net.Listener{first}
	port := first.Addr().(*net.TCPAddr).Port
	for _, ip := range ips[1:] {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			if errors.Is(err, syscall.EADDRINUSE) {
				return nil, err
			}
			return nil, fmt.Errorf("listen %s:%d: %w", ip, port, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func mustLoopback(t testing.TB, ip string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is4() || a.As4()[0] != 127 {
		t.Fatalf("testmx: %q is not an IPv4 loopback address (127.0.0.0/8): test servers never bind anything else", ip)
	}
	return a
}

// connTracker wraps a listener so a test can see how many connections it
// accepted and how many are still open: a client that leaks connections
// leaves Open above zero.
type connTracker struct {
	net.Listener
	mu       sync.Mutex
	accepted int
	peak     int // most connections open at once
	open     map[*trackedConn]struct{}
}

func newConnTracker(ln net.Listener) *connTracker {
	return &connTracker{Listener: ln, open: make(map[*trackedConn]struct{})}
}

func (l *connTracker) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	l.accepted++
	l.open[tc] = struct{}{}
	l.peak = max(l.peak, len(l.open))
	l.mu.Unlock()
	return tc, nil
}

func (l *connTracker) counts() (accepted, open int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.accepted, len(l.open)
}

// closeAll closes every connection still open, for test cleanup.
func (l *connTracker) closeAll() {
	l.mu.Lock()
	conns := make([]*trackedConn, 0, len(l.open))
	for c := range l.open {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

type trackedConn struct {
	net.Conn
	l    *connTracker
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.open, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
