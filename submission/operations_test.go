package submission_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailferry/mailferry/internal/devstack"
	"github.com/mailferry/mailferry/submission"
)

// TestRedisDown: with the queue gone, DATA gets 451 4.3.0 and the ledger
// keeps nothing, so the client's retry cannot make a duplicate.
func TestRedisDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rds, err := devstack.StartRedis(ctx, devstack.RedisOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("start redis: %v", err)
	}
	t.Cleanup(func() { _ = rds.Stop(context.Background()) })
	h := newHarness(t, harnessOptions{redisURL: rds.URL})
	c := h.login()
	if _, err := send(c, "alice@example.com", []string{"bob@example.net"}, message("alice@example.com", "bob@example.net", "before")); err != nil {
		t.Fatalf("before the outage: %v", err)
	}
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := rds.Stop(stopCtx); err != nil {
		t.Fatalf("stop redis: %v", err)
	}
	_, err = send(c, "alice@example.com", []string{"bob@example.net"}, message("alice@example.com", "bob@example.net", "during"))
	se := wantSMTPError(t, "DATA with Redis down", err, 451, smtp.EnhancedCode{4, 3, 0})
	if !strings.Contains(se.Message, "nothing was kept") {
		t.Errorf("451 does not say nothing was kept: %q", se.Message)
	}
	if n := h.messageCount(); n != 1 {
		t.Errorf("%d messages in the ledger, want only the one accepted before the outage", n)
	}
	if n := h.counter("mailferry_smtp_refusals_total", "reason", "unavailable"); n != 1 {
		t.Errorf("refusals{unavailable} = %v, want 1", n)
	}
	// The session survives the refusal.
	if err := c.Noop(); err != nil {
		t.Errorf("NOOP after 451: %v", err)
	}
}

