package smtpclient

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/mailferry/mailferry/internal/testmx"
)

// TestDeliverOutcomes: each server behaviour maps to the right per-recipient
// outcome: 2xx delivered, 4xx or a network error deferred, 5xx bounced.
func TestDeliverOutcomes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		opts     testmx.SMTPOptions
		script   func(s *testmx.SMTP)
		env      func(e *Envelope)
		to       []string
		want     []string // statuses(), one per recipient
		received []string // recipients of the message whose data the server read; nil: none
		noHost   bool     // no host got as far as a transaction
	}{
		{
			name:     "delivered",
			to:       []string{"bob@example.net"},
			want:     []string{"delivered 250 2.0.0"},
			received: []string{"bob@example.net"},
		},
		{
			name:   "451 on RCPT defers",
			script: func(s *testmx.SMTP) { s.OnRcpt("bob@example.net", "451 4.7.1 greylisted") },
			to:     []string{"bob@example.net"},
			want:   []string{"deferred 451 4.7.1"},
		},
		{
			name:     "550 for one recipient, 250 for the other",
			script:   func(s *testmx.SMTP) { s.OnRcpt("bob@example.net", "550 5.1.1 no such user") },
			to:       []string{"bob@example.net", "carol@example.net"},
			want:     []string{"bounced 550 5.1.1", "delivered 250 2.0.0"},
			received: []string{"carol@example.net"},
		},
		{
			name:     "554 at end of DATA bounces every accepted recipient",
			script:   func(s *testmx.SMTP) { s.OnData("554 5.7.1 spam") },
			to:       []string{"bob@example.net", "carol@example.net"},
			want:     []string{"bounced 554 5.7.1", "bounced 554 5.7.1"},
			received: []string{"bob@example.net", "carol@example.net"},
		},
		{
			name:     "451 at end of DATA defers every accepted recipient, RCPT bounces stay",
			script:   func(s *testmx.SMTP) { s.OnRcpt("bob@example.net", "550 5.1.1 no"); s.OnData("451 4.3.0 later") },
			to:       []string{"bob@example.net", "carol@example.net"},
			want:     []string{"bounced 550 5.1.1", "deferred 451 4.3.0"},
			received: []string{"carol@example.net"},
		},
		{
			// Carried to a second transaction, refused again there: no
			// progress, so it waits for the next attempt.
			name: "552 on RCPT is temporary (RFC 5321 4.5.3.1.10)",
			script: func(s *testmx.SMTP) {
				s.OnRcpt("carol@example.net", "552 5.5.3 too many recipients", "552 5.5.3 too many recipients")
			},
			to:       []string{"bob@example.net", "carol@example.net"},
			want:     []string{"delivered 250 2.0.0", "deferred 552 5.5.3"},
			received: []string{"bob@example.net"},
		},
		{
			name:   "connection dropped mid-DATA defers",
			script: func(s *testmx.SMTP) { s.OnData(testmx.Drop) },
			env:    func(e *Envelope) { e.Body = bytesBody(bytes.Repeat([]byte("0123456789abcdef\r\n"), 20000)) },
			to:     []string{"bob@example.net", "carol@example.net"},
			want:   []string{"deferred 0 4.4.2", "deferred 0 4.4.2"},
		},
		{
			name:   "421 on RCPT defers this one and the rest",
			script: func(s *testmx.SMTP) { s.OnRcpt("carol@example.net", "421 4.3.2 shutting down") },
			to:     []string{"bob@example.net", "carol@example.net", "dave@example.net"},
			want:   []string{"deferred 421 4.3.2", "deferred 421 4.3.2", "deferred 421 4.3.2"},
		},
		{
			name:   "550 on MAIL bounces everyone",
			script: func(s *testmx.SMTP) { s.OnMail("550 5.7.1 sender blocked") },
			to:     []string{"bob@example.net", "carol@example.net"},
			want:   []string{"bounced 550 5.7.1", "bounced 550 5.7.1"},
		},
		{
			name:   "451 on MAIL defers (no other host)",
			script: func(s *testmx.SMTP) { s.OnMail("451 4.3.0 try later") },
			to:     []string{"bob@example.net"},
			want:   []string{"deferred 451 4.3.0"},
			noHost: true, // no transaction ran; the host is in Tried
		},
		{
			name: "no RCPT accepted: no DATA",
			script: func(s *testmx.SMTP) {
				s.OnRcpt("bob@example.net", "550 5.1.1 no")
				s.OnRcpt("carol@example.net", "450 4.2.1 busy")
			},
			to:   []string{"bob@example.net", "carol@example.net"},
			want: []string{"bounced 550 5.1.1", "deferred 450 4.2.1"},
		},
		{
			name:   "reply without enhanced code",
			script: func(s *testmx.SMTP) { s.OnRcpt("bob@example.net", "550 mailbox unavailable") },
			to:     []string{"bob@example.net"},
			want:   []string{"bounced 550"},
		},
		{
			name: "SIZE exceeded bounces 5.3.4 without sending",
			opts: testmx.SMTPOptions{MaxSize: 1000},
			env:  func(e *Envelope) { e.Body = bytesBody(bytes.Repeat([]byte("x\r\n"), 1000)) },
			to:   []string{"bob@example.net", "carol@example.net"},
			want: []string{"bounced 0 5.3.4", "bounced 0 5.3.4"},
		},
		{
			name:     "SIZE not exceeded",
			opts:     testmx.SMTPOptions{MaxSize: 100000},
			to:       []string{"bob@example.net"},
			want:     []string{"delivered 250 2.0.0"},
			received: []string{"bob@example.net"},
		},
		{
			name: "SMTPUTF8 needed, not offered: 5.6.7 without sending",
			env:  func(e *Envelope) { e.NeedsUTF8 = true },
			to:   []string{"bob@example.net"},
			want: []string{"bounced 0 5.6.7"},
		},
		{
			name:     "SMTPUTF8 needed and offered",
			opts:     testmx.SMTPOptions{SMTPUTF8: true},
			env:      func(e *Envelope) { e.NeedsUTF8 = true; e.From = "ålice@example.com" },
			to:       []string{"bøb@example.net"},
			want:     []string{"delivered 250 2.0.0"},
			received: []string{"bøb@example.net"},
		},
		{
			name:     "null sender",
			env:      func(e *Envelope) { e.From = "" },
			to:       []string{"bob@example.net"},
			want:     []string{"delivered 250 2.0.0"},
			received: []string{"bob@example.net"},
		},
		{
			name:     "a recipient with CR/LF bounces alone, never reaches the wire",
			to:       []string{"bob@example.net\r\nDATA", "carol@example.net"},
			want:     []string{"bounced 0 5.1.3", "delivered 250 2.0.0"},
			received: []string{"carol@example.net"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, lns := testmx.Listen(t, "127.0.0.2")
			srv := testmx.StartSMTP(t, lns[0], tc.opts)
			if tc.script != nil {
				tc.script(srv)
			}
			env := envelope(tc.to...)
			if tc.env != nil {
				tc.env(&env)
			}
			c := newClient(t, port, nil)
			a := c.Deliver(context.Background(), []Host{host("mx1.example.net", "127.0.0.2")}, env)
			if got := statuses(a); !slices.Equal(got, tc.want) {
				t.Errorf("results %q, want %q", got, tc.want)
				for _, r := range a.Results {
					t.Logf("  %+v", r)
				}
			}
			for _, r := range a.Results {
				if (verdict(r) == delivered) != (r.Err == nil) {
					t.Errorf("result %+v: Err must be set exactly when not delivered", r)
				}
			}
			msgs := srv.Messages()
			if tc.received == nil {
				if len(msgs) != 0 {
					t.Errorf("server received %d messages, want none", len(msgs))
				}
			} else {
				if len(msgs) != 1 {
					t.Fatalf("server received %d messages, want 1", len(msgs))
				}
				if !slices.Equal(msgs[0].To, tc.received) || msgs[0].From != env.From {
					t.Errorf("server got MAIL FROM %q RCPT TO %q, want %q %q", msgs[0].From, msgs[0].To, env.From, tc.received)
				}
				if !bytes.Equal(msgs[0].Data, dataOf(t, env)) {
					t.Errorf("data differs:\n got %q\nwant %q", msgs[0].Data, dataOf(t, env))
				}
				if msgs[0].UTF8 != env.NeedsUTF8 {
					t.Errorf("SMTPUTF8 parameter %v, want %v", msgs[0].UTF8, env.NeedsUTF8)
				}
			}
			if tc.noHost {
				if a.Host != "" || len(a.Tried) != 1 || a.Tried[0].Host != "mx1.example.net" {
					t.Errorf("attempt host %q, tried %+v; want none and mx1 in Tried", a.Host, a.Tried)
				}
			} else if a.Host != "mx1.example.net" || a.IP.String() != "127.0.0.2" {
				t.Errorf("attempt ran on %q %v", a.Host, a.IP)
			}
			waitClosed(t, c, srv.Connections)
		})
	}
}

