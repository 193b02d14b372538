package smtpclient

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/wait"
)

// TestConnectionReuse checks that messages to one host share a connection
// while it stays usable, and never share one that is not.
func TestConnectionReuse(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reuse Reuse
		// between runs after each delivery but the last.
		between func(srv *testmx.SMTP, c *Client)
		script  func(srv *testmx.SMTP)
		sends   int
		// conns is how many connections the server sees for sends
		// messages; want is each delivery's status.
		conns int
		want  []string
	}{
		{
			name: "one connection for many messages", sends: 5, conns: 1,
			want: []string{"delivered 250 2.0.0", "delivered 250 2.0.0", "delivered 250 2.0.0", "delivered 250 2.0.0", "delivered 250 2.0.0"},
		},
		{
			name: "reuse disabled", reuse: Reuse{Disabled: true}, sends: 3, conns: 3,
			want: []string{"delivered 250 2.0.0", "delivered 250 2.0.0", "delivered 250 2.0.0"},
		},
		{
			name: "a cap of messages per connection", reuse: Reuse{MaxMessages: 2}, sends: 5, conns: 3,
			want: []string{"delivered 250 2.0.0", "delivered 250 2.0.0", "delivered 250 2.0.0", "delivered 250 2.0.0", "delivered 250 2.0.0"},
		},
		{
			// The shaping file's max_messages_per_connection, per MX host.
			name: "a cap per host", reuse: Reuse{MaxMessages: 100, MaxMessagesFor: func(string) int { return 2 }}, sends: 5, conns: 3,
			want: []string{"delivered 250 2.0.0", "delivered 250 2.0.0", "delivered 250 2.0.0", "delivered 250 2.0.0", "delivered 250 2.0.0"},
		},
		{
			// RFC 5321 4.5.3.2.7: a server may close an idle session;
			// the next message must not fail for it.
			name: "server closed the idle connection", sends: 3, conns: 3,
			between: func(srv *testmx.SMTP, c *Client) {
				srv.DropConnections()
				waitOpen(t, srv, 0)
			},
			want: []string{"delivered 250 2.0.0", "delivered 250 2.0.0", "delivered 250 2.0.0"},
		},
		{
			name: "idle past its time is closed, not reused", reuse: Reuse{Idle: time.Minute}, sends: 2, conns: 2,
			between: func(srv *testmx.SMTP, c *Client) {
				c.pool.now = func() time.Time { return time.Now().Add(2 * time.Minute) }
				c.SweepIdle()
				waitOpen(t, srv, 0)
				c.pool.now = time.Now
			},
			want: []string{"delivered 250 2.0.0", "delivered 250 2.0.0"},
		},
		{
			// A recipient refusal leaves the session usable: RSET clears
			// the transaction before the next one.
			name: "after a refused recipient", sends: 2, conns: 1,
			script: func(srv *testmx.SMTP) { srv.OnRcpt("bob@example.net", "550 5.1.1 no such user") },
			want:   []string{"bounced 550 5.1.1", "delivered 250 2.0.0"},
		},
		{
			name: "after a 5xx to the data", sends: 2, conns: 1,
			script: func(srv *testmx.SMTP) { srv.OnData("554 5.7.1 rejected") },
			want:   []string{"bounced 554 5.7.1", "delivered 250 2.0.0"},
		},
		{
			// 421 closes the session (RFC 5321 3.8): it must not be pooled.
			name: "never after a 421", sends: 2, conns: 2,
			script: func(srv *testmx.SMTP) { srv.OnData("421 4.3.2 shutting down") },
			want:   []string{"deferred 421 4.3.2", "delivered 250 2.0.0"},
		},
		{
			name: "never after a dropped connection", sends: 2, conns: 2,
			script: func(srv *testmx.SMTP) { srv.OnData(testmx.Drop) },
			want:   []string{"deferred 0 4.4.2", "delivered 250 2.0.0"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, lns := testmx.Listen(t, "127.0.0.2")
			srv := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
			if tc.script != nil {
				tc.script(srv)
			}
			c := newClient(t, port, func(o *Options) { o.Reuse = tc.reuse })
			hosts := []Host{host("mx1.example.net", "127.0.0.2")}
			var got []string
			for i := range tc.sends {
				a := c.Deliver(context.Background(), hosts, envelope("bob@example.net"))
				got = append(got, statuses(a)...)
				if a.TLS == nil || a.Host != "mx1.example.net" {
					t.Errorf("delivery %d: TLS %+v host %q, want TLS on mx1", i, a.TLS, a.Host)
				}
				if tc.between != nil && i < tc.sends-1 {
					tc.between(srv, c)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("statuses %q, want %q", got, tc.want)
			}
			if accepted, _ := srv.Connections(); accepted != tc.conns {
				t.Errorf("server accepted %d connections, want %d", accepted, tc.conns)
			}
			waitClosed(t, c, srv.Connections)
		})
	}
}

