package smtpclient

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/wait"

	"github.com/mailferry/mailferry/internal/leakcheck"
)

// TestMain fails the run if goroutines outlive the tests: every session and
// test server must have ended.
func TestMain(m *testing.M) {
	os.Exit(leakcheck.Run(os.Stderr, func() int { return m.Run() }))
}

const ehloName = "relay.test"

// Verdicts, as the tests name them; relay maps Results to the store's.
const (
	delivered = "delivered"
	deferred  = "deferred"
	bounced   = "bounced"
)

func verdict(r Result) string {
	switch {
	case r.Permanent:
		return bounced
	case r.Err == nil && r.Code/100 == 2:
		return delivered
	default:
		return deferred
	}
}

// fastTimeouts keep failing tests short; each test that is about a timeout
// sets its own.
func fastTimeouts() Timeouts {
	return Timeouts{
		Connect: 2 * time.Second, Greeting: 3 * time.Second, Hello: 3 * time.Second, TLS: 3 * time.Second,
		Mail: 3 * time.Second, Rcpt: 3 * time.Second, DataInit: 3 * time.Second,
		DataBlock: 3 * time.Second, DataEnd: 3 * time.Second, Quit: time.Second,
	}
}

// newClient returns a Client aimed at port on loopback test servers.
func newClient(t *testing.T, port int, edit func(*Options)) *Client {
	t.Helper()
	opts := Options{Hostname: ehloName, Port: port, AllowPrivate: true, Timeouts: fastTimeouts()}
	if edit != nil {
		edit(&opts)
	}
	c, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func host(name string, ips ...string) Host {
	h := Host{Name: name}
	for _, ip := range ips {
		h.Addrs = append(h.Addrs, netip.MustParseAddr(ip))
	}
	return h
}

func bytesBody(b []byte) Body { return Message("", b) }

func envelope(to ...string) Envelope {
	return Envelope{
		From: "alice@example.com",
		To:   to,
		Body: bytesBody([]byte("From: alice@example.com\r\nSubject: hi\r\n\r\nHello.\r\n")),
	}
}

// dataOf reads env's body whole.
func dataOf(t *testing.T, env Envelope) []byte {
	t.Helper()
	r, err := env.Body()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if _, err := io.Copy(&b, r); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// waitClosed fails the test unless every connection the server accepted is
// closed again soon, but for those c keeps for reuse: the client must close
// on every other path. Then it closes those too and checks they go.
func waitClosed(t *testing.T, c *Client, conns func() (accepted, open int)) {
	t.Helper()
	wait.Within(t, 5*time.Second, "every connection closed but those kept for reuse", func() bool {
		_, open := conns()
		return open <= c.pool.idleCount()
	})
	c.CloseIdle()
	wait.Within(t, 5*time.Second, "every connection closed after CloseIdle", func() bool {
		_, open := conns()
		return open == 0
	})
}

// statuses summarises an attempt's results, e.g. "delivered 250 2.0.0".
func statuses(a Attempt) []string {
	var out []string
	for _, r := range a.Results {
		out = append(out, strings.TrimSpace(fmt.Sprintf("%s %d %s", verdict(r), r.Code, r.Enhanced)))
	}
	return out
}
