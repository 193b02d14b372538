package smtpclient

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/testmx"
)

// dialog plays a minimal SMTP server until the command named by hangAt
// ("MAIL", "RCPT", "DATA", "." for the end of data), where it calls at
// instead of answering. hangAt "" completes the transaction.
func dialog(hangAt string, at func(c *testmx.PeerConn)) func(c *testmx.PeerConn) {
	return dialogExt(hangAt, "8BITMIME", at)
}

// dialogExt is dialog offering ext in the EHLO reply.
func dialogExt(hangAt, ext string, at func(c *testmx.PeerConn)) func(c *testmx.PeerConn) {
	return func(c *testmx.PeerConn) {
		c.Send("220 peer.test ESMTP")
		inData := false
		for {
			line, err := c.ReadLine()
			if err != nil {
				return
			}
			cmd := strings.ToUpper(strings.SplitN(line, " ", 2)[0])
			if inData {
				if line != "." {
					continue
				}
				inData, cmd = false, "."
			}
			if hangAt != "" && strings.HasPrefix(cmd, hangAt) {
				at(c)
				return
			}
			switch cmd {
			case "EHLO":
				c.Send("250-peer.test", "250 "+ext)
			case "DATA":
				c.Send("354 go ahead")
				inData = true
			case "QUIT":
				c.Send("221 bye")
				return
			default:
				c.Send("250 2.0.0 ok")
			}
		}
	}
}

