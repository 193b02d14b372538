package relay

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Envelope is one message for the recipients of one destination domain.
type Envelope struct {
	From string   // MAIL FROM addr-spec; "" is the null sender (RFC 5321 4.5.5)
	To   []string // RCPT TO addr-specs, all in one domain
	// Data is the message with CRLF line ends (any DKIM header already
	// prepended). Bare CR and LF are sent as CRLF (see normalizeCRLF).
	Data []byte
	// Needs8Bit: the message has 8-bit content. go-smtp declares
	// BODY=8BITMIME whenever the server offers it (RFC 6152 2); when it does
	// not, the message is sent anyway, as Postfix does, rather than bounced.
	Needs8Bit bool
	// NeedsUTF8: addresses or headers are UTF-8 (RFC 6531). A server
	// without SMTPUTF8 gets nothing: every recipient bounces 5.6.7.
	NeedsUTF8 bool
}

// Timeouts bound each step of a session, so a stuck or slow server costs a
// known time. Zero fields take the default from DefaultTimeouts.
type Timeouts struct {
	Connect   time.Duration // TCP connect
	Greeting  time.Duration // 220 greeting (and the first EHLO, which go-smtp sends in the same call)
	Hello     time.Duration // EHLO after STARTTLS, STARTTLS and AUTH replies
	TLS       time.Duration // TLS handshake
	Mail      time.Duration // MAIL FROM reply
	Rcpt      time.Duration // each RCPT TO reply
	DataInit  time.Duration // 354 reply to DATA
	DataBlock time.Duration // each block of message data written
	DataEnd   time.Duration // reply after the final "."
	Quit      time.Duration // QUIT reply; a courtesy, so short
}

// DefaultTimeouts are RFC 5321 4.5.3.2's minimums where it names them.
func DefaultTimeouts() Timeouts {
	return Timeouts{
		Connect:   30 * time.Second, // not in RFC 5321; Postfix smtp_connect_timeout
		Greeting:  5 * time.Minute,  // RFC 5321 4.5.3.2.1
		Hello:     5 * time.Minute,  // like MAIL; Postfix smtp_helo_timeout
		TLS:       time.Minute,      // a healthy handshake takes milliseconds
		Mail:      5 * time.Minute,  // RFC 5321 4.5.3.2.2
		Rcpt:      5 * time.Minute,  // RFC 5321 4.5.3.2.3
		DataInit:  2 * time.Minute,  // RFC 5321 4.5.3.2.4
		DataBlock: 3 * time.Minute,  // RFC 5321 4.5.3.2.5
		DataEnd:   10 * time.Minute, // RFC 5321 4.5.3.2.6
		Quit:      30 * time.Second,
	}
}

func (t Timeouts) withDefaults() Timeouts {
	d := DefaultTimeouts()
	for _, p := range []struct{ v, def *time.Duration }{
		{&t.Connect, &d.Connect}, {&t.Greeting, &d.Greeting}, {&t.Hello, &d.Hello},
		{&t.TLS, &d.TLS}, {&t.Mail, &d.Mail}, {&t.Rcpt, &d.Rcpt}, {&t.DataInit, &d.DataInit},
		{&t.DataBlock, &d.DataBlock}, {&t.DataEnd, &d.DataEnd}, {&t.Quit, &d.Quit},
	} {
		if *p.v <= 0 {
			*p.v = *p.def
		}
	}
	return t
}

// ClientOptions configure a Client.
type ClientOptions struct {
	// Hostname is the EHLO name (MAILFERRY_HOSTNAME), sent in both EHLOs.
	Hostname string
	// Port is dialled on every host (MAILFERRY_SMTP_PORT); default 25.
	Port int
	// AllowPrivate lets the dialler reach private addresses (tests only).
	AllowPrivate bool
	// RequireTLS: no delivery without TLS, no plaintext fallback (a policy
	// hook for MTA-STS or DANE later).
	RequireTLS bool
	// ImplicitTLS speaks TLS from the first byte (smtps smarthost, RFC 8314).
	ImplicitTLS bool
	Timeouts    Timeouts
	// TLSConfig is a base for the client TLS configuration (tests).
	TLSConfig *tls.Config
	// RootCAs verify server certificates for TLSInfo.Verified; nil means the
	// system roots.
	RootCAs *x509.CertPool
	// Dial replaces the dialler (a test seam). The default is a net.Dialer
	// whose ControlContext applies the guard unless AllowPrivate.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Username and Password, for a smarthost: AUTH PLAIN, else LOGIN (RFC
	// 4954), sent only over TLS whose certificate verified.
	Username, Password string
	// Reuse keeps connections open for the next message to the same host.
	Reuse Reuse
}