// TestReuseIsPerHost checks that a connection to one MX host never carries
// mail routed to another, even at the same address: the TLS name and the
// recorded host differ.
func TestReuseIsPerHost(t *testing.T) {
	port, lns := testmx.Listen(t, "127.0.0.2")
	srv := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
	c := newClient(t, port, nil)
	for _, name := range []string{"mx1.example.net", "mx2.example.org", "mx1.example.net"} {
		a := c.Deliver(context.Background(), []Host{host(name, "127.0.0.2")}, envelope("bob@example.net"))
		if got := statuses(a); !slices.Equal(got, []string{"delivered 250 2.0.0"}) || a.Host != name {
			t.Fatalf("to %s: %v on %q", name, got, a.Host)
		}
	}
	if accepted, _ := srv.Connections(); accepted != 2 {
		t.Errorf("server accepted %d connections, want 2 (one per host name)", accepted)
	}
	if n := len(srv.Messages()); n != 3 {
		t.Errorf("server got %d messages, want 3", n)
	}
	waitClosed(t, c, srv.Connections)
}

// TestReuseCancelled checks that a delivery whose context ends does not
// leave its connection for the next message.
func TestReuseCancelled(t *testing.T) {
	port, lns := testmx.Listen(t, "127.0.0.2")
	srv := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{DataDelay: 2 * time.Second})
	c := newClient(t, port, nil)
	hosts := []Host{host("mx1.example.net", "127.0.0.2")}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	a := c.Deliver(ctx, hosts, envelope("bob@example.net"))
	if got := statuses(a); len(got) != 1 || got[0][:8] != "deferred" {
		t.Fatalf("cancelled delivery: %v, want deferred", got)
	}
	if n := c.pool.idleCount(); n != 0 {
		t.Errorf("%d connections kept after a cancelled transaction, want 0", n)
	}
	waitClosed(t, c, srv.Connections)
}

