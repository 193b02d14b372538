package inbound

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/google/uuid"

	"github.com/mailferry/mailferry/budget"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/returnpath"
	"github.com/mailferry/mailferry/store"
)

// TestListenerRecipients: only return paths whose tag verifies and the FBL
// address are taken; everything else, forged and altered tags included,
// is 550 5.7.1 at RCPT, whatever the sender.
func TestListenerRecipients(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	addr := e.listen(nil)
	id := uuid.Must(uuid.NewV7())
	good := e.signer.Address(id, 3)
	local := good[:strings.IndexByte(good, '@')]
	other, err := returnpath.New(bounceDomain, []byte(strings.Repeat("k", 32)))
	if err != nil {
		t.Fatal(err)
	}
	altered := []byte(local)
	last := len(altered) - 1
	if altered[last] == 'a' {
		altered[last] = 'b'
	} else {
		altered[last] = 'a'
	}
	tests := []struct {
		name, rcpt, want string
	}{
		{"return path", good, ""},
		{"return path in upper case", strings.ToUpper(local) + "@BOUNCES.example.com", ""},
		{"several recipients", e.signer.Address(id, -1), ""},
		{"fbl address", fblAddress, ""},
		{"fbl address, domain in upper case", "fbl@BOUNCES.EXAMPLE.COM", ""},
		{"altered tag", string(altered) + "@" + bounceDomain, "550 5.7.1"},
		{"other index, same tag", strings.Replace(local, "-3-", "-4-", 1) + "@" + bounceDomain, "550 5.7.1"},
		{"another key's tag", other.Address(id, 3), "550 5.7.1"},
		{"return path at another domain", local + "@example.org", "550 5.7.1"},
		{"postmaster", "postmaster@" + bounceDomain, "550 5.7.1"},
		{"relay attempt", "victim@example.org", "550 5.7.1"},
		{"fbl local part in another case", "FBL@" + bounceDomain, "550 5.7.1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, from := range []string{"", "someone@example.net"} {
				err := send(addr, from, []string{tc.rcpt}, dsn(good, "user0@dest.example", "failed", "5.1.1", "550 5.1.1 no"))
				if got := code(err); got != tc.want {
					t.Errorf("MAIL FROM:<%s> RCPT TO:<%s>: %q, want %q", from, tc.rcpt, got, tc.want)
				}
			}
		})
	}
	if got := e.metric(ResultRejected); got != 2*7 {
		t.Errorf("rejected %v, want %d", got, 2*7)
	}
	if n := e.count(`SELECT count(*) FROM inbound_messages`); n != 2*5 {
		t.Errorf("%d reports stored, want %d", n, 2*5)
	}
}

