package testmx

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Drop is a scripted reply that closes the connection instead of answering:
// at DATA it closes after the first bytes of the message arrive.
const Drop = "drop"

// SMTPOptions shape a test server.
type SMTPOptions struct {
	// Domain is the name in the greeting; "mx.test" if empty.
	Domain string
	// Cert is the certificate offered by STARTTLS; a self-signed one for
	// "mx.test" if nil.
	Cert *tls.Certificate
	// NoTLS stops the server from offering STARTTLS.
	NoTLS bool
	// BrokenTLS offers STARTTLS but fails every handshake.
	BrokenTLS bool
	// ImplicitTLS speaks TLS from the first byte (RFC 8314 smtps).
	ImplicitTLS bool
	// SMTPUTF8 advertises SMTPUTF8 (RFC 6531).
	SMTPUTF8 bool
	// RequireTLS advertises REQUIRETLS after STARTTLS (RFC 8689 2).
	RequireTLS bool
	// MaxSize advertises SIZE with this limit (RFC 1870) and enforces it.
	MaxSize int64
	// MaxRecipients advertises LIMITS RCPTMAX (RFC 9422) and answers 452 to
	// each RCPT past it.
	MaxRecipients int
	// Users, if set, offers AUTH PLAIN over TLS and requires it before MAIL.
	Users map[string]string
	// DataDelay holds the reply to each message's data this long after the
	// message is recorded, like a server that scans mail before answering:
	// a client that dies meanwhile leaves a message it never saw accepted.
	DataDelay time.Duration
}

// Message is one message whose DATA the server read to the end.
type Message struct {
	From       string
	To         []string // recipients the server accepted
	Data       []byte   // as received, dot-stuffing undone
	UTF8       bool     // MAIL carried SMTPUTF8
	RequireTLS bool     // MAIL carried REQUIRETLS (RFC 8689 3)
	Body       string   // MAIL BODY= parameter
	Size       int64    // MAIL SIZE= parameter
	TLS        bool
	TLSVersion uint16
	Helo       string
	User       string // AUTH identity, if any
	Reply      string // the scripted DATA reply, "" for the default 250
}

// Hello is one EHLO/HELO the server saw.
type Hello struct {
	Name string
	TLS  bool
}

// SMTP is a go-smtp server on one loopback listener.
type SMTP struct {
	addr netip.AddrPort
	srv  *smtp.Server
	ln   *connTracker

	mu       sync.Mutex
	mail     []string
	rcpt     map[string][]string
	data     []string
	messages []Message
	hellos   []Hello
	// inTx and peakTx count sessions between an accepted MAIL and the end
	// of its transaction: the concurrency a client's limits must hold to.
	inTx, peakTx int
}

// StartSMTP serves SMTP on ln (from Listen) until the test ends.
func StartSMTP(t testing.TB, ln net.Listener, opts SMTPOptions) *SMTP {
	t.Helper()
	ap := netip.MustParseAddrPort(ln.Addr().String())
	mustLoopback(t, ap.Addr().String())
	s := &SMTP{addr: ap, rcpt: make(map[string][]string), ln: newConnTracker(ln)}
	srv := smtp.NewServer(&backend{s: s, opts: opts})
	srv.Domain = opts.Domain
	if srv.Domain == "" {
		srv.Domain = "mx.test"
	}
	srv.ReadTimeout = 30 * time.Second
	srv.WriteTimeout = 30 * time.Second
	srv.MaxMessageBytes = opts.MaxSize
	srv.MaxRecipients = opts.MaxRecipients
	srv.EnableSMTPUTF8 = opts.SMTPUTF8
	srv.EnableREQUIRETLS = opts.RequireTLS
	srv.ErrorLog = log.New(io.Discard, "", 0)
	if !opts.NoTLS || opts.ImplicitTLS {
		cert := opts.Cert
		if cert == nil {
			c := SelfSigned(t, "mx.test")
			cert = &c
		}
		cfg := &tls.Config{Certificates: []tls.Certificate{*cert}}
		if opts.BrokenTLS {
			cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
				return nil, errors.New("testmx: TLS broken on purpose")
			}
		}
		srv.TLSConfig = cfg
	}
	var l net.Listener = s.ln
	if opts.ImplicitTLS {
		l = tls.NewListener(s.ln, srv.TLSConfig)
		srv.TLSConfig = nil // no STARTTLS inside TLS
	}
	s.srv = srv
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		s.ln.Close() // in case Serve had not registered it yet
		s.ln.closeAll()
		<-done
	})
	return s
}

