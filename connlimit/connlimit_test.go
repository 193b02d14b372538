package connlimit

import (
	"net/netip"
	"testing"
)

func TestPerClient(t *testing.T) {
	p := NewPerClient(2)
	a1, a2 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2") // one /64
	b := netip.MustParseAddr("192.0.2.7")
	steps := []struct {
		ip   netip.Addr
		want bool
	}{{a1, true}, {a2, true}, {a1, false}, {b, true}, {netip.MustParseAddr("::ffff:192.0.2.7"), true}, {b, false}, {netip.Addr{}, true}}
	for i, s := range steps {
		if got := p.Admit(s.ip); got != s.want {
			t.Errorf("step %d: Admit(%v) = %v, want %v", i, s.ip, got, s.want)
		}
	}
	p.Release(a1)
	if !p.Admit(a2) {
		t.Error("a released slot was not given again")
	}
	for _, ip := range []netip.Addr{a1, a2, b, b} {
		p.Release(ip)
	}
	if n := p.Clients(); n != 0 {
		t.Errorf("%d clients left after every release", n)
	}
}

func TestClientKey(t *testing.T) {
	for in, want := range map[string]string{"192.0.2.7": "192.0.2.7/32", "::ffff:192.0.2.7": "192.0.2.7/32",
		"2001:db8:1:2:3::4": "2001:db8:1:2::/64"} {
		if got := ClientKey(netip.MustParseAddr(in)).String(); got != want {
			t.Errorf("ClientKey(%s) = %s, want %s", in, got, want)
		}
	}
	if ClientKey(netip.Addr{}).IsValid() {
		t.Error("the zero address has a key")
	}
}