// TestGreylisting: a 451 then acceptance across two attempts.
func TestGreylisting(t *testing.T) {
	port, lns := testmx.Listen(t, "127.0.0.2")
	srv := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
	srv.OnRcpt("bob@example.net", "451 4.7.1 greylisted, come back later")
	c := newClient(t, port, nil)
	hosts := []Host{host("mx1.example.net", "127.0.0.2")}
	first := c.Deliver(context.Background(), hosts, envelope("bob@example.net"))
	if verdict(first.Results[0]) != deferred || !strings.Contains(first.Results[0].Line, "greylisted") {
		t.Errorf("first attempt: %+v", first.Results[0])
	}
	second := c.Deliver(context.Background(), hosts, envelope("bob@example.net"))
	if verdict(second.Results[0]) != delivered {
		t.Errorf("second attempt: %+v", second.Results[0])
	}
	if n := len(srv.Messages()); n != 1 {
		t.Errorf("server received %d messages, want 1", n)
	}
}

// TestBackupMX: hosts are tried in order; a host that is down, greets with
// 421 or defers MAIL leaves the transaction to the next.
func TestBackupMX(t *testing.T) {
	for _, tc := range []struct {
		name    string
		primary func(t *testing.T, ln *testmx.SMTP)
		down    bool
	}{
		{name: "preferred MX down", down: true},
		{name: "preferred MX defers MAIL", primary: func(t *testing.T, s *testmx.SMTP) { s.OnMail("451 4.3.2 overloaded") }},
		{name: "preferred MX closes at MAIL with 421", primary: func(t *testing.T, s *testmx.SMTP) { s.OnMail("421 4.3.2 bye") }},
		{name: "preferred MX drops at MAIL", primary: func(t *testing.T, s *testmx.SMTP) { s.OnMail(testmx.Drop) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, lns := testmx.Listen(t, "127.0.0.2", "127.0.0.3")
			var primary *testmx.SMTP
			if tc.down {
				lns[0].Close() // nothing listens on 127.0.0.2:port
			} else {
				primary = testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
				tc.primary(t, primary)
			}
			backup := testmx.StartSMTP(t, lns[1], testmx.SMTPOptions{})

			hosts := []Host{host("mx1.example.net", "127.0.0.2"), host("mx2.example.net", "127.0.0.3")}
			c := newClient(t, port, nil)
			a := c.Deliver(context.Background(), hosts, envelope("bob@example.net"))
			if got := statuses(a); !slices.Equal(got, []string{"delivered 250 2.0.0"}) {
				t.Fatalf("results %v (%v)", got, a.Results[0].Err)
			}
			if a.Host != "mx2.example.net" || len(backup.Messages()) != 1 {
				t.Errorf("delivered via %q; backup got %d messages", a.Host, len(backup.Messages()))
			}
			if len(a.Tried) != 1 || a.Tried[0].Host != "mx1.example.net" || a.Tried[0].Err == nil {
				t.Errorf("Tried = %+v, want mx1.example.net with its error", a.Tried)
			}
			if primary != nil {
				if n := len(primary.Messages()); n != 0 {
					t.Errorf("primary got %d messages", n)
				}
				waitClosed(t, c, primary.Connections)
			}
			waitClosed(t, c, backup.Connections)
		})
	}
}

