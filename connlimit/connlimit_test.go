package connlimit

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
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

func TestGate(t *testing.T) {
	g := NewGate(3, 2)
	a, b, c := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("127.0.0.4")
	steps := []struct {
		ip   netip.Addr
		want Refusal
	}{{a, Admitted}, {a, Admitted}, {a, ClientLimit}, {b, Admitted}, {c, ListenerLimit}, {b, ListenerLimit}}
	for i, s := range steps {
		if got := g.Admit(s.ip); got != s.want {
			t.Errorf("step %d: Admit(%v) = %v, want %v", i, s.ip, got, s.want)
		}
	}
	// A refusal over the listener limit counts nothing for its client.
	if n := g.Clients(); n != 2 {
		t.Errorf("%d clients counted, want 2", n)
	}
	g.Release(a)
	if got := g.Admit(c); got != Admitted {
		t.Errorf("after a release, Admit(%v) = %v, want Admitted", c, got)
	}
}

// Refuse says its line on a real connection and closes it.
func TestGateRefuse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	g := NewGate(1, 1)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	const line = "421 4.4.5 mx.example too many connections\r\n"
	g.Refuse(server, 5*time.Second, nil, line)
	got, err := io.ReadAll(client)
	if err != nil {
		t.Fatalf("reading the refusal: %v", err)
	}
	if string(got) != line {
		t.Errorf("client read %q, want %q and EOF", got, line)
	}
	g.Wait()
}