func waitOpen(t *testing.T, srv *testmx.SMTP, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, open := srv.Connections(); open == want {
			return
		}
		if time.Now().After(deadline) {
			_, open := srv.Connections()
			t.Fatalf("server has %d connections open, want %d", open, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTrimIdle checks that TrimIdle closes idle connections to the named
// hosts, longest idle first, down to the count asked, and leaves other
// hosts' connections alone: relay holds a destination's connections to its
// leases with it.
func TestTrimIdle(t *testing.T) {
	names := []string{"mx1.example.net", "mx2.example.net", "mx3.example.net"}
	for _, tc := range []struct {
		name  string
		hosts []string
		keep  int
		open  int    // connections left open
		kept  string // a host whose connection must still be reused; "" for none
	}{
		{name: "under the count", hosts: names, keep: 3, open: 3, kept: "mx1.example.net"},
		{name: "down to one, the newest", hosts: names, keep: 1, open: 1, kept: "mx3.example.net"},
		{name: "down to none", hosts: names, keep: 0, open: 0},
		{name: "only the named hosts", hosts: names[:1], keep: 0, open: 2, kept: "mx2.example.net"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, lns := testmx.Listen(t, "127.0.0.2")
			srv := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
			c := newClient(t, port, nil)
			for _, name := range names {
				if got := statuses(c.Deliver(context.Background(), []Host{host(name, "127.0.0.2")}, envelope("bob@example.net"))); !slices.Equal(got, []string{"delivered 250 2.0.0"}) {
					t.Fatalf("to %s: %v", name, got)
				}
			}
			c.TrimIdle(tc.hosts, tc.keep)
			waitOpen(t, srv, tc.open)
			if tc.kept != "" {
				c.Deliver(context.Background(), []Host{host(tc.kept, "127.0.0.2")}, envelope("bob@example.net"))
				if accepted, _ := srv.Connections(); accepted != len(names) {
					t.Errorf("server accepted %d connections, want %d: %s's was not kept", accepted, len(names), tc.kept)
				}
			}
			waitClosed(t, c, srv.Connections)
		})
	}
}

// TestQuitAwaitsServerClose: a connection closed with QUIT ends on the
// server's side first (RFC 5321 4.1.1.10: it closes after its 221), so a
// receiver counting its sessions never sees one outlive the lease it was
// opened under while the next connection comes in. A server that never
// closes costs at most closeWait.
func TestQuitAwaitsServerClose(t *testing.T) {
	for _, tc := range []struct {
		name string
		// afterBye runs after the peer's 221; it reports whether the
		// client hung up first.
		afterBye    func(c *testmx.PeerConn) bool
		serverFirst bool // the server's close ends the connection
	}{
		{name: "server closes", serverFirst: true, afterBye: func(c *testmx.PeerConn) bool {
			// A client that hangs up first is seen as EOF here; one that
			// waits leaves the read to time out, and the peer closes.
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			_, err := c.ReadLine()
			var ne net.Error
			return !errors.As(err, &ne) || !ne.Timeout()
		}},
		{name: "server never closes", afterBye: func(c *testmx.PeerConn) bool {
			c.Hold()
			return true
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clientFirst := make(chan bool, 1)
			port, lns := testmx.Listen(t, "127.0.0.2")
			peer := testmx.RunPeer(t, lns[0], dialog("QUIT", func(c *testmx.PeerConn) {
				c.Send("221 2.0.0 bye")
				clientFirst <- tc.afterBye(c)
			}))
			c := newClient(t, port, nil)
			h := host("mx.example.net", "127.0.0.2")
			if got := statuses(c.Deliver(context.Background(), []Host{h}, envelope("bob@example.net"))); !slices.Equal(got, []string{"delivered 250 2.0.0"}) {
				t.Fatalf("deliver: %v", got)
			}
			trimmed := make(chan struct{})
			go func() { defer close(trimmed); c.TrimIdle([]string{h.Name}, 0) }()
			// Far below the peer's 30 s lifetime: a client waiting for a
			// close that never comes gives up after closeWait.
			wait.Within(t, 10*time.Second, "TrimIdle to return", func() bool {
				select {
				case <-trimmed:
					return true
				default:
					return false
				}
			})
			if first := <-clientFirst; tc.serverFirst && first {
				t.Error("the client closed the connection before the server did")
			}
			// Closed on the server's side before TrimIdle returned.
			if _, open := peer.Connections(); tc.serverFirst && open != 0 {
				t.Errorf("%d connections still open on the server after TrimIdle", open)
			}
			waitClosed(t, c, peer.Connections)
		})
	}
}

// TestDialAwaitsClosing: a delivery that finds its idle connection past
// its time dials a new one only after the old one's close has ended, so
// the receiver never holds both (relay counts connections per
// destination); a close stuck on a vanished server holds the dial at
// most closingWait.
func TestDialAwaitsClosing(t *testing.T) {
	for _, tc := range []struct {
		name    string
		quit    func(c *testmx.PeerConn) // the peer's answer to QUIT
		conns   int                      // connections accepted in all
		peakMax int
	}{
		// A slow 221: the old session is still open for 200 ms.
		{name: "slow close", quit: func(c *testmx.PeerConn) {
			time.Sleep(200 * time.Millisecond)
			c.Send("221 2.0.0 bye")
		}, conns: 2, peakMax: 1},
		// No answer at all: the dial goes ahead after closingWait.
		{name: "no answer to QUIT", quit: func(c *testmx.PeerConn) { c.Hold() }, conns: 2, peakMax: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, lns := testmx.Listen(t, "127.0.0.2")
			peer := testmx.RunPeer(t, lns[0], dialog("QUIT", tc.quit))
			c := newClient(t, port, func(o *Options) {
				// Past closingWait, within waitClosed's 5 s.
				o.Reuse = Reuse{Idle: time.Minute}
				o.Timeouts.Quit = 3 * time.Second
			})
			h := host("mx.example.net", "127.0.0.2")
			send := func() {
				t.Helper()
				if got := statuses(c.Deliver(context.Background(), []Host{h}, envelope("bob@example.net"))); !slices.Equal(got, []string{"delivered 250 2.0.0"}) {
					t.Fatalf("deliver: %v", got)
				}
			}
			send()
			c.pool.now = func() time.Time { return time.Now().Add(2 * time.Minute) }
			send()
			if accepted, _ := peer.Connections(); accepted != tc.conns {
				t.Errorf("peer accepted %d connections, want %d", accepted, tc.conns)
			}
			if peak := peer.PeakConnections(); peak > tc.peakMax {
				t.Errorf("peer saw %d connections at once, want at most %d", peak, tc.peakMax)
			}
			c.pool.now = time.Now
			waitClosed(t, c, peer.Connections)
		})
	}
}

// TestReuseAcrossPreferred checks that a delivery takes an idle connection
// to any host of the best preference before it dials, and that a dial
// closes an idle connection to the delivery's other hosts first, so one
// transaction never holds two connections.
func TestReuseAcrossPreferred(t *testing.T) {
	for _, tc := range []struct {
		name     string
		pref2    uint16 // mx2's preference; mx1's is 10
		host     string // the host that takes the message
		accepted int
	}{
		{name: "equal preference reuses", pref2: 10, host: "mx2.example.net", accepted: 1},
		{name: "a less preferred host's idle connection is closed for the dial", pref2: 20, host: "mx1.example.net", accepted: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, lns := testmx.Listen(t, "127.0.0.2")
			srv := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
			c := newClient(t, port, nil)
			mx1, mx2 := host("mx1.example.net", "127.0.0.2"), host("mx2.example.net", "127.0.0.2")
			mx1.Preference, mx2.Preference = 10, tc.pref2
			c.Deliver(context.Background(), []Host{mx2}, envelope("bob@example.net"))
			a := c.Deliver(context.Background(), []Host{mx1, mx2}, envelope("bob@example.net"))
			if got := statuses(a); !slices.Equal(got, []string{"delivered 250 2.0.0"}) || a.Host != tc.host {
				t.Fatalf("%v on %q, want delivered on %s", got, a.Host, tc.host)
			}
			if accepted, _ := srv.Connections(); accepted != tc.accepted {
				t.Errorf("server accepted %d connections, want %d", accepted, tc.accepted)
			}
			waitOpen(t, srv, 1)
			waitClosed(t, c, srv.Connections)
		})
	}
}
