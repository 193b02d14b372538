// Package netguard keeps Mailferry from connecting to addresses that are not
// public: loopback, private, link-local, unspecified and the ranges that
// embed them. Anyone who can send mail chooses the recipient domain, and so
// the DNS that decides where we connect; without this check a zone pointing
// MX at 127.0.0.1 or 10.0.0.5 turns the relay into a port scanner of its own
// network (README.md, Delivery). Webhooks and MTA-STS policy fetches
// dial through it too.
package netguard

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
)

// ErrPrivateAddress is wrapped by the error for a single address the guard
// refused.
var ErrPrivateAddress = errors.New("destination address is not public")

// Check returns nil for a public unicast address and otherwise an error
// wrapping ErrPrivateAddress that names the range and its RFC.
func Check(a netip.Addr) error {
	if r := Reason(a); r != "" {
		return fmt.Errorf("%w: %s is %s", ErrPrivateAddress, a, r)
	}
	return nil
}

// Reason says why a must not be dialled, or "" if it may be.
func Reason(a netip.Addr) string {
	if !a.IsValid() {
		return "not a valid address"
	}
	a = a.WithZone("")
	if a.Is4In6() {
		// ::ffff:0:0/96 (RFC 4291 2.5.5.2): the kernel dials the IPv4 address.
		if r := blocked4(a.Unmap().As4()); r != "" {
			return "IPv4-mapped " + r
		}
		return ""
	}
	if a.Is4() {
		return blocked4(a.As4())
	}
	b := a.As16()
	switch {
	case a.IsUnspecified():
		return "unspecified (RFC 4291 2.5.2)"
	case a.IsLoopback():
		return "loopback (RFC 4291 2.5.3)"
	case isZero(b[:12]):
		// ::/96 minus the two above: deprecated IPv4-compatible addresses.
		return "IPv4-compatible, deprecated (RFC 4291 2.5.5.1)"
	case a.IsMulticast():
		return "multicast (RFC 4291 2.7)"
	case a.IsLinkLocalUnicast():
		return "link-local (RFC 4291 2.5.6)"
	case b[0] == 0xfe && b[1]&0xc0 == 0xc0:
		return "site-local, deprecated (RFC 3879)"
	case a.IsPrivate():
		return "unique local (RFC 4193)"
	case b[0] == 0x01 && isZero(b[1:8]):
		return "discard-only (RFC 6666)"
	case b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && isZero(b[4:12]):
		// 64:ff9b::/96, the NAT64 well-known prefix (RFC 6052 2.1): a
		// translator would dial the embedded IPv4 address.
		if r := blocked4([4]byte(b[12:16])); r != "" {
			return "NAT64-embedded " + r
		}
	case b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && b[4] == 0x00 && b[5] == 0x01:
		return "local-use NAT64 (RFC 8215)"
	case b[0] == 0x20 && b[1] == 0x02:
		// 2002::/16 6to4 (RFC 3056 2): bits 16–47 are the relay's IPv4.
		if r := blocked4([4]byte(b[2:6])); r != "" {
			return "6to4-embedded " + r
		}
	case b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x00 && b[3] == 0x00:
		// 2001::/32 Teredo (RFC 4380 4): the last 32 bits are the client's
		// IPv4 address, inverted.
		v := [4]byte{^b[12], ^b[13], ^b[14], ^b[15]}
		if r := blocked4(v); r != "" {
			return "Teredo-embedded " + r
		}
	}
	return ""
}

func blocked4(v [4]byte) string {
	switch {
	case v[0] == 0:
		return "\"this network\" 0.0.0.0/8, unspecified included (RFC 1122 3.2.1.3)"
	case v[0] == 10, v[0] == 172 && v[1]&0xf0 == 16, v[0] == 192 && v[1] == 168:
		return "private (RFC 1918)"
	case v[0] == 100 && v[1]&0xc0 == 64:
		return "shared CGNAT space 100.64.0.0/10 (RFC 6598)"
	case v[0] == 127:
		return "loopback (RFC 1122 3.2.1.3)"
	case v[0] == 169 && v[1] == 254:
		return "link-local (RFC 3927)"
	case v[0] == 198 && v[1]&0xfe == 18:
		return "benchmarking 198.18.0.0/15 (RFC 2544)"
	case v[0] >= 224 && v[0] < 240:
		return "multicast (RFC 5771)"
	case v[0] >= 240:
		return "reserved 240.0.0.0/4, broadcast included (RFC 1112 4, RFC 919 7)"
	}
	return ""
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// Control is a net.Dialer ControlContext: it runs after the name has
// become a socket address and before connect(2), so it checks the address
// actually dialled whatever path led there (defence in depth behind any
// filtering done before).
func Control(_ context.Context, network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("guard: %s address %q: %w", network, address, err)
	}
	return Check(ap.Addr())
}