// Client delivers messages over SMTP. It holds configuration only and is
// safe for concurrent use.
type Client struct {
	opts ClientOptions
	t    Timeouts
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	pool *connPool
}

var errTLSRequired = errors.New("TLS required")

// dialError marks a failure to connect (enhanced code X.4.1).
type dialError struct {
	addr string
	err  error
}

func (e *dialError) Error() string { return "connect " + e.addr + ": " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// NewClient checks opts.
func NewClient(opts ClientOptions) (*Client, error) {
	if opts.Hostname == "" || strings.ContainsAny(opts.Hostname, " \t\r\n") {
		return nil, fmt.Errorf("EHLO hostname %q: want a domain name", opts.Hostname)
	}
	if opts.Port == 0 {
		opts.Port = 25
	}
	if opts.Port < 1 || opts.Port > 65535 {
		return nil, fmt.Errorf("port %d out of range", opts.Port)
	}
	if (opts.Username == "") != (opts.Password == "") {
		return nil, errors.New("AUTH: set both username and password, or neither")
	}
	c := &Client{opts: opts, t: opts.Timeouts.withDefaults(), dial: opts.Dial, pool: newConnPool(opts.Reuse)}
	if c.dial == nil {
		d := &net.Dialer{}
		if !opts.AllowPrivate {
			d.ControlContext = guardControl
		}
		c.dial = d.DialContext
	}
	return c, nil
}

// Deliver runs one transaction for env on the first of hosts that will take
// it: hosts in order, each host's addresses in order (RFC 5321 5.1). A host
// that cannot be reached, fails before MAIL is accepted (greeting, EHLO,
// 4xx to MAIL, a 421, a network error) is left for the next one; once MAIL
// is accepted, that host's replies decide every recipient. If no host got
// that far, every recipient is deferred with the last host's error.
//
// A 5xx greeting or EHLO is skipped like a 4xx (Postfix's
// smtp_skip_5xx_greeting): it says "not this host", not "not this
// recipient". A 5xx to MAIL ends the attempt: every recipient bounces.
func (c *Client) Deliver(ctx context.Context, hosts []Host, env Envelope) (a Attempt) {
	a.Started = time.Now()
	defer func() { a.Duration = time.Since(a.Started) }()
	a.Results = make([]Result, len(env.To))

	sub, idx := env, []int(nil)
	sub.To = nil
	if bad := badAddr(env.From); bad != "" {
		r := localResult(enhBadFromSyntax, fmt.Errorf("MAIL FROM address %q: %s", env.From, bad))
		for i := range a.Results {
			a.Results[i] = r
		}
		return a
	}
	for i, to := range env.To {
		if bad := badAddr(to); bad != "" || to == "" {
			a.Results[i] = localResult(enhBadRcptSyntax, fmt.Errorf("RCPT TO address %q: %s", to, cmp.Or(bad, "empty")))
			continue
		}
		idx = append(idx, i)
		sub.To = append(sub.To, to)
	}
	if len(idx) == 0 {
		return a
	}
	sub.Data = normalizeCRLF(env.Data)
	put := func(rs []Result) {
		for j, i := range idx {
			a.Results[i] = rs[j]
		}
	}

	var (
		last           error
		tried, guarded int
	)
hosts:
	for _, h := range hosts {
		for _, ip := range h.Addrs {
			if err := ctx.Err(); err != nil {
				last = context.Cause(ctx)
				break hosts
			}
			out, ok := c.reuse(ctx, h, ip, &sub)
			if !ok {
				out = c.connect(ctx, h, ip, &sub, !c.opts.ImplicitTLS)
			}
			if out.tlsFailed && !c.opts.RequireTLS {
				// PRODUCT.md: a failed TLS handshake retries that host in
				// plaintext.
				a.Tried = append(a.Tried, HostError{Host: h.Name, IP: ip, Err: out.err})
				out = c.connect(ctx, h, ip, &sub, false)
			}
			if out.results != nil {
				a.Host, a.IP, a.TLS = h.Name, ip, out.tls
				for i := range out.results {
					if out.results[i].Err != nil {
						out.results[i].Err = withCause(ctx, out.results[i].Err)
					}
				}
				put(out.results)
				return a
			}
			a.Tried = append(a.Tried, HostError{Host: h.Name, IP: ip, Err: out.err})
			last = out.err
			tried++
			if out.guarded {
				guarded++
			}
		}
	}
	var r Result
	switch {
	case tried > 0 && guarded == tried:
		r = localResult(enhNoRoute, fmt.Errorf("%w: %w", ErrPrivateOnly, last))
	case last != nil:
		r = failureResult(last)
	default:
		r = localResult(enhNoRouteTemp, fmt.Errorf("%w: no host address to try", ErrNoAddress))
	}
	rs := make([]Result, len(idx))
	for i := range rs {
		rs[i] = r
	}
	put(rs)
	return a
}

// badAddr rejects what would break the command line: RFC 5321 4.1.2 paths
// never hold CR, LF, NUL or angle brackets. mail/ validates addresses
// properly; this only keeps a caller's mistake from becoming an SMTP
// injection.
func badAddr(s string) string {
	if strings.ContainsAny(s, "\r\n\x00<>") {
		return "contains CR, LF, NUL or angle brackets"
	}
	return ""
}

// outcome is the result of one connection.
type outcome struct {
	results   []Result // set when a transaction ran: final for this attempt
	tls       *TLSInfo
	err       error // why the host could not be used
	tlsFailed bool  // the TLS handshake failed: plaintext may be retried
	guarded   bool  // the guard refused the address
}

// session is one connection to one address.
type session struct {
	c      *Client
	host   Host
	ip     netip.Addr
	conn   *deadlineConn
	sc     *smtp.Client
	tls    *TLSInfo
	broken bool // the connection cannot carry another command

	born      time.Time
	idleSince time.Time
	used      int // transactions run
}

// CloseIdle ends the connections kept for reuse, as at shutdown.
func (c *Client) CloseIdle() { c.pool.closeIdle() }

// SweepIdle ends the connections idle longer than Reuse.Idle.
func (c *Client) SweepIdle() { c.pool.sweep() }

// reuse runs the transaction on an idle connection to h at ip, if there is
// one. ok is false when there was none or it turned out dead before the
// transaction began: the caller then dials afresh. A receiver may close an
// idle connection at any time (RFC 5321 4.5.3.2.7), so RSET checks it first.
func (c *Client) reuse(ctx context.Context, h Host, ip netip.Addr, env *Envelope) (out outcome, ok bool) {
	s := c.pool.take(poolKey{host: h.Name, ip: ip})
	if s == nil {
		return outcome{}, false
	}
	stop := context.AfterFunc(ctx, s.conn.abort)
	s.sc.CommandTimeout = c.t.Hello
	if err := s.sc.Reset(); err != nil {
		stop()
		s.note(err)
		s.close()
		return outcome{}, false
	}
	results, err := s.transaction(env)
	s.used++
	if !stop() {
		s.broken = true // ctx ended mid-transaction: deadlines are spent
	}
	if err != nil {
		// Refused before MAIL was accepted (a 4xx, a 421, a dropped
		// connection): a fresh connection gets the host's own answer.
		s.close()
		return outcome{}, false
	}
	c.release(s)
	return outcome{results: results, tls: s.tls}, true
}

// release pools s if it can carry another transaction, else closes it.
func (c *Client) release(s *session) {
	if s.broken {
		s.close()
		return
	}
	c.pool.put(s)
}

// close says QUIT when the connection can still carry it and closes it.
func (s *session) close() {
	s.quit()
	s.conn.Close()
}

// connect runs one session with ip. It closes the connection unless the
// transaction left it fit for reuse.
func (c *Client) connect(ctx context.Context, h Host, ip netip.Addr, env *Envelope, tryTLS bool) outcome {
	if !c.opts.AllowPrivate {
		if err := checkAddr(ip); err != nil {
			return outcome{err: err, guarded: true}
		}
	}
	addr := netip.AddrPortFrom(ip, uint16(c.opts.Port)).String()
	dctx, cancel := context.WithTimeout(ctx, c.t.Connect)
	raw, err := c.dial(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return outcome{err: &dialError{addr: addr, err: withCause(ctx, err)}, guarded: errors.Is(err, ErrPrivateAddress)}
	}
	conn := &deadlineConn{Conn: raw}
	// go-smtp takes no context: cancelling ctx expires every deadline.
	stop := context.AfterFunc(ctx, conn.abort)

	s := &session{c: c, host: h, ip: ip, conn: conn, born: time.Now()}
	out := s.run(env, tryTLS)
	if !stop() {
		s.broken = true
	}
	if out.results != nil {
		s.used++
		c.release(s)
	} else {
		conn.Close()
	}
	if out.err != nil {
		out.err = fmt.Errorf("%s[%s]: %w", h.Name, ip, withCause(ctx, out.err))
	}
	return out
}

// withCause names a cancelled context as the reason behind the i/o timeout
// it provoked.
func withCause(ctx context.Context, err error) error {
	if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		return fmt.Errorf("%w: %w", context.Cause(ctx), err)
	}
	return err
}