// Addr is where the server listens.
func (s *SMTP) Addr() netip.AddrPort { return s.addr }

// OnMail scripts the replies to the next MAIL commands, one each, e.g.
// "451 4.3.0 try later"; "250 …" accepts; Drop hangs up; once used up, MAIL
// is accepted.
func (s *SMTP) OnMail(replies ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mail = append(s.mail, replies...)
}

// OnRcpt scripts the replies to the next RCPT commands for addr, e.g.
// "550 5.1.1 no such user", or "451 4.7.1 greylisted" then accept.
func (s *SMTP) OnRcpt(addr string, replies ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := strings.ToLower(addr)
	s.rcpt[k] = append(s.rcpt[k], replies...)
}

// OnData scripts the replies to the next messages, after their data.
func (s *SMTP) OnData(replies ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data = append(s.data, replies...)
}

// Messages returns the messages received so far.
func (s *SMTP) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// Received counts the messages accepted so far, without copying them.
func (s *SMTP) Received() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.messages)
}

// PeakTransactions is the most mail transactions that were open at once
// (MAIL accepted, DATA not yet answered), over all connections.
func (s *SMTP) PeakTransactions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peakTx
}

// transaction notes a transaction opening (+1) or ending (-1).
func (s *SMTP) transaction(delta int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inTx += delta
	s.peakTx = max(s.peakTx, s.inTx)
}

// Hellos returns every EHLO/HELO seen so far, in order.
func (s *SMTP) Hellos() []Hello {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Hello(nil), s.hellos...)
}

// Connections reports how many connections the server accepted and how
// many are still open.
func (s *SMTP) Connections() (accepted, open int) { return s.ln.counts() }

// PeakConnections is the most connections that were open at once, idle
// ones included: what a fleet-wide connection limit must hold to.
func (s *SMTP) PeakConnections() int {
	s.ln.mu.Lock()
	defer s.ln.mu.Unlock()
	return s.ln.peak
}

// ResetPeaks starts PeakTransactions and PeakConnections again from what
// is open now, so a test can judge one phase of a run on its own.
func (s *SMTP) ResetPeaks() {
	s.mu.Lock()
	s.peakTx = s.inTx
	s.mu.Unlock()
	s.ln.mu.Lock()
	s.ln.peak = len(s.ln.open)
	s.ln.mu.Unlock()
}

// DropConnections closes every open connection, as a server does to idle
// sessions (RFC 5321 4.5.3.2.7), while it goes on listening.
func (s *SMTP) DropConnections() { s.ln.closeAll() }

func (s *SMTP) next(q *[]string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(*q) == 0 {
		return ""
	}
	r := (*q)[0]
	*q = (*q)[1:]
	return r
}

func (s *SMTP) nextRcpt(addr string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := strings.ToLower(addr)
	q := s.rcpt[k]
	if len(q) == 0 {
		return ""
	}
	s.rcpt[k] = q[1:]
	return q[0]
}

type backend struct {
	s    *SMTP
	opts SMTPOptions
}

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	st, isTLS := c.TLSConnectionState()
	b.s.mu.Lock()
	b.s.hellos = append(b.s.hellos, Hello{Name: c.Hostname(), TLS: isTLS})
	b.s.mu.Unlock()
	return &session{b: b, c: c, tls: isTLS, tlsVersion: st.Version}, nil
}

