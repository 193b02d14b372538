package submission_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailferry/mailferry/internal/testlog"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/ratelimit"
	"github.com/mailferry/mailferry/store"
	"github.com/mailferry/mailferry/submission"
)

// TestRateLimitSharedWithAPI: one key's MAILFERRY_RATE_LIMIT budget is
// spent by the API and SMTP together; past it MAIL gets 451 4.7.0 with the
// wait, the API 429, and both get a token back with time.
func TestRateLimitSharedWithAPI(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{rateLimit: &ratelimit.Limit{Rate: 0.5, Burst: 3}})
	post := func() int {
		t.Helper()
		body := `{"from":"alice@example.com","to":["bob@example.net"],"subject":"api","text":"hi"}`
		req, _ := http.NewRequest(http.MethodPost, h.api.URL+"/v1/messages", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+h.secret)
		req.Header.Set("Content-Type", "application/json")
		resp, err := h.api.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for i := range 2 {
		if got := post(); got != http.StatusAccepted {
			t.Fatalf("API POST %d within the burst: %d", i+1, got)
		}
	}
	c := h.login()
	msg := message("alice@example.com", "bob@example.net", "smtp")
	if _, err := send(c, "alice@example.com", []string{"bob@example.net"}, msg); err != nil {
		t.Fatalf("the third message of a burst of 3, over SMTP: %v", err)
	}
	se := wantSMTPError(t, "MAIL past the budget", c.Mail("alice@example.com", nil), 451, smtp.EnhancedCode{4, 7, 0})
	if !strings.HasPrefix(se.Message, "rate limited; try again in 2s") {
		t.Errorf("451 gives no wait: %q", se.Message)
	}
	if got := post(); got != http.StatusTooManyRequests {
		t.Errorf("API POST past the budget SMTP spent: %d, want 429", got)
	}
	if n := h.counter("mailferry_smtp_refusals_total", "reason", "rate_limited"); n != 1 {
		t.Errorf("refusals{rate_limited} = %v, want 1", n)
	}
	if n := h.messageCount(); n != 3 {
		t.Errorf("%d messages in the ledger, want the 3 of the burst", n)
	}

	// The session survives the refusal, and the token comes back.
	h.clock.Advance(2 * time.Second)
	if _, err := send(c, "alice@example.com", []string{"bob@example.net"}, msg); err != nil {
		t.Fatalf("after the wait: %v", err)
	}
}

// gatedAuth holds every key check until open is closed, and counts them,
// so that a test can have many checks in progress at once.
type gatedAuth struct {
	next    submission.Authenticator
	open    chan struct{}
	checked atomic.Int32
}

func (g *gatedAuth) Authenticate(ctx context.Context, secret string) (store.APIKey, error) {
	g.checked.Add(1)
	<-g.open
	return g.next.Authenticate(ctx, secret)
}

// TestParallelAuthFailures: N sessions from one address that send wrong
// keys at once get at most AuthFailures key checks between them: an
// attempt counts from when its check starts. The rest are refused without
// a check, 454 4.7.0, as rate_limited.
func TestParallelAuthFailures(t *testing.T) {
	t.Parallel()
	const limit, sessions = 3, 12
	gate := &gatedAuth{open: make(chan struct{})}
	h := newHarness(t, harnessOptions{authFailures: limit, maxConnections: sessions + 1,
		auth: func(a submission.Authenticator) submission.Authenticator { gate.next = a; return gate }})
	clients := make([]*smtp.Client, sessions)
	for i := range clients {
		clients[i] = h.client()
	}
	var refused atomic.Int32
	codes := make([]int, sessions)
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() {
			err := c.Auth(sasl.NewPlainClient("", tenant, fmt.Sprintf("wrong-%d", i)))
			if se, ok := err.(*smtp.SMTPError); ok {
				codes[i] = se.Code
				if se.Code == 454 {
					refused.Add(1)
				}
			}
		})
	}
	wait.For(t, "every AUTH checked or refused", func() bool { return int(gate.checked.Load()+refused.Load()) == sessions })
	close(gate.open)
	wg.Wait()
	if n := gate.checked.Load(); n > limit {
		t.Errorf("%d keys checked at once, want at most %d", n, limit)
	}
	count := map[int]int{}
	for _, c := range codes {
		count[c]++
	}
	if count[535] != limit || count[454] != sessions-limit {
		t.Errorf("replies %v, want %d × 535 and %d × 454", count, limit, sessions-limit)
	}
	if n := h.counter("mailferry_smtp_auth_failures_total", "reason", "rate_limited"); n != sessions-limit {
		t.Errorf("auth_failures{rate_limited} = %v, want %d", n, sessions-limit)
	}
	// The failures were counted: the right key is refused now too.
	wantSMTPError(t, "AUTH after the failures", h.client().Auth(sasl.NewPlainClient("", tenant, h.secret)), 454, smtp.EnhancedCode{4, 7, 0})
}