// TestConnectionLimit: beyond MaxConnections a new connection gets 421
// 4.4.5 at once (RFC 5321 3.1), on either port, until one closes.
func TestConnectionLimit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{maxConnections: 2})
	first := dialRaw(t, h.addr, nil)
	dialRaw(t, h.addrTLS, h.tls)

	for _, port := range []struct {
		name string
		dial func() (net.Conn, error)
	}{
		{"587", func() (net.Conn, error) { return net.Dial("tcp", h.addr) }},
		{"465", func() (net.Conn, error) { return tls.Dial("tcp", h.addrTLS, h.tls) }},
	} {
		conn, err := port.dial()
		if err != nil {
			t.Fatalf("%s: dial: %v", port.name, err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		got, _ := io.ReadAll(conn)
		conn.Close()
		if want := "421 4.4.5 " + hostname + " too many connections, try again later\r\n"; string(got) != want {
			t.Errorf("%s over the limit: %q, want %q", port.name, got, want)
		}
	}
	if n := h.counter("mailferry_smtp_refusals_total", "reason", "connection_limit"); n != 2 {
		t.Errorf("refusals{connection_limit} = %v, want 2", n)
	}
	if n := h.counter("mailferry_smtp_connections"); n != 2 {
		t.Errorf("connections gauge %v, want 2", n)
	}

	first.cmd("QUIT")
	// The slot comes free when the server has closed its side.
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 4)
		_, err = io.ReadFull(conn, buf)
		conn.Close()
		if err == nil && string(buf) == "220 " {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection accepted after one of two closed: %q %v", buf, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestShutdown: idle sessions get 421 (RFC 5321 3.8); a transaction in
// progress finishes and is queued; then the listeners are closed.
func TestShutdown(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	idle := dialRaw(t, h.addrTLS, h.tls)
	idle.cmd("EHLO client.test")
	idle.cmd("AUTH PLAIN " + plainIR(tenant, h.secret))

	busy := dialRaw(t, h.addr, nil)
	busy.cmd("EHLO client.test")
	busy.startTLS(h.tls)
	busy.cmd("EHLO client.test")
	busy.cmd("AUTH PLAIN " + plainIR(tenant, h.secret))
	busy.cmd("MAIL FROM:<alice@example.com>")
	busy.cmd("RCPT TO:<bob@example.net>")
	if got := busy.cmd("DATA"); !strings.HasPrefix(got, "354 ") {
		t.Fatalf("DATA: %q", got)
	}
	msg := message("alice@example.com", "bob@example.net", "in flight")
	busy.write(msg[:20])

	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		stopped <- h.srv.Shutdown(ctx)
	}()

	if got := idle.reply(); !strings.HasPrefix(got, "421 ") {
		t.Errorf("idle session at shutdown: %q, want 421", got)
	}
	busy.write(msg[20:], ".\r\n")
	if got := busy.reply(); !strings.HasPrefix(got, "250 2.0.0 queued as ") {
		t.Errorf("message in flight at shutdown: %q", got)
	}
	if got := busy.cmd("NOOP"); !strings.HasPrefix(got, "421 ") {
		t.Errorf("command after the transaction, while draining: %q, want 421", got)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if n := h.counter("mailferry_smtp_connections"); n != 0 {
		t.Errorf("%v connections open after Shutdown", n)
	}
	if _, err := idle.r.ReadByte(); err == nil {
		t.Errorf("idle connection still open after Shutdown")
	}
	for range 2 {
		if err := <-h.served; !errors.Is(err, submission.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	}
	if n := h.messageCount(); n != 1 {
		t.Errorf("%d messages in the ledger, want the one in flight", n)
	}
	if conn, err := net.Dial("tcp", h.addr); err == nil {
		conn.Close()
		t.Errorf("587 still accepts after Shutdown")
	}
}

// TestNew: missing options are named.
func TestNew(t *testing.T) {
	_, err := submission.New(submission.Options{})
	if err == nil {
		t.Fatal("New with no options succeeded")
	}
	for _, want := range []string{"Intake", "Auth", "TLSConfig", "Hostname", "MaxMessageBytes", "MaxRecipients"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

// TestSlowClient: a client that sends nothing is cut off by the command
// timeout with 421; a message may take longer than one command, up to the
// data timeout, and one that stalls beyond it gets a 4xx.
func TestSlowClient(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{commandTimeout: 500 * time.Millisecond, dataTimeout: 3 * time.Second})
	r := dialRaw(t, h.addr, nil)
	if got := r.reply(); !strings.HasPrefix(got, "421 4.4.2 ") {
		t.Errorf("silent client: %q, want 421 4.4.2", got)
	}
	if _, err := r.r.ReadByte(); err == nil {
		t.Errorf("connection still open after the timeout")
	}

	r = dialRaw(t, h.addrTLS, h.tls)
	r.cmd("EHLO client.test")
	r.cmd("AUTH PLAIN " + plainIR(tenant, h.secret))
	startData := func() {
		r.cmd("MAIL FROM:<alice@example.com>")
		r.cmd("RCPT TO:<bob@example.net>")
		if got := r.cmd("DATA"); !strings.HasPrefix(got, "354 ") {
			t.Fatalf("DATA: %q", got)
		}
	}
	startData()
	msg := message("alice@example.com", "bob@example.net", "slow")
	r.write(msg[:10])
	time.Sleep(time.Second) // the client pauses longer than a command may take
	r.write(msg[10:], ".\r\n")
	if got := r.reply(); !strings.HasPrefix(got, "250 2.0.0 queued as ") {
		t.Errorf("slow message within the data timeout: %q", got)
	}

	startData()
	r.write(msg[:10])
	if got := r.reply(); !strings.HasPrefix(got, "451 4.4.2 ") {
		t.Errorf("stalled message: %q, want 451 4.4.2", got)
	}
	if n := h.messageCount(); n != 1 {
		t.Errorf("%d messages in the ledger, want 1", n)
	}
}
