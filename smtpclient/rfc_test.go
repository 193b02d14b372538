package smtpclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/testmx"
)

// TestRecipientsSplitAt100: RFC 5321 4.5.3.1.8 obliges a server to take
// only 100 recipients per transaction; 250 go as 100, 100 and 50 on one
// connection, in one attempt.
func TestRecipientsSplitAt100(t *testing.T) {
	port, lns := testmx.Listen(t, "127.0.0.2")
	srv := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
	var to []string
	for i := range 250 {
		to = append(to, fmt.Sprintf("r%d@example.net", i))
	}
	c := newClient(t, port, nil)
	a := c.Deliver(context.Background(), []Host{host("mx1.example.net", "127.0.0.2")}, envelope(to...))
	for i, r := range a.Results {
		if verdict(r) != delivered {
			t.Fatalf("rcpt %d: %s %d %v", i, verdict(r), r.Code, r.Err)
		}
	}
	if accepted, _ := srv.Connections(); accepted != 1 || a.Transactions != 3 {
		t.Errorf("%d connections, %d transactions; want 3 on one connection", accepted, a.Transactions)
	}
	msgs := srv.Messages()
	if len(msgs) != 3 {
		t.Errorf("server got %d transactions, want 3", len(msgs))
	}
	for _, m := range msgs {
		if len(m.To) > 100 {
			t.Errorf("transaction with %d recipients", len(m.To))
		}
	}
	waitClosed(t, c, srv.Connections)
}

// TestRcptMax: a server's LIMITS RCPTMAX (RFC 9422 4.2) caps each
// transaction before it has to refuse anyone; this one bounces whatever
// comes past its limit, so ignoring it would lose recipients.
func TestRcptMax(t *testing.T) {
	port, lns := testmx.Listen(t, "127.0.0.2")
	perTx := make(chan int, 10)
	peer := testmx.RunPeer(t, lns[0], func(c *testmx.PeerConn) {
		c.Send("220 peer.test ESMTP")
		n := 0
		for {
			line, err := c.ReadLine()
			if err != nil {
				return
			}
			switch strings.ToUpper(strings.SplitN(line, " ", 2)[0]) {
			case "EHLO":
				c.Send("250-peer.test", "250-PIPELINING", "250 LIMITS MAILMAX=5 RCPTMAX=2")
			case "MAIL", "RSET":
				n = 0
				c.Send("250 2.0.0 ok")
			case "RCPT":
				n++
				if n > 2 {
					c.Send("550 5.5.3 over the advertised RCPTMAX")
				} else {
					c.Send("250 2.1.5 ok")
				}
			case "DATA":
				c.Send("354 go ahead")
				for {
					if l, err := c.ReadLine(); err != nil || l == "." {
						break
					}
				}
				perTx <- n
				c.Send("250 2.0.0 queued")
			case "QUIT":
				c.Send("221 bye")
				return
			}
		}
	})
	c := newClient(t, port, nil)
	a := c.Deliver(context.Background(), []Host{host("mx1.example.net", "127.0.0.2")}, envelope("a@example.net", "b@example.net", "c@example.net", "d@example.net", "e@example.net"))
	for i, r := range a.Results {
		if verdict(r) != delivered {
			t.Errorf("rcpt %d: %s %d %v", i, verdict(r), r.Code, r.Err)
		}
	}
	if a.Transactions != 3 {
		t.Errorf("%d transactions, want 3 of at most 2 recipients", a.Transactions)
	}
	waitClosed(t, c, peer.Connections)
	close(perTx)
	for n := range perTx {
		if n > 2 {
			t.Errorf("a transaction with %d recipients", n)
		}
	}
	if accepted, _ := peer.Connections(); accepted != 1 {
		t.Errorf("%d connections, want 1", accepted)
	}
}