// note records whether err leaves the connection usable: only a complete
// reply other than 421 does.
func (s *session) note(err error) error {
	var e *smtp.SMTPError
	if !errors.As(err, &e) || e.Code == codeClosing {
		s.broken = true
	}
	return err
}

func (s *session) run(env *Envelope, tryTLS bool) outcome {
	var wire net.Conn = s.conn
	if s.c.opts.ImplicitTLS {
		tc, err := s.handshake()
		if err != nil {
			return outcome{err: fmt.Errorf("TLS handshake (implicit TLS, RFC 8314): %w", err)}
		}
		wire = tc
	}
	w := &wireConn{Conn: wire}
	if err := s.hello(w, s.c.t.Greeting); err != nil {
		s.note(err)
		s.quit()
		return outcome{err: fmt.Errorf("greeting or EHLO: %w", err)}
	}
	if !s.c.opts.ImplicitTLS {
		offered, _ := s.sc.Extension("STARTTLS")
		switch {
		case offered && tryTLS:
			if out, ok := s.startTLS(w); !ok {
				s.quit()
				return out
			}
		case s.c.opts.RequireTLS:
			s.quit()
			return outcome{err: fmt.Errorf("%w: server does not offer STARTTLS", errTLSRequired)}
		}
	}
	if s.c.opts.Username != "" {
		if err := s.auth(); err != nil {
			s.quit()
			return outcome{err: err}
		}
	}
	results, err := s.transaction(env)
	if err != nil {
		s.quit()
		return outcome{err: err}
	}
	// The caller pools the connection or says QUIT.
	return outcome{results: results, tls: s.tls}
}