// TestAllHostsDown: every host fails before a transaction; recipients are
// deferred with the last error and every host is listed in Tried.
func TestAllHostsDown(t *testing.T) {
	port, lns := testmx.Listen(t, "127.0.0.2", "127.0.0.3")
	lns[0].Close()
	srv := testmx.StartSMTP(t, lns[1], testmx.SMTPOptions{})
	srv.OnMail("452 4.3.1 out of space")
	c := newClient(t, port, nil)
	a := c.Deliver(context.Background(),
		[]Host{host("mx1.example.net", "127.0.0.2"), host("mx2.example.net", "127.0.0.3")}, envelope("bob@example.net"))
	r := a.Results[0]
	if verdict(r) != deferred || r.Code != 452 || r.Enhanced != "4.3.1" || !strings.Contains(r.Line, "out of space") {
		t.Errorf("result %+v, want the last host's 452 4.3.1", r)
	}
	if a.Host != "" || len(a.Tried) != 2 {
		t.Errorf("Host %q, Tried %+v", a.Host, a.Tried)
	}
	var de *dialError
	if !errors.As(a.Tried[0].Err, &de) {
		t.Errorf("Tried[0] = %v, want a connect error", a.Tried[0].Err)
	}
	if a.Duration <= 0 || a.Started.IsZero() {
		t.Errorf("Started %v Duration %v", a.Started, a.Duration)
	}
	waitClosed(t, c, srv.Connections)

	none := newClient(t, port, nil).Deliver(context.Background(), nil, envelope("bob@example.net"))
	if verdict(none.Results[0]) != deferred || !errors.Is(none.Results[0].Err, ErrNoAddress) {
		t.Errorf("no hosts: %+v", none.Results[0])
	}
}

