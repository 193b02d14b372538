// Package connlimit counts open connections per client, for the SMTP
// listeners (submission and inbound): one client must not take every
// slot. A client is an IPv4 address or an IPv6 /64, the block one host is
// usually given, so that hopping addresses within it gains nothing.
package connlimit

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// ClientKey is the client an address belongs to; the zero Prefix for the
// zero Addr (a connection without an IP address).
func ClientKey(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return netip.Prefix{}
	}
	return p
}

// AddrOf is a connection's client address, zero when it has none (not
// TCP).
func AddrOf(c net.Conn) netip.Addr {
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// PerClient counts open connections by client, up to a maximum each. It
// is safe for concurrent use.
type PerClient struct {
	max  int
	mu   sync.Mutex
	open map[netip.Prefix]int // no zero counts
}

// NewPerClient allows max open connections per client; max must be
// positive.
func NewPerClient(max int) *PerClient {
	if max <= 0 {
		panic("connlimit: max must be positive")
	}
	return &PerClient{max: max, open: make(map[netip.Prefix]int)}
}

// Admit counts a connection from ip and reports whether it is within the
// maximum; when it is not, nothing is counted. A connection without an IP
// address (not TCP) is always admitted and never counted.
func (p *PerClient) Admit(ip netip.Addr) bool {
	if !ip.IsValid() {
		return true
	}
	key := ClientKey(ip)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.open[key] >= p.max {
		return false
	}
	p.open[key]++
	return true
}

// Release uncounts a connection Admit counted.
func (p *PerClient) Release(ip netip.Addr) {
	if !ip.IsValid() {
		return
	}
	key := ClientKey(ip)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.open[key]--; p.open[key] <= 0 {
		delete(p.open, key) // the map holds open connections only
	}
}

// Clients is how many clients have connections open.
func (p *PerClient) Clients() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.open)
}

// Refusal is why a Gate turned a connection away.
type Refusal int

const (
	Admitted      Refusal = iota
	ClientLimit           // the client has its maximum open
	ListenerLimit         // the listener has its maximum open
)

// Gate holds a listener to a maximum of open connections, and each client
// to its own maximum, and says 421 to those over either in the background
// so that accepting goes on. It is safe for concurrent use.
type Gate struct {
	slots    chan struct{} // one per open connection
	perIP    *PerClient
	refusers chan struct{} // goroutines saying 421; under a flood we just close
	bg       sync.WaitGroup
}

// NewGate allows max open connections in all and perClient from one client;
// both must be positive.
func NewGate(max, perClient int) *Gate {
	if max <= 0 {
		panic("connlimit: max must be positive")
	}
	return &Gate{slots: make(chan struct{}, max), perIP: NewPerClient(perClient), refusers: make(chan struct{}, 16)}
}

// Admit counts a connection from ip, or says which limit it is over and
// counts nothing. An admitted connection is given back with Release.
func (g *Gate) Admit(ip netip.Addr) Refusal {
	if !g.perIP.Admit(ip) {
		return ClientLimit
	}
	select {
	case g.slots <- struct{}{}:
		return Admitted
	default:
		g.perIP.Release(ip)
		return ListenerLimit
	}
}

// Release gives back what Admit counted for ip.
func (g *Gate) Release(ip netip.Addr) {
	g.perIP.Release(ip)
	<-g.slots
}

// Refuse writes line (RFC 5321 3.1: a 421 greeting) to c and closes it, in
// the background, everything within timeout so that a peer that does not
// read cannot hold a refuser. wrap, when set, comes first (a TLS handshake
// on an implicit-TLS port); when it fails c is just closed. When every
// refuser is busy c is closed at once.
func (g *Gate) Refuse(c net.Conn, timeout time.Duration, wrap func(net.Conn) (net.Conn, error), line string) {
	select {
	case g.refusers <- struct{}{}:
	default:
		c.Close()
		return
	}
	g.bg.Add(1)
	go func() {
		defer g.bg.Done()
		defer func() { <-g.refusers }()
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		w := c
		if wrap != nil {
			var err error
			if w, err = wrap(c); err != nil {
				return
			}
		}
		_, _ = io.WriteString(w, line)
	}()
}

// Wait waits for the refusals in progress, for a clean shutdown.
func (g *Gate) Wait() { g.bg.Wait() }

// Clients is how many clients have connections open.
func (g *Gate) Clients() int { return g.perIP.Clients() }