// TestCarryOver452: recipients refused with 452 "too many recipients" go
// at once in a new transaction on the same connection (RFC 5321
// 4.5.3.1.10), not to the retry schedule.
func TestCarryOver452(t *testing.T) {
	port, lns := testmx.Listen(t, "127.0.0.2")
	srv := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
	for _, r := range []string{"c", "d", "e"} {
		srv.OnRcpt(r+"@example.net", "452 4.5.3 too many recipients")
	}
	c := newClient(t, port, nil)
	a := c.Deliver(context.Background(), []Host{host("mx1.example.net", "127.0.0.2")}, envelope("a@example.net", "b@example.net", "c@example.net", "d@example.net", "e@example.net"))
	for i, r := range a.Results {
		if verdict(r) != delivered {
			t.Errorf("rcpt %d: %s %d %v", i, verdict(r), r.Code, r.Err)
		}
	}
	if n := len(srv.Messages()); n != 2 || a.Transactions != 2 {
		t.Errorf("server got %d messages in %d transactions, want 2", n, a.Transactions)
	}
	if accepted, _ := srv.Connections(); accepted != 1 {
		t.Errorf("%d connections, want the carry-over on the same one", accepted)
	}
	waitClosed(t, c, srv.Connections)
}

// Test8BitWithout8BITMIME: an 8-bit body never goes raw to a server that
// does not offer 8BITMIME (RFC 6152 3): its recipients bounce 5.6.3.
func Test8BitWithout8BITMIME(t *testing.T) {
	port, lns := testmx.Listen(t, "127.0.0.2")
	gotData := make(chan bool, 1)
	peer := testmx.RunPeer(t, lns[0], func(c *testmx.PeerConn) {
		c.Send("220 peer.test ESMTP")
		data := false
		defer func() { gotData <- data }()
		for {
			line, err := c.ReadLine()
			if err != nil {
				return
			}
			switch strings.ToUpper(strings.SplitN(line, " ", 2)[0]) {
			case "EHLO":
				c.Send("250-peer.test", "250 PIPELINING")
			case "DATA":
				data = true
				c.Send("354 go")
				for {
					l, err := c.ReadLine()
					if err != nil || l == "." {
						break
					}
				}
				c.Send("250 ok")
			case "QUIT":
				c.Send("221 bye")
				return
			default:
				c.Send("250 ok")
			}
		}
	})
	c := newClient(t, port, nil)
	env := envelope("bob@example.net")
	env.Body = bytesBody([]byte("Subject: x\r\n\r\nr\xc3\xa4ksm\xc3\xb6rg\xc3\xa5s\r\n"))
	env.Needs8Bit = true
	a := c.Deliver(context.Background(), []Host{host("mx1.example.net", "127.0.0.2")}, env)
	if r := a.Results[0]; verdict(r) != bounced || r.Enhanced != "5.6.3" {
		t.Errorf("result %s %s %v, want bounced 5.6.3", verdict(r), r.Enhanced, r.Err)
	}
	waitClosed(t, c, peer.Connections)
	if <-gotData {
		t.Error("8-bit body sent raw to a server without 8BITMIME")
	}
}

// TestPipeliningOneWrite: with PIPELINING offered, RCPT follows MAIL
// before MAIL is answered (RFC 2920 3.1). The peer waits up to a second
// for it; a client that waits for the reply never sends it.
func TestPipeliningOneWrite(t *testing.T) {
	port, lns := testmx.Listen(t, "127.0.0.2")
	pipelined := make(chan bool, 1)
	peer := testmx.RunPeer(t, lns[0], func(c *testmx.PeerConn) {
		c.Send("220 peer.test ESMTP")
		for {
			line, err := c.ReadLine()
			if err != nil {
				return
			}
			switch strings.ToUpper(strings.SplitN(line, " ", 2)[0]) {
			case "EHLO":
				c.Send("250-peer.test", "250 PIPELINING")
			case "MAIL":
				// Before answering MAIL: has RCPT come already?
				c.SetReadDeadline(time.Now().Add(time.Second))
				l, err := c.ReadLine()
				c.SetReadDeadline(time.Time{})
				pipelined <- err == nil && strings.HasPrefix(l, "RCPT")
				return
			default:
				c.Send("250 ok")
			}
		}
	})
	c := newClient(t, port, nil)
	c.Deliver(context.Background(), []Host{host("mx1.example.net", "127.0.0.2")}, envelope("bob@example.net"))
	if !<-pipelined {
		t.Error("RCPT did not follow MAIL before its reply: no PIPELINING")
	}
	waitClosed(t, c, peer.Connections)
}

