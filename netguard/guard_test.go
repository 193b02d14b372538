package netguard

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestReason(t *testing.T) {
	blocked := []string{
		"127.0.0.1", "127.255.255.254", "::1", "::ffff:127.0.0.1", "0.0.0.0", "0.1.2.3", "::",
		"10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.1.1", "fe80::1",
		"fe80::1%eth0", "fec0::1", "fc00::1", "fd12:3456::1", "100.64.0.1", "100.127.255.255",
		"224.0.0.1", "239.255.255.250", "255.255.255.255", "240.0.0.1", "ff02::1", "198.18.0.1",
		"::ffff:10.0.0.1", "::ffff:0.0.0.0", "::127.0.0.1", "64:ff9b::7f00:1", "64:ff9b::a00:1",
		"64:ff9b:1::1", "2002:7f00:1::1", "2002:c0a8:101::1", "2001:0:1:2::80ff:fffe", "100::1",
		"169.254.169.254", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2001:0:1:2::3f57:fefe",
	}
	public := []string{
		"192.0.2.1", "8.8.8.8", "172.32.0.1", "100.128.0.1", "169.255.0.1", "11.0.0.1",
		"2001:db8::1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
		"2001:0:1:2::f7f7:f7f7",
	}
	for _, s := range blocked {
		a := netip.MustParseAddr(s)
		if r := Reason(a); r == "" {
			t.Errorf("%s: allowed, want blocked", s)
		} else if !strings.Contains(r, "RFC") {
			t.Errorf("%s: reason %q cites no RFC", s, r)
		}
		if err := Check(a); !errors.Is(err, ErrPrivateAddress) {
			t.Errorf("Check(%s) = %v, want ErrPrivateAddress", s, err)
		}
	}
	for _, s := range public {
		if r := Reason(netip.MustParseAddr(s)); r != "" {
			t.Errorf("%s: blocked as %s, want allowed", s, r)
		}
		if err := Check(netip.MustParseAddr(s)); err != nil {
			t.Errorf("Check(%s) = %v", s, err)
		}
	}
	if Reason(netip.Addr{}) == "" {
		t.Error("the zero Addr is allowed")
	}
}

// TestControl: as a dialler's ControlContext the guard refuses a private
// socket address before connect(2), so the listener never sees it.
func TestControl(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if c, err := ln.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	d := &net.Dialer{ControlContext: Control, Timeout: time.Second}
	_, err = d.DialContext(context.Background(), "tcp", ln.Addr().String())
	if !errors.Is(err, ErrPrivateAddress) {
		t.Fatalf("dial = %v, want ErrPrivateAddress", err)
	}
	ln.Close() // ends Accept; a connection made before it shows below
	<-done
	select {
	case <-accepted:
		t.Error("listener accepted a connection")
	default:
	}
}