// TestBodyIntact: bare LF, bare CR and lines starting with "." arrive as
// CRLF lines with the dots the sender wrote; nothing in the body can end
// the data early (SMTP smuggling).
func TestBodyIntact(t *testing.T) {
	port, lns := testmx.Listen(t, "127.0.0.2")
	srv := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
	body := "Subject: dots\n\n.leading dot\r\n..two dots\n.\nbare CR\rthen\r.\rMAIL FROM:<evil@example.org>\r\n" +
		"lf dot lf\n.\nRCPT TO:<victim@example.org>\r\n\r\n.\r\nafter a lone dot line\r\nåäö 8-bit\r\n"
	want := "Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nbare CR\r\nthen\r\n.\r\nMAIL FROM:<evil@example.org>\r\n" +
		"lf dot lf\r\n.\r\nRCPT TO:<victim@example.org>\r\n\r\n.\r\nafter a lone dot line\r\nåäö 8-bit\r\n"
	env := envelope("bob@example.net")
	env.Body = bytesBody([]byte(body))
	env.Needs8Bit = true
	c := newClient(t, port, nil)
	a := c.Deliver(context.Background(), []Host{host("mx1.example.net", "127.0.0.2")}, env)
	if verdict(a.Results[0]) != delivered {
		t.Fatalf("result %+v", a.Results[0])
	}
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("server received %d messages, want exactly 1 (smuggled a second?)", len(msgs))
	}
	if got := string(msgs[0].Data); got != want {
		t.Errorf("body\n got %q\nwant %q", got, want)
	}
	if msgs[0].Body != "8BITMIME" {
		t.Errorf("BODY=%q, want 8BITMIME (RFC 6152)", msgs[0].Body)
	}
	if msgs[0].Size != int64(len(want)) {
		t.Errorf("SIZE=%d, want %d (RFC 1870)", msgs[0].Size, len(want))
	}
}

func TestNewClient(t *testing.T) {
	for name, opts := range map[string]Options{
		"no hostname":      {},
		"hostname with LF": {Hostname: "a\nb"},
		"bad port":         {Hostname: "relay.test", Port: 70000},
		"user sans pass":   {Hostname: "relay.test", Username: "u"},
	} {
		if _, err := New(opts); err == nil {
			t.Errorf("%s: NewClient accepted %+v", name, opts)
		}
	}
	c, err := New(Options{Hostname: "relay.test"})
	if err != nil || c.opts.Port != 25 || c.t != DefaultTimeouts() {
		t.Errorf("defaults: port %d timeouts %+v err %v", c.opts.Port, c.t, err)
	}
}
