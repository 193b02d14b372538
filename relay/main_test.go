package relay

import (
	"os"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/leakcheck"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/smtpclient"
)

// TestMain fails the run if goroutines outlive the tests: every session,
// DNS query and test server must have ended. The worker tests need
// PostgreSQL and Redis; testenv stops any server it started before the
// check. The delivery suite runs on single Redis and on a Redis Cluster
// (testenv.EachRedis).
func TestMain(m *testing.M) {
	os.Exit(leakcheck.Run(os.Stderr, func() int { return testenv.Run(m, testenv.WithCluster()) }))
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