// TestStartTLSInjection: a reply slipped in after the 220 to STARTTLS, or
// before STARTTLS was sent, is never taken for a reply: the EHLO over TLS
// reads the real answer, which offers SMTPUTF8, so the message goes out
// over TLS with SMTPUTF8 (RFC 3207 4.2).
func TestStartTLSInjection(t *testing.T) {
	for _, early := range []bool{false, true} {
		t.Run(fmt.Sprint("unsolicited before STARTTLS ", early), func(t *testing.T) {
			port, lns := testmx.Listen(t, "127.0.0.2")
			cert := testmx.SelfSigned(t, "mx1.example.net")
			mailLine := make(chan string, 1)
			peer := testmx.RunPeer(t, lns[0], func(c *testmx.PeerConn) {
				c.Send("220 peer.test ESMTP")
				c.ReadLine() // EHLO
				if early {
					c.Send("250-peer.test", "250 STARTTLS", "220 forged go-ahead")
				} else {
					c.Send("250-peer.test", "250 STARTTLS")
				}
				if l, _ := c.ReadLine(); l != "STARTTLS" {
					return
				}
				c.Send("220 go ahead", "250 injected")
				tc := tls.Server(c.Conn, &tls.Config{Certificates: []tls.Certificate{cert}})
				if tc.Handshake() != nil {
					return
				}
				r := bufio.NewReader(tc)
				send := func(s string) { tc.Write([]byte(s + "\r\n")) }
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					line = strings.TrimRight(line, "\r\n")
					switch strings.ToUpper(strings.SplitN(line, " ", 2)[0]) {
					case "EHLO":
						send("250-peer.test\r\n250 SMTPUTF8")
					case "MAIL":
						mailLine <- line
						send("250 ok")
					case "DATA":
						send("354 go")
						for {
							l, err := r.ReadString('\n')
							if err != nil || l == ".\r\n" {
								break
							}
						}
						send("250 ok")
					case "QUIT":
						send("221 bye")
						return
					default:
						send("250 ok")
					}
				}
			})
			c := newClient(t, port, nil)
			env := envelope("bob@example.net")
			env.NeedsUTF8 = true
			a := c.Deliver(context.Background(), []Host{host("mx1.example.net", "127.0.0.2")}, env)
			if r := a.Results[0]; verdict(r) != delivered || a.TLS == nil {
				t.Errorf("result %s %d %s %v TLS %v", verdict(r), r.Code, r.Enhanced, r.Err, a.TLS)
			}
			select {
			case l := <-mailLine:
				if !strings.Contains(l, "SMTPUTF8") {
					t.Errorf("MAIL %q", l)
				}
			default:
				t.Error("no MAIL over TLS")
			}
			waitClosed(t, c, peer.Connections)
		})
	}
}

// plainPeer is a well-behaved scripted server offering exts, without TLS.
func plainPeer(exts ...string) func(c *testmx.PeerConn) {
	return func(c *testmx.PeerConn) {
		c.Send("220 peer.test ESMTP")
		for {
			line, err := c.ReadLine()
			if err != nil {
				return
			}
			switch strings.ToUpper(strings.SplitN(line, " ", 2)[0]) {
			case "EHLO":
				lines := []string{"250-peer.test"}
				for _, e := range exts {
					lines = append(lines, "250-"+e)
				}
				lines = append(lines, "250 ENHANCEDSTATUSCODES")
				c.Send(lines...)
			case "DATA":
				c.Send("354 go ahead")
				for {
					if l, err := c.ReadLine(); err != nil || l == "." {
						break
					}
				}
				c.Send("250 2.0.0 queued")
			case "QUIT":
				c.Send("221 bye")
				return
			default:
				c.Send("250 2.0.0 ok")
			}
		}
	}
}