// TestAuthCheckRefunded: a login that succeeds, or that the key store
// cannot answer, gives its attempt back: only failures add up.
func TestAuthCheckRefunded(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{authFailures: 2})
	for i := range 5 {
		if err := h.client().Auth(sasl.NewPlainClient("", tenant, h.secret)); err != nil {
			t.Fatalf("good login %d: %v", i+1, err)
		}
	}
	wantSMTPError(t, "one wrong key", h.client().Auth(sasl.NewPlainClient("", tenant, "wrong")), 535, smtp.EnhancedCode{5, 7, 8})
	if err := h.client().Auth(sasl.NewPlainClient("", tenant, h.secret)); err != nil {
		t.Fatalf("good login after one failure of 2: %v", err)
	}
}

// TestAuthUserRedacted: a client that swaps user name and password (or
// pastes the key in both) never gets the key into the log, at any level,
// by PLAIN or LOGIN.
func TestAuthUserRedacted(t *testing.T) {
	t.Parallel()
	logs := &testlog.Buffer{}
	h := newHarness(t, harnessOptions{logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	tests := []struct {
		name string
		auth sasl.Client
	}{
		{"PLAIN swapped", sasl.NewPlainClient("", h.secret, tenant)},
		{"LOGIN swapped", sasl.NewLoginClient(h.secret, tenant)},
		{"PLAIN key as identity and user", sasl.NewPlainClient(h.secret, h.secret, "x")},
		{"PLAIN key as user and password", sasl.NewPlainClient("", h.secret, h.secret)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantSMTPError(t, "AUTH", h.client().Auth(tt.auth), 535, smtp.EnhancedCode{5, 7, 8})
		})
	}
	out := logs.String()
	if n := strings.Count(out, `"msg":"smtp auth failed"`); n != len(tests) {
		t.Fatalf("%d auth failures logged, want %d: the scan would see nothing\n%s", n, len(tests), out)
	}
	// The random part alone is the credential; the key id before it is
	// public.
	random := h.secret[strings.LastIndex(h.secret, "_")+1:]
	if strings.Contains(out, random) {
		t.Errorf("the API key reached the log:\n%s", out)
	}
	if !strings.Contains(out, `"user":"[redacted`) {
		t.Errorf("no redacted user in the log:\n%s", out)
	}
}

// dialFrom connects to addr from the loopback address src, so that a test
// can be two clients; it returns the connection and the first line the
// server sent.
func dialFrom(t *testing.T, src, addr string, tlsConfig *tls.Config) (net.Conn, string) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	t.Cleanup(func() { conn.Close() })
	if tlsConfig != nil {
		conn = tls.Client(conn, tlsConfig)
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("read the first line from %s: %v", addr, err)
	}
	return conn, line
}

// TestConnectionsPerIP: one address gets MaxConnectionsPerIP connections
// over both ports, then 421 4.7.0; another address still gets in; a slot
// closed comes back.
func TestConnectionsPerIP(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{maxPerIP: 3, maxConnections: 10})
	var held []net.Conn
	for i, addr := range []string{h.addr, h.addrTLS, h.addr} {
		cfg := (*tls.Config)(nil)
		if addr == h.addrTLS {
			cfg = h.tls
		}
		conn, line := dialFrom(t, "127.0.0.2", addr, cfg)
		if !strings.HasPrefix(line, "220 ") {
			t.Fatalf("connection %d from 127.0.0.2: %q, want 220", i+1, line)
		}
		held = append(held, conn)
	}
	want := "421 4.7.0 " + hostname + " too many connections from your address, try again later\r\n"
	for _, port := range []struct {
		addr string
		tls  *tls.Config
	}{{h.addr, nil}, {h.addrTLS, h.tls}} {
		conn, line := dialFrom(t, "127.0.0.2", port.addr, port.tls)
		if line != want {
			t.Errorf("a fourth connection from 127.0.0.2 to %s: %q, want %q", port.addr, line, want)
		}
		if _, err := conn.Read(make([]byte, 1)); err == nil {
			t.Errorf("the refused connection to %s stays open", port.addr)
		}
	}
	if _, line := dialFrom(t, "127.0.0.3", h.addr, nil); !strings.HasPrefix(line, "220 ") {
		t.Errorf("127.0.0.3 while 127.0.0.2 is at its limit: %q, want 220", line)
	}
	if n := h.counter("mailferry_smtp_refusals_total", "reason", "client_connection_limit"); n != 2 {
		t.Errorf("refusals{client_connection_limit} = %v, want 2", n)
	}

	held[0].Close()
	wait.For(t, "the closed connection's slot to come back", func() bool {
		return h.counter("mailferry_smtp_connections") == 3 // two of 127.0.0.2, one of 127.0.0.3
	})
	if _, line := dialFrom(t, "127.0.0.2", h.addr, nil); !strings.HasPrefix(line, "220 ") {
		t.Errorf("127.0.0.2 after closing one: %q, want 220", line)
	}
}

