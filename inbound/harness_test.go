package inbound

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailferry/mailferry/internal/leakcheck"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/teststack"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/returnpath"
	"github.com/mailferry/mailferry/store"
)

// TestMain fails the run if goroutines outlive the tests.
func TestMain(m *testing.M) {
	os.Exit(leakcheck.Run(os.Stderr, func() int { return testenv.Run(m) }))
}

const (
	bounceDomain = "bounces.example.com"
	fblAddress   = "fbl@bounces.example.com"
	testKey      = "0123456789abcdef0123456789abcdef"
)

// env is a ledger on a real PostgreSQL, a signer and the metrics.
type env struct {
	t       *testing.T
	stack   *teststack.Stack
	st      *store.Store
	signer  *returnpath.Signer
	reg     *prometheus.Registry
	metrics *Metrics
	key     store.APIKey
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ts := teststack.New(t, teststack.Options{Queue: queue.Options{Consumer: "intake", VisibilityTimeout: time.Minute}})
	signer, err := returnpath.New(bounceDomain, []byte(testKey))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	e := &env{t: t, stack: ts, st: ts.Store, signer: signer, reg: reg, metrics: NewMetrics(reg)}
	e.key, _, err = ts.Store.CreateAPIKey(t.Context(), "acme", []string{"example.com"})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// listen starts a Server on a loopback address until the test ends and
// returns its address.
func (e *env) listen(mutate func(*ServerOptions)) string {
	e.t.Helper()
	opts := ServerOptions{Saver: e.st, ReturnPaths: e.signer, FBLAddress: fblAddress, Hostname: "inbound.test",
		Metrics: e.metrics, CommandTimeout: 5 * time.Second}
	if mutate != nil {
		mutate(&opts)
	}
	srv, err := NewServer(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			e.t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			e.t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// processor returns a Processor on the env's ledger.
func (e *env) processor(mutate func(*ProcessorOptions)) *Processor {
	e.t.Helper()
	opts := ProcessorOptions{Claimer: e.st, Messages: e.st, Applier: e.st, ReturnPaths: e.signer, Metrics: e.metrics}
	if mutate != nil {
		mutate(&opts)
	}
	p, err := NewProcessor(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// message accepts a message of n recipients (user<i>@dest.example) and
// records the first delivered ones as delivered.
func (e *env) message(n, delivered int) store.NewMessage {
	e.t.Helper()
	var to []string
	for i := range n {
		to = append(to, fmt.Sprintf("user%d@dest.example", i))
	}
	return e.messageTo(to, delivered)
}

// messageTo is message to the addresses to.
func (e *env) messageTo(to []string, delivered int) store.NewMessage {
	e.t.Helper()
	id := uuid.Must(uuid.NewV7())
	m := store.NewMessage{ID: id, TenantID: e.key.TenantID, APIKeyID: e.key.ID, Ingress: "api",
		MessageID: id.String() + "@example.com", MailFrom: "alice@example.com", From: "Alice <alice@example.com>",
		Subject: "hello", Body: []byte("From: alice@example.com\r\n\r\nhi\r\n"), CreatedAt: time.Now().Truncate(time.Microsecond)}
	for _, a := range to {
		m.Recipients = append(m.Recipients, store.NewRecipient{Email: a})
	}
	if err := e.st.AcceptBatch(e.t.Context(), []store.NewMessage{m}); err != nil {
		e.t.Fatal(err)
	}
	var outs []store.Outcome
	for i := range delivered {
		outs = append(outs, store.Outcome{Attempt: store.Attempt{Recipient: i, Attempt: 1, StartedAt: time.Now(),
			SMTPCode: 250, Response: "250 ok", Outcome: store.RecipientDelivered}})
	}
	if len(outs) > 0 {
		if _, err := e.st.RecordOutcomes(e.t.Context(), id, outs); err != nil {
			e.t.Fatal(err)
		}
	}
	return m
}

// query runs one SELECT of one value.
func (e *env) count(sql string, args ...any) int {
	e.t.Helper()
	db, err := pgxConnect(e.t, e.stack.DatabaseURL)
	if err != nil {
		e.t.Fatal(err)
	}
	var n int
	if err := db.QueryRow(e.t.Context(), sql, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func (e *env) metric(result string) float64 {
	return testutil.ToFloat64(e.metrics.messages.WithLabelValues(result))
}

// send speaks SMTP to addr: MAIL FROM from, RCPT TO each of to, DATA
// body. It returns the error of the first command refused (nil: 250 for
// the data).
func send(addr, from string, to []string, body string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("mx.remote.test"); err != nil {
		return err
	}
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := strings.NewReader(body).WriteTo(w); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// code is the SMTP reply code and enhanced code of err, "" for nil.
func code(err error) string {
	if err == nil {
		return ""
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return fmt.Sprintf("%d %d.%d.%d", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	}
	return err.Error()
}

// dsn is an RFC 3464 report for rcpt of one of our messages.
func dsn(returnPath, rcpt, action, status, diag string) string {
	return "From: MAILER-DAEMON@mx.dest.example\r\n" +
		"To: " + returnPath + "\r\n" +
		"Subject: Undelivered Mail Returned to Sender\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n" +
		"\r\n" +
		"--b1\r\n" +
		"Content-Type: text/plain\r\n" +
		"\r\n" +
		"Your message could not be delivered.\r\n" +
		"--b1\r\n" +
		"Content-Type: message/delivery-status\r\n" +
		"\r\n" +
		"Reporting-MTA: dns; mx.dest.example\r\n" +
		"\r\n" +
		"Final-Recipient: rfc822; " + rcpt + "\r\n" +
		"Action: " + action + "\r\n" +
		"Status: " + status + "\r\n" +
		"Remote-MTA: dns; mbox.dest.example\r\n" +
		"Diagnostic-Code: smtp; " + diag + "\r\n" +
		"\r\n" +
		"--b1\r\n" +
		"Content-Type: text/rfc822-headers\r\n" +
		"\r\n" +
		"Return-Path: <" + returnPath + ">\r\n" +
		"From: alice@example.com\r\n" +
		"To: " + rcpt + "\r\n" +
		"Subject: hello\r\n" +
		"\r\n" +
		"--b1--\r\n"
}

// arf is an RFC 5965 complaint; rcpt "" leaves Original-Rcpt-To out.
func arf(returnPath, messageID, rcpt, to string) string {
	var orig string
	if rcpt != "" {
		orig = "Original-Rcpt-To: " + rcpt + "\r\n"
	}
	var rp string
	if returnPath != "" {
		rp = "Return-Path: <" + returnPath + ">\r\n"
	}
	return "From: fbl@isp.example\r\n" +
		"To: " + fblAddress + "\r\n" +
		"Subject: complaint\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/report; report-type=feedback-report; boundary=\"b2\"\r\n" +
		"\r\n" +
		"--b2\r\n" +
		"Content-Type: text/plain\r\n" +
		"\r\n" +
		"This is an email abuse report.\r\n" +
		"--b2\r\n" +
		"Content-Type: message/feedback-report\r\n" +
		"\r\n" +
		"Feedback-Type: abuse\r\n" +
		"User-Agent: isp-fbl/1.0\r\n" +
		"Version: 1\r\n" +
		orig +
		"\r\n" +
		"--b2\r\n" +
		"Content-Type: message/rfc822\r\n" +
		"\r\n" +
		rp +
		"From: alice@example.com\r\n" +
		"To: " + to + "\r\n" +
		"Message-ID: <" + messageID + ">\r\n" +
		"Subject: hello\r\n" +
		"\r\n" +
		"hi\r\n" +
		"--b2--\r\n"
}