// TestRoundTrips counts the replies waited for: with PIPELINING, MAIL, the
// RCPTs and DATA cost one round trip whatever the number of recipients,
// and RSET before a reused connection's next message rides along with them.
func TestRoundTrips(t *testing.T) {
	for _, tc := range []struct {
		name          string
		exts          []string
		first, second int // a fresh connection, then a reused one
	}{
		// greeting, EHLO, MAIL, 3×RCPT, DATA, end; then RSET, MAIL, 3×RCPT, DATA, end
		{name: "without PIPELINING", first: 8, second: 7},
		// greeting, EHLO, MAIL+RCPT+DATA, end; then RSET+MAIL+RCPT+DATA, end
		{name: "with PIPELINING", exts: []string{"PIPELINING"}, first: 4, second: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, lns := testmx.Listen(t, "127.0.0.2")
			peer := testmx.RunPeer(t, lns[0], plainPeer(tc.exts...))
			c := newClient(t, port, nil)
			hosts := []Host{host("mx1.example.net", "127.0.0.2")}
			for i, want := range []int{tc.first, tc.second} {
				a := c.Deliver(context.Background(), hosts, envelope("a@example.net", "b@example.net", "c@example.net"))
				if got := statuses(a); strings.Join(got, ",") != "delivered 250 2.0.0,delivered 250 2.0.0,delivered 250 2.0.0" {
					t.Fatalf("message %d: %v", i, got)
				}
				if a.RoundTrips != want {
					t.Errorf("message %d: %d round trips, want %d", i, a.RoundTrips, want)
				}
			}
			if accepted, _ := peer.Connections(); accepted != 1 {
				t.Errorf("%d connections, want 1", accepted)
			}
			waitClosed(t, c, peer.Connections)
		})
	}
}

// TestEmptyPipelinedData: no RCPT accepted but the server said 354 to the
// pipelined DATA anyway: the data ends at once, empty, and the connection
// stays in step for the next message (RFC 2920 3.1).
func TestEmptyPipelinedData(t *testing.T) {
	port, lns := testmx.Listen(t, "127.0.0.2")
	dataLines := make(chan int, 4)
	peer := testmx.RunPeer(t, lns[0], func(c *testmx.PeerConn) {
		c.Send("220 peer.test ESMTP")
		first := true
		for {
			line, err := c.ReadLine()
			if err != nil {
				return
			}
			switch strings.ToUpper(strings.SplitN(line, " ", 2)[0]) {
			case "EHLO":
				c.Send("250-peer.test", "250 PIPELINING")
			case "RCPT":
				if first {
					c.Send("550 5.1.1 no such user")
				} else {
					c.Send("250 2.1.5 ok")
				}
			case "DATA":
				c.Send("354 go ahead") // even with no recipient: a broken server
				n := 0
				for {
					l, err := c.ReadLine()
					if err != nil || l == "." {
						break
					}
					n++
				}
				dataLines <- n
				if first {
					c.Send("554 5.5.1 no valid recipients")
				} else {
					c.Send("250 2.0.0 queued")
				}
				first = false
			case "QUIT":
				c.Send("221 bye")
				return
			default:
				c.Send("250 2.0.0 ok")
			}
		}
	})
	c := newClient(t, port, nil)
	hosts := []Host{host("mx1.example.net", "127.0.0.2")}
	a := c.Deliver(context.Background(), hosts, envelope("bob@example.net"))
	if got := statuses(a); strings.Join(got, ",") != "bounced 550 5.1.1" {
		t.Errorf("first message: %v", got)
	}
	if n := <-dataLines; n != 0 {
		t.Errorf("the server got %d lines of data for no recipient, want none", n)
	}
	b := c.Deliver(context.Background(), hosts, envelope("carol@example.net"))
	if got := statuses(b); strings.Join(got, ",") != "delivered 250 2.0.0" {
		t.Errorf("second message on the same connection: %v", got)
	}
	if n := <-dataLines; n == 0 {
		t.Error("second message arrived empty")
	}
	waitClosed(t, c, peer.Connections)
	if accepted, _ := peer.Connections(); accepted != 1 {
		t.Errorf("%d connections, want 1", accepted)
	}
}