// hello starts a go-smtp client on w and says EHLO with our name: go-smtp
// would say "localhost" otherwise (RFC 5321 4.1.4: the argument is the
// client's FQDN), which some receivers refuse.
func (s *session) hello(w *wireConn, timeout time.Duration) error {
	s.sc = smtp.NewClient(w)
	s.sc.CommandTimeout = timeout
	return s.sc.Hello(s.c.opts.Hostname)
}

// startTLS upgrades the session (RFC 3207). ok is false when the session
// must end with out.
//
// go-smtp v0.25.1 has no Client method for this: NewClientStartTLS does it
// but only after its own "EHLO localhost", and the maintainers keep it so
// (emersion/go-smtp#297). So we send STARTTLS ourselves on the same wire —
// go-smtp has read exactly the EHLO reply, and the server sends nothing
// unasked — then start a fresh go-smtp client over TLS. Dropping the old
// client also drops anything a man in the middle slipped into its buffer
// before the handshake (RFC 3207 4.2, the STARTTLS injection flaw).
func (s *session) startTLS(w *wireConn) (out outcome, ok bool) {
	s.conn.SetDeadline(time.Now().Add(s.c.t.Hello))
	if _, err := w.Write([]byte("STARTTLS\r\n")); err != nil {
		s.broken = true
		return outcome{err: fmt.Errorf("STARTTLS: %w", err)}, false
	}
	rep, err := readReply(bufio.NewReader(w))
	if err != nil {
		s.broken = true
		return outcome{err: fmt.Errorf("STARTTLS: %w", err)}, false
	}
	s.conn.SetDeadline(time.Time{})
	if rep.Code != codeReady {
		refusal := &smtp.SMTPError{Code: rep.Code, Message: strings.TrimSpace(rep.Enhanced + " " + rep.Text)}
		if s.c.opts.RequireTLS || rep.Code == codeClosing {
			s.note(refusal)
			return outcome{err: fmt.Errorf("%w: STARTTLS refused: %w", errTLSRequired, refusal)}, false
		}
		// RFC 3207 4: after a refusal the session goes on as it was, in
		// plaintext.
		return outcome{}, true
	}
	tc, err := s.handshake()
	if err != nil {
		s.broken = true
		err = fmt.Errorf("TLS handshake: %w", err)
		if s.c.opts.RequireTLS {
			err = fmt.Errorf("%w: %w", errTLSRequired, err)
		}
		return outcome{err: err, tlsFailed: true}, false
	}
	// RFC 3207 4.2: the server forgets all it knew; EHLO again, over TLS.
	if err := s.hello(&wireConn{Conn: tc, greeting: []byte("220 TLS started\r\n")}, s.c.t.Hello); err != nil {
		s.note(err)
		return outcome{err: fmt.Errorf("EHLO after STARTTLS: %w", err)}, false
	}
	return outcome{}, true
}