// TestOddPeers: a server that misbehaves costs a deferral within the
// configured timeout — never a hang, a crash or unbounded memory.
func TestOddPeers(t *testing.T) {
	const step = 300 * time.Millisecond
	goroutines, heap := baseline()
	endless := func(prefix string) func(c *testmx.PeerConn) {
		return func(c *testmx.PeerConn) {
			line := prefix + strings.Repeat("x", 70)
			for range 200000 { // bounded: the client gives up long before
				if !c.Send(line) {
					return
				}
			}
		}
	}
	for _, tc := range []struct {
		name     string
		script   func(c *testmx.PeerConn)
		wantCode int
		wantErr  string // substring of the result's error
		hosted   bool   // the transaction had started on this host
	}{
		{name: "bad greeting", script: func(c *testmx.PeerConn) { c.Send("HELLO there"); c.Hold() }, wantErr: "greeting"},
		{name: "4-digit code", script: func(c *testmx.PeerConn) { c.Send("2200 peer.test ESMTP"); c.Hold() }, wantErr: "2200"},
		{name: "code out of range", script: func(c *testmx.PeerConn) { c.Send("700 peer.test"); c.Hold() }, wantErr: `"700 peer.test"`},
		{name: "421 greeting", script: func(c *testmx.PeerConn) { c.Send("421 4.3.2 busy") }, wantCode: 421},
		{name: "554 greeting", script: func(c *testmx.PeerConn) { c.Send("554 5.7.1 go away"); c.Hold() }, wantCode: 554},
		{name: "endless multi-line greeting", script: endless("220-"), wantErr: "reply longer than"},
		{name: "endless multi-line EHLO reply", script: func(c *testmx.PeerConn) {
			c.Send("220 peer.test")
			c.ReadLine()
			endless("250-")(c)
		}, wantErr: "reply longer than"},
		{name: "over-long reply line", script: func(c *testmx.PeerConn) { c.Send("220 " + strings.Repeat("x", 5000)); c.Hold() }, wantErr: "longer than 2000 bytes"},
		// RFC 5321 4.2.1: every line of a reply has the same code.
		{name: "code changes within a reply", script: func(c *testmx.PeerConn) { c.Send("220-peer.test", "250 oops"); c.Hold() }, wantErr: "reply code changed"},
		{name: "tarpit before the greeting", script: func(c *testmx.PeerConn) { c.Hold() }, wantErr: "timeout"},
		{name: "tarpit at MAIL", script: dialog("MAIL", (*testmx.PeerConn).Hold), wantErr: "timeout"},
		{name: "garbled reply to MAIL", script: dialog("MAIL", func(c *testmx.PeerConn) { c.Send("25O ok"); c.Hold() }), wantErr: "MAIL"},
		{name: "tarpit at RCPT", script: dialog("RCPT", (*testmx.PeerConn).Hold), wantErr: "timeout", hosted: true},
		{name: "tarpit at DATA", script: dialog("DATA", (*testmx.PeerConn).Hold), wantErr: "timeout", hosted: true},
		{name: "tarpit after the final dot", script: dialog(".", (*testmx.PeerConn).Hold), wantErr: "timeout", hosted: true},
		{name: "hang up after the final dot", script: dialog(".", func(*testmx.PeerConn) {}), wantErr: "end of DATA", hosted: true},
		// The same with PIPELINING: replies read in order, each within its
		// own timeout.
		{name: "pipelined: tarpit at RCPT", script: dialogExt("RCPT", "PIPELINING", (*testmx.PeerConn).Hold), wantErr: "timeout", hosted: true},
		{name: "pipelined: 421 at MAIL", script: dialogExt("MAIL", "PIPELINING", func(c *testmx.PeerConn) { c.Send("421 4.3.2 bye") }), wantCode: 421},
		{name: "pipelined: hang up at DATA", script: dialogExt("DATA", "PIPELINING", func(*testmx.PeerConn) {}), wantErr: "DATA", hosted: true},
		{name: "pipelined: tarpit after the final dot", script: dialogExt(".", "PIPELINING", (*testmx.PeerConn).Hold), wantErr: "timeout", hosted: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, lns := testmx.Listen(t, "127.0.0.2")
			peer := testmx.RunPeer(t, lns[0], tc.script)
			c := newClient(t, port, func(o *Options) {
				o.Timeouts = Timeouts{Connect: step, Greeting: step, Hello: step, TLS: step, Mail: step,
					Rcpt: step, DataInit: step, DataBlock: step, DataEnd: step, Quit: step}
			})
			start := time.Now()
			a := c.Deliver(context.Background(), []Host{host("mx1.example.net", "127.0.0.2")}, envelope("bob@example.net"))
			// Each step may take its timeout once, plus QUIT.
			if elapsed := time.Since(start); elapsed > 8*step {
				t.Errorf("Deliver took %v, timeouts are %v per step", elapsed, step)
			}
			r := a.Results[0]
			t.Logf("%s %d %s: %v (in %v)", verdict(r), r.Code, r.Enhanced, r.Err, time.Since(start).Round(time.Millisecond))
			if verdict(r) != deferred || r.Err == nil {
				t.Fatalf("result %+v, want deferred with an error", r)
			}
			if r.Code != tc.wantCode { // 0 unless a well-formed reply said otherwise
				t.Errorf("code %d, want %d", r.Code, tc.wantCode)
			}
			if !strings.Contains(r.Err.Error(), tc.wantErr) {
				t.Errorf("error %q does not mention %q", r.Err, tc.wantErr)
			}
			if (a.Host != "") != tc.hosted {
				t.Errorf("attempt host %q; transaction started: %v", a.Host, tc.hosted)
			}
			waitClosed(t, c, peer.Connections)
		})
	}
	// Hostile peers leave nothing behind: goroutines and live heap return
	// to where they were (an endless reply must not have been buffered).
	deadline := time.Now().Add(5 * time.Second)
	for {
		g, h := baseline()
		if g <= goroutines && h <= heap+4<<20 {
			t.Logf("after the hostile peers: goroutines %d (baseline %d), heap %d KiB (baseline %d KiB)", g, goroutines, h>>10, heap>>10)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines %d (baseline %d), heap %d KiB (baseline %d KiB)", g, goroutines, h>>10, heap>>10)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// baseline is the goroutine count and the live heap after a collection.
func baseline() (int, uint64) {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return runtime.NumGoroutine(), m.HeapAlloc
}

// TestDeliverCancel: cancelling the context stops a session stuck on a
// tarpit at once, whatever the per-command timeout, and says why.
func TestDeliverCancel(t *testing.T) {
	for _, hangAt := range []string{"greeting", "RCPT", "."} {
		t.Run(hangAt, func(t *testing.T) {
			port, lns := testmx.Listen(t, "127.0.0.2")
			script := dialog(hangAt, (*testmx.PeerConn).Hold)
			if hangAt == "greeting" {
				script = (*testmx.PeerConn).Hold
			}
			peer := testmx.RunPeer(t, lns[0], script)
			c := newClient(t, port, func(o *Options) { o.Timeouts = Timeouts{} }) // RFC defaults: minutes
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(200*time.Millisecond, cancel)
			start := time.Now()
			a := c.Deliver(ctx, []Host{host("mx1.example.net", "127.0.0.2", "127.0.0.3")}, envelope("bob@example.net"))
			if elapsed := time.Since(start); elapsed > 3*time.Second {
				t.Errorf("Deliver returned %v after cancel", elapsed)
			}
			r := a.Results[0]
			if verdict(r) != deferred || !errors.Is(r.Err, context.Canceled) {
				t.Errorf("result %+v, want deferred by context.Canceled", r)
			}
			waitClosed(t, c, peer.Connections)
		})
	}
}