// TestGreetingTimeout: a client that connects and says nothing is cut off
// by the greeting timeout, long before the command timeout; one that has
// said EHLO is on the command timeout from then on.
func TestGreetingTimeout(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{greetingTimeout: 300 * time.Millisecond, commandTimeout: time.Minute})
	greeted := dialRaw(t, h.addr, nil)
	if got := greeted.cmd("EHLO client.test"); !strings.HasPrefix(got, "250") {
		t.Fatalf("EHLO: %q", got)
	}
	// The silent client is accepted after the greeted one, so once it is
	// cut off the greeted one's greeting time is over too.
	silent := dialRaw(t, h.addr, nil)
	_ = silent.conn.SetDeadline(time.Now().Add(10 * time.Second)) // the command timeout is a minute
	if got := silent.reply(); !strings.HasPrefix(got, "421 4.4.2 ") {
		t.Errorf("silent client: %q, want 421 4.4.2", got)
	}
	if _, err := silent.r.ReadByte(); err == nil {
		t.Errorf("silent connection still open after the greeting timeout")
	}
	if got := greeted.cmd("NOOP"); !strings.HasPrefix(got, "250") {
		t.Errorf("a client past EHLO, after the greeting timeout: %q, want 250", got)
	}
}

// TestTLSHandshakeTimeout: on 465 a client that connects and never
// finishes the TLS handshake is closed after the handshake timeout, well
// before the greeting and command timeouts.
func TestTLSHandshakeTimeout(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{tlsHandshake: 300 * time.Millisecond, greetingTimeout: time.Minute, commandTimeout: time.Minute})
	for _, tt := range []struct {
		name string
		send []byte
	}{
		{"silent", nil},
		{"half a ClientHello", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", h.addrTLS)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadAll(conn); err != nil {
				t.Errorf("connection not closed by the server: %v", err)
			}
		})
	}
	wait.For(t, "the stalled connections' slots to come back", func() bool { return h.counter("mailferry_smtp_connections") == 0 })
	// A real handshake still works.
	r := dialRaw(t, h.addrTLS, h.tls)
	if got := r.cmd("EHLO client.test"); !strings.HasPrefix(got, "250") {
		t.Errorf("EHLO over implicit TLS: %q", got)
	}
}

// TestAcceptBackoff: out of descriptors, both submission listeners back
// off between accepts instead of spinning, and serve again after.
func TestAcceptBackoff(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	for _, port := range []struct {
		name  string
		serve func(net.Listener) error
		tls   *tls.Config
	}{{"587", h.srv.ServeSubmission, nil}, {"465", h.srv.ServeSubmissions, h.tls}} {
		t.Run(port.name, func(t *testing.T) {
			el := &testmx.EMFILEListener{Listener: listen(t), Fails: 4}
			go func() { _ = port.serve(el) }()
			wait.For(t, "accept to be retried past the failures", func() bool { return len(el.Times()) > el.Fails })
			calls := el.Times()
			for i := 1; i <= el.Fails; i++ {
				if gap := calls[i].Sub(calls[i-1]); gap < 4*time.Millisecond {
					t.Errorf("accept %d came %v after a failed one: no back-off", i+1, gap)
				}
			}
			if _, line := dialFrom(t, "127.0.0.1", el.Addr().String(), port.tls); !strings.HasPrefix(line, "220 ") {
				t.Errorf("after the failures: %q", line)
			}
		})
	}
}

// TestTenantQuotaSharedWithAPI: MAILFERRY_TENANT_DAILY_QUOTA counts the
// tenant's messages over the API and SMTP together; past it MAIL gets
// 451 4.7.0 naming midnight UTC and the API 429; the next UTC day sends.
func TestTenantQuotaSharedWithAPI(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{quota: 2})
	body := `{"from":"alice@example.com","to":["bob@example.net"],"subject":"api","text":"hi"}`
	post := func() int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, h.api.URL+"/v1/messages", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+h.secret)
		req.Header.Set("Content-Type", "application/json")
		resp, err := h.api.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := post(); got != http.StatusAccepted {
		t.Fatalf("first message over the API: %d", got)
	}
	c := h.login()
	msg := message("alice@example.com", "bob@example.net", "smtp")
	if _, err := send(c, "alice@example.com", []string{"bob@example.net"}, msg); err != nil {
		t.Fatalf("second message, over SMTP: %v", err)
	}
	se := wantSMTPError(t, "MAIL past the quota", c.Mail("alice@example.com", nil), 451, smtp.EnhancedCode{4, 7, 0})
	if !strings.Contains(se.Message, "daily quota of 2 messages") || !strings.Contains(se.Message, "midnight UTC") {
		t.Errorf("451 does not name the quota: %q", se.Message)
	}
	if got := post(); got != http.StatusTooManyRequests {
		t.Errorf("API past the quota: %d, want 429", got)
	}
	now := h.clock.Now().UTC()
	h.clock.Advance(time.Date(now.Year(), now.Month(), now.Day()+1, 0, 0, 1, 0, time.UTC).Sub(now))
	if _, err := send(c, "alice@example.com", []string{"bob@example.net"}, msg); err != nil {
		t.Fatalf("the next UTC day: %v", err)
	}
}