// handshake runs TLS as a client over the session's connection.
//
// Mail between MTAs uses opportunistic TLS (RFC 7435; RFC 3207 4.1 notes
// most certificates cannot be checked against anything): any certificate
// is accepted, because unverified encryption still beats plaintext. We then
// verify the chain ourselves against RootCAs and the MX host name, to report
// whether the certificate would have passed.
func (s *session) handshake() (*tls.Conn, error) {
	cfg := &tls.Config{}
	if s.c.opts.TLSConfig != nil {
		cfg = s.c.opts.TLSConfig.Clone()
	}
	cfg.ServerName = s.host.Name
	cfg.InsecureSkipVerify = true
	tc := tls.Client(s.conn, cfg)
	s.conn.SetDeadline(time.Now().Add(s.c.t.TLS))
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	s.conn.SetDeadline(time.Time{})
	st := tc.ConnectionState()
	s.tls = &TLSInfo{
		Version:  strings.ReplaceAll(tls.VersionName(st.Version), " ", ""),
		Cipher:   tls.CipherSuiteName(st.CipherSuite),
		Verified: verify(st.PeerCertificates, s.host.Name, s.c.opts.RootCAs),
	}
	return tc, nil
}

func verify(certs []*x509.Certificate, name string, roots *x509.CertPool) bool {
	if len(certs) == 0 {
		return false
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter})
	return err == nil
}

// auth logs in to a smarthost (RFC 4954), never over plaintext or an
// unverified certificate: either would hand the password to whoever
// answers.
func (s *session) auth() error {
	if s.tls == nil || !s.tls.Verified {
		return fmt.Errorf("%w: no AUTH without TLS whose certificate verifies for %s", errTLSRequired, s.host.Name)
	}
	var mech sasl.Client
	switch {
	case s.sc.SupportsAuth(sasl.Plain):
		mech = sasl.NewPlainClient("", s.c.opts.Username, s.c.opts.Password)
	case s.sc.SupportsAuth(sasl.Login):
		mech = sasl.NewLoginClient(s.c.opts.Username, s.c.opts.Password)
	default:
		return errors.New("AUTH: server offers neither PLAIN nor LOGIN")
	}
	s.sc.CommandTimeout = s.c.t.Hello
	if err := s.sc.Auth(mech); err != nil {
		return fmt.Errorf("AUTH: %w", s.note(err))
	}
	return nil
}

