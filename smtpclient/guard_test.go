package smtpclient

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/netguard"
)

// guarded are addresses of every range netguard refuses.
var guarded = []string{
	"127.0.0.1", "::1", "::ffff:127.0.0.1", "0.0.0.0", "10.1.2.3", "172.16.0.1", "192.168.1.1",
	"169.254.1.1", "fe80::1", "100.64.0.1", "64:ff9b::7f00:1", "127.8.9.10", "0.1.2.3",
	"169.254.169.254", "100.127.255.254", "172.31.255.254", "198.18.0.1", "224.0.0.1",
	"255.255.255.255", "240.0.0.1", "::", "::127.0.0.1", "::ffff:0.0.0.0", "::ffff:10.0.0.1",
	"::ffff:169.254.169.254", "::ffff:100.64.0.1", "fd00::1", "fec0::1", "ff02::1",
	"2002:7f00:1::1", "2002:c0a8:101::1", "2001:0:1:2::3f57:fefe", "64:ff9b::a9fe:a9fe", "64:ff9b:1::1",
}

// TestGuardDeliver: handed private addresses directly, the Client refuses
// them without ever calling its dialler, and says so with ErrPrivateOnly.
func TestGuardDeliver(t *testing.T) {
	var dials atomic.Int32
	c := newClient(t, 25, func(o *Options) {
		o.AllowPrivate = false
		o.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return nil, errors.New("test: the dialler must not be called")
		}
	})
	a := c.Deliver(context.Background(), []Host{host("mx1.example.net", guarded...)}, envelope("bob@example.net", "carol@example.net"))
	for i, r := range a.Results {
		if verdict(r) != bounced || r.Enhanced != "5.4.4" || !errors.Is(r.Err, ErrPrivateOnly) || !errors.Is(r.Err, netguard.ErrPrivateAddress) {
			t.Errorf("recipient %d: %s %s %v, want bounced 5.4.4 with ErrPrivateOnly", i, verdict(r), r.Enhanced, r.Err)
		}
	}
	if len(a.Tried) != len(guarded) {
		t.Errorf("Tried has %d entries, want one per address (%d)", len(a.Tried), len(guarded))
	}
	if n := dials.Load(); n != 0 {
		t.Errorf("dialler called %d times", n)
	}
}

// TestGuardDialer: the Client's own dialler applies netguard before
// connect(2), so even an address that slipped past the pre-dial check is
// never reached; the SMTP server on 127.0.0.1 sees nothing.
func TestGuardDialer(t *testing.T) {
	port, lns := testmx.Listen(t, "127.0.0.1")
	srv := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
	c := newClient(t, port, func(o *Options) { o.AllowPrivate = false })
	conn, err := c.dial(context.Background(), "tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)).String())
	if err == nil {
		conn.Close()
	}
	if !errors.Is(err, netguard.ErrPrivateAddress) {
		t.Errorf("Client dialler = %v, want ErrPrivateAddress", err)
	}
	a := c.Deliver(context.Background(), []Host{host("mx.example.net", "127.0.0.1", "::ffff:127.0.0.1", "0.0.0.0")}, envelope("bob@example.net"))
	if got := statuses(a); len(got) != 1 || got[0] != "bounced 0 5.4.4" || !errors.Is(a.Results[0].Err, ErrPrivateOnly) {
		t.Errorf("Deliver to loopback with the guard on: %v (%v)", got, a.Results[0].Err)
	}
	if accepted, _ := srv.Connections(); accepted != 0 {
		t.Errorf("the server on 127.0.0.1:%d saw %d connections; want none", port, accepted)
	}
}
