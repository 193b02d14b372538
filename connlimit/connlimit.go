// Package connlimit counts open connections per client, for the SMTP
// listeners (submission and inbound): one client must not take every
// slot. A client is an IPv4 address or an IPv6 /64, the block one host is
// usually given, so that hopping addresses within it gains nothing.
package connlimit

import (
	"net"
	"net/netip"
	"sync"
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