// transaction runs MAIL, RCPT and DATA. It returns results once the host
// has taken responsibility for an answer (MAIL accepted, or a 5xx to MAIL),
// or an error that sends us to the next host.
//
// Commands go one at a time: go-smtp v0.25.1's client does not pipeline
// (RFC 2920) and exposes no way to, so PIPELINING costs a round trip per
// recipient.
func (s *session) transaction(env *Envelope) ([]Result, error) {
	n := len(env.To)
	all := func(r Result) []Result {
		rs := make([]Result, n)
		for i := range rs {
			rs[i] = r
		}
		return rs
	}
	if ok, _ := s.sc.Extension("SMTPUTF8"); env.NeedsUTF8 && !ok {
		// RFC 6531 3.2: without SMTPUTF8 the message must not be sent.
		return all(localResult(enhNoUTF8, errors.New("message needs SMTPUTF8 (RFC 6531), server does not offer it"))), nil
	}
	if limit, ok := s.sc.MaxMessageSize(); ok && limit > 0 && len(env.Data) > limit {
		// RFC 1870 6: a message over the declared SIZE would be refused;
		// spare both sides the transfer.
		return all(localResult(enhTooBig, fmt.Errorf("message of %d bytes exceeds the server's SIZE %d (RFC 1870)", len(env.Data), limit))), nil
	}

	s.sc.CommandTimeout = s.c.t.Mail
	opts := &smtp.MailOptions{Size: int64(len(env.Data)), UTF8: env.NeedsUTF8}
	if err := s.sc.Mail(env.From, opts); err != nil {
		var e *smtp.SMTPError
		if errors.As(s.note(err), &e) && e.Code/100 == 5 {
			return all(replyResult(e, "MAIL FROM")), nil
		}
		return nil, fmt.Errorf("MAIL FROM: %w", err)
	}

	results := make([]Result, n)
	var accepted []int
	s.sc.CommandTimeout = s.c.t.Rcpt
	for i, to := range env.To {
		err := s.sc.Rcpt(to, nil)
		if err == nil {
			accepted = append(accepted, i)
			continue
		}
		var e *smtp.SMTPError
		if !errors.As(s.note(err), &e) {
			return s.abandon(results, accepted, i, fmt.Errorf("RCPT TO: %w", err)), nil
		}
		results[i] = replyResult(e, "RCPT TO")
		if e.Code == codeClosing {
			return s.abandon(results, accepted, i+1, results[i].Err), nil
		}
	}
	if len(accepted) == 0 {
		return results, nil // nobody to send to: no DATA (QUIT follows)
	}

	final := func(r Result) []Result {
		for _, i := range accepted {
			results[i] = r
		}
		return results
	}
	s.sc.CommandTimeout = s.c.t.DataInit
	wc, err := s.sc.Data()
	if err != nil {
		var e *smtp.SMTPError
		if errors.As(s.note(err), &e) {
			return final(replyResult(e, "DATA")), nil
		}
		return final(failureResult(fmt.Errorf("DATA: %w", err))), nil
	}
	for off := 0; off < len(env.Data); off += dataBlock {
		s.conn.SetWriteDeadline(time.Now().Add(s.c.t.DataBlock))
		if _, err := wc.Write(env.Data[off:min(off+dataBlock, len(env.Data))]); err != nil {
			s.broken = true
			return final(failureResult(fmt.Errorf("sending message data: %w", err))), nil
		}
	}
	s.conn.SetWriteDeadline(time.Now().Add(s.c.t.DataBlock)) // the final flush and "."
	s.sc.SubmissionTimeout = s.c.t.DataEnd
	resp, err := wc.CloseWithResponse()
	if err != nil {
		var e *smtp.SMTPError
		if errors.As(s.note(err), &e) {
			// RFC 5321 4.1.1.4: the reply to the final "." is for every
			// recipient RCPT accepted.
			return final(replyResult(e, "end of DATA")), nil
		}
		return final(failureResult(fmt.Errorf("end of DATA: %w", err))), nil
	}
	enh, line := parseEnhanced(250, resp.StatusText)
	return final(Result{Code: 250, Enhanced: enh, Line: line}), nil
}

// dataBlock is how much message data goes to one write, each with its own
// RFC 5321 4.5.3.2.5 deadline.
const dataBlock = 64 * 1024

// abandon ends a transaction the connection can no longer carry: the
// recipients from `from` on, and those already accepted, are deferred.
func (s *session) abandon(results []Result, accepted []int, from int, err error) []Result {
	r := failureResult(err)
	for i := from; i < len(results); i++ {
		if results[i].Err == nil && results[i].Code == 0 {
			results[i] = r
		}
	}
	for _, i := range accepted {
		results[i] = r
	}
	return results
}

// quit says goodbye when the connection can still carry it (RFC 5321
// 4.1.1.10); its reply changes nothing.
func (s *session) quit() {
	if s.broken || s.sc == nil {
		return
	}
	s.sc.CommandTimeout = s.c.t.Quit
	s.sc.Quit()
}
