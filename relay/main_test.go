package relay

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/smtpclient"
)

// TestMain fails the run if goroutines outlive the tests: every session,
// DNS query and test server must have ended.
func TestMain(m *testing.M) {
	before := len(ourGoroutines())
	// The worker tests need PostgreSQL and Redis; testenv stops any
	// server it started before returning.
	code := testenv.Run(m)
	if code == 0 {
		deadline := time.Now().Add(10 * time.Second)
		left := ourGoroutines()
		for len(left) > before && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			left = ourGoroutines()
		}
		if len(left) > before {
			fmt.Fprintf(os.Stderr, "goroutine leak: %d before the tests, %d after:\n\n%s\n",
				before, len(left), strings.Join(left, "\n\n"))
			code = 1
		}
	}
	os.Exit(code)
}

// ourGoroutines returns the stacks of all goroutines but this one and those
// the runtime or the test framework own (signal handling for -fuzz).
func ourGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 || strings.Contains(g, "os/signal.signal_recv") {
			continue // i == 0 is the calling goroutine
		}
		out = append(out, g)
	}
	return out
}

const ehloName = "relay.test"

// newClient returns an SMTP client aimed at port on loopback test servers.
func newClient(t *testing.T, port int, edit func(*smtpclient.Options)) *smtpclient.Client {
	t.Helper()
	opts := smtpclient.Options{Hostname: ehloName, Port: port, AllowPrivate: true, Timeouts: smtpclient.Timeouts{
		Connect: 2 * time.Second, Greeting: 3 * time.Second, Hello: 3 * time.Second, TLS: 3 * time.Second,
		Mail: 3 * time.Second, Rcpt: 3 * time.Second, DataInit: 3 * time.Second,
		DataBlock: 3 * time.Second, DataEnd: 3 * time.Second, Quit: time.Second,
	}}
	if edit != nil {
		edit(&opts)
	}
	c, err := smtpclient.New(opts)
	if err != nil {
		t.Fatalf("smtpclient.New: %v", err)
	}
	return c
}

func envelope(to ...string) smtpclient.Envelope {
	return smtpclient.Envelope{
		From: "alice@example.com",
		To:   to,
		Body: smtpclient.Message("", []byte("From: alice@example.com\r\nSubject: hi\r\n\r\nHello.\r\n")),
	}
}