// TestListenerLimits: a report over the size limit is refused with 552,
// a client over its connection limit gets 421, and the listener still
// takes reports afterwards.
func TestListenerLimits(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	addr := e.listen(func(o *ServerOptions) { o.MaxMessageBytes = 64 << 10; o.MaxConnectionsPerIP = 2 })
	rp := e.signer.Address(uuid.Must(uuid.NewV7()), 0)
	big := dsn(rp, "user0@dest.example", "failed", "5.1.1", "550 no") + strings.Repeat("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n", 2000)
	if got := code(send(addr, "", []string{rp}, big)); !strings.HasPrefix(got, "552") {
		t.Errorf("oversized report: %q, want 552", got)
	}
	// The oversized report's connection may still count until the server
	// has seen it close: take the two slots as they come free.
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 2 {
		wait.For(t, "a free connection slot", func() bool {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			if line, _ := bufio.NewReader(c).ReadString('\n'); !strings.HasPrefix(line, "220") {
				c.Close()
				return false
			}
			held = append(held, c)
			return true
		})
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if !strings.HasPrefix(line, "421 4.7.0") {
		t.Errorf("third connection from one address: %q, want 421 4.7.0", line)
	}
	for _, c := range held {
		c.Close()
	}
	held = nil
	wait.For(t, "a report to be accepted once the connections closed", func() bool {
		return send(addr, "", []string{rp}, dsn(rp, "user0@dest.example", "failed", "5.1.1", "550 no")) == nil
	})
}

// savingFails is a Saver whose store is down.
type savingFails struct{}

func (savingFails) SaveInbound(context.Context, store.InboundMessage) (uuid.UUID, error) {
	return uuid.Nil, errors.New("connection refused")
}

// TestListenerStoreDown: a report that cannot be stored gets 451 4.3.0, so
// the sender keeps it and tries again; it never gets a 250.
func TestListenerStoreDown(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	addr := e.listen(func(o *ServerOptions) { o.Saver = savingFails{} })
	rp := e.signer.Address(uuid.Must(uuid.NewV7()), 0)
	if got := code(send(addr, "", []string{rp}, dsn(rp, "user0@dest.example", "failed", "5.1.1", "550 no"))); got != "451 4.3.0" {
		t.Errorf("store down: %q, want 451 4.3.0", got)
	}
}

// TestListenerHostile: malformed MIME, a huge header and a report of many
// parts are stored (the listener does not parse), the processor keeps the
// unparseable ones with a reason, and both stay up: a good report after
// them is applied.
func TestListenerHostile(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.processor(nil)
	addr := e.listen(func(o *ServerOptions) { o.Stored = p.Wake })
	m := e.message(1, 1)
	rp := e.signer.Address(m.ID, 0)
	var bomb strings.Builder
	bomb.WriteString("MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"z\"\r\n\r\n")
	for range 20000 {
		bomb.WriteString("--z\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n")
	}
	bomb.WriteString("--z--\r\n")
	var nested strings.Builder
	for i := range 200 {
		nested.WriteString("Content-Type: multipart/mixed; boundary=\"n" + strings.Repeat("x", i%5) + string(rune('a'+i%26)) + "\"\r\n\r\n--n" + strings.Repeat("x", i%5) + string(rune('a'+i%26)) + "\r\n")
	}
	hostile := map[string]string{
		"no header end":     "Content-Type: multipart/report; boundary=\"",
		"boundary missing":  "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status\r\n\r\n--\r\n--\r\n",
		"binary":            "\x00\x01\x02\xff\xfe\r\n\r\n\x00",
		"huge header":       "Subject: " + strings.Repeat(strings.Repeat("a", 900)+"\r\n ", 2500) + "\r\n\r\nbody\r\n",
		"many headers":      strings.Repeat("X-H: v\r\n", 100000) + "\r\nbody\r\n",
		"report bomb":       bomb.String(),
		"nesting":           nested.String(),
		"bad base64":        "MIME-Version: 1.0\r\nContent-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!\r\n",
		"empty":             "",
		"plain, no address": "Subject: hello\r\n\r\nThis is not a bounce.\r\n",
	}
	for name, body := range hostile {
		if err := send(addr, "", []string{rp}, body); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A line past go-smtp's limit (2000 octets; RFC 5321 4.5.3.1.6 allows
	// 1000) is refused, and the listener goes on.
	if err := send(addr, "", []string{rp}, "Subject: "+strings.Repeat("a", 1<<20)+"\r\n\r\n"); err == nil {
		t.Error("a 1 MiB line was taken")
	}
	if err := send(addr, "", []string{rp}, dsn(rp, "user0@dest.example", "failed", "5.1.1", "550 5.1.1 no such user")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	wait.Within(t, time.Minute, "every report to be processed", func() bool {
		return e.count(`SELECT count(*) FROM inbound_messages WHERE status = 'pending'`) == 0
	})
	if n := e.count(`SELECT count(*) FROM inbound_messages WHERE status = 'unparseable' AND coalesce(reason, '') = ''`); n != 0 {
		t.Errorf("%d unparseable reports without a reason", n)
	}
	if n := e.count(`SELECT count(*) FROM recipients WHERE message_id = $1 AND status = 'bounced' AND bounce_async`, m.ID); n != 1 {
		t.Error("the good report after the hostile ones was not applied")
	}
}

// TestListenerSTARTTLS: with a certificate the listener offers STARTTLS
// (RFC 3207) and takes a report over it; without one it offers none.
func TestListenerSTARTTLS(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cert := testmx.SelfSigned(t, "inbound.test")
	withTLS := e.listen(func(o *ServerOptions) { o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}} })
	plain := e.listen(nil)
	rp := e.signer.Address(uuid.Must(uuid.NewV7()), 0)
	c, err := smtp.DialStartTLS(withTLS, &tls.Config{InsecureSkipVerify: true}) // a self-signed test certificate
	if err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	defer c.Close()
	if _, ok := c.TLSConnectionState(); !ok {
		t.Fatal("no TLS after STARTTLS")
	}
	if err := c.SendMail("", []string{rp}, strings.NewReader(dsn(rp, "user0@dest.example", "failed", "5.1.1", "550 no"))); err != nil {
		t.Errorf("report over TLS: %v", err)
	}
	p, err := smtp.Dial(plain)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Hello("mx.remote.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := p.Extension("STARTTLS"); ok {
		t.Error("STARTTLS offered without a certificate")
	}
}

// TestListenerBudget: with the bytes in flight at their cap (shared with
// the API and submission), a report gets 452 4.3.1 and is sent again
// later; once bytes are given back it is taken.
func TestListenerBudget(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	b, err := budget.New(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	addr := e.listen(func(o *ServerOptions) { o.Budget = b })
	held, err := b.Reserve(1 << 20) // the API holds it all
	if err != nil {
		t.Fatal(err)
	}
	rp := e.signer.Address(uuid.Must(uuid.NewV7()), 0)
	report := dsn(rp, "user0@dest.example", "failed", "5.1.1", "550 no")
	if got := code(send(addr, "", []string{rp}, report)); got != "452 4.3.1" {
		t.Errorf("budget full: %q, want 452 4.3.1", got)
	}
	held.Release()
	if err := send(addr, "", []string{rp}, report); err != nil {
		t.Errorf("budget free: %v", err)
	}
	if b.InUse() != 0 {
		t.Errorf("%d bytes still held after the reports", b.InUse())
	}
}