type session struct {
	b          *backend
	c          *smtp.Conn
	tls        bool
	tlsVersion uint16
	user       string

	from string
	opts smtp.MailOptions
	to   []string
	inTx bool
}

var _ smtp.AuthSession = (*session)(nil)

func (s *session) AuthMechanisms() []string {
	if len(s.b.opts.Users) == 0 {
		return nil
	}
	return []string{sasl.Plain}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		if want, ok := s.b.opts.Users[user]; !ok || want != pass {
			return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "bad credentials"}
		}
		s.user = user
		return nil
	}), nil
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if len(s.b.opts.Users) > 0 && s.user == "" {
		return smtp.ErrAuthRequired
	}
	if err := s.script(s.b.s.next(&s.b.s.mail)); err != nil {
		return err
	}
	s.from = from
	if opts != nil {
		s.opts = *opts
	}
	s.openTx()
	return nil
}

func (s *session) openTx() {
	if !s.inTx {
		s.inTx = true
		s.b.s.transaction(+1)
	}
}

// endTx runs before the reply that ends the transaction is sent, so a
// client that starts the next one on seeing it never overlaps this one.
func (s *session) endTx() {
	if s.inTx {
		s.inTx = false
		s.b.s.transaction(-1)
	}
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if err := s.script(s.b.s.nextRcpt(to)); err != nil {
		return err
	}
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	defer s.endTx()
	reply := s.b.s.next(&s.b.s.data)
	if reply == Drop {
		io.ReadFull(r, make([]byte, 16))
		s.c.Conn().Close()
		return errors.New("dropped")
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.b.s.mu.Lock()
	s.b.s.messages = append(s.b.s.messages, Message{
		From: s.from, To: append([]string(nil), s.to...), Data: data,
		UTF8: s.opts.UTF8, RequireTLS: s.opts.RequireTLS, Body: string(s.opts.Body), Size: s.opts.Size,
		TLS: s.tls, TLSVersion: s.tlsVersion, Helo: s.c.Hostname(), User: s.user, Reply: reply,
	})
	s.b.s.mu.Unlock()
	if d := s.b.opts.DataDelay; d > 0 {
		time.Sleep(d)
	}
	return s.script(reply)
}

func (s *session) Reset() {
	s.endTx()
	s.from, s.opts, s.to = "", smtp.MailOptions{}, nil
}

func (s *session) Logout() error {
	s.endTx()
	return nil
}

// script turns a scripted reply into what the go-smtp backend returns. 421
// and Drop also close the connection, as a real server does.
func (s *session) script(reply string) error {
	if reply == "" {
		return nil
	}
	if reply == Drop {
		s.c.Conn().Close()
		return errors.New("dropped")
	}
	e := parseScripted(reply)
	if e.Code/100 == 2 {
		return nil
	}
	if e.Code == 421 {
		fmt.Fprintf(s.c.Conn(), "%s\r\n", reply)
		s.c.Conn().Close()
	}
	return e
}

// parseScripted reads "550 5.1.1 text" (the enhanced code is optional).
func parseScripted(reply string) *smtp.SMTPError {
	code, rest, _ := strings.Cut(reply, " ")
	n, err := strconv.Atoi(code)
	if err != nil || n < 200 || n > 599 {
		panic("testmx: bad scripted reply " + strconv.Quote(reply))
	}
	e := &smtp.SMTPError{Code: n, EnhancedCode: smtp.NoEnhancedCode, Message: rest}
	if first, text, _ := strings.Cut(rest, " "); strings.Count(first, ".") == 2 {
		var ec smtp.EnhancedCode
		if _, err := fmt.Sscanf(first, "%d.%d.%d", &ec[0], &ec[1], &ec[2]); err == nil {
			e.EnhancedCode, e.Message = ec, text
		}
	}
	return e
}
