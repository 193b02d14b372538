package smtpclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/netguard"
)

// Body opens the message data, from its first byte, each time it is
// called: once to measure it and once for each transaction, on each host.
// The data should have CRLF line ends (a DKIM header already in front);
// bare CR and LF are sent as CRLF.
type Body func() (io.Reader, error)

// Message is a Body of a header (a DKIM signature, say) followed by the
// stored message, read in place without joining them.
func Message(header string, body []byte) Body {
	return func() (io.Reader, error) {
		return io.MultiReader(strings.NewReader(header), bytes.NewReader(body)), nil
	}
}

// Envelope is one message for the recipients of one destination domain.
type Envelope struct {
	From string   // MAIL FROM addr-spec; "" is the null sender (RFC 5321 4.5.5)
	To   []string // RCPT TO addr-specs, all in one domain
	Body Body
	// Needs8Bit: the message has 8-bit content. It is declared with
	// BODY=8BITMIME (RFC 6152 2); a server that does not offer 8BITMIME
	// gets nothing and every recipient bounces 5.6.3 (RFC 6152 3).
	Needs8Bit bool
	// NeedsUTF8: addresses or headers are UTF-8 (RFC 6531). A server
	// without SMTPUTF8 gets nothing: every recipient bounces 5.6.7.
	NeedsUTF8 bool
	// TLS, when set, is a policy's demand (policy.go): TLS mandatory and
	// verified, never plaintext.
	TLS *TLSRequirement
}

// prepared is an Envelope checked and measured, with only the recipients
// that go on the wire.
type prepared struct {
	from                 string
	to                   []string
	body                 Body
	size                 int64 // after CRLF normalisation
	needs8Bit, needsUTF8 bool
	tls                  *TLSRequirement
}

// Timeouts bound each step of a session, so a stuck or slow server costs a
// known time. Zero fields take the default from DefaultTimeouts.
type Timeouts struct {
	Connect   time.Duration // TCP connect
	Greeting  time.Duration // 220 greeting
	Hello     time.Duration // EHLO, STARTTLS, AUTH and RSET replies
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

// Options configure a Client.
type Options struct {
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
	// whose ControlContext applies netguard unless AllowPrivate.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Username and Password, for a smarthost: AUTH PLAIN, else LOGIN (RFC
	// 4954), sent only over TLS whose certificate verified.
	Username, Password string
	// Reuse keeps connections open for the next message to the same host.
	Reuse Reuse
}

// Client delivers messages over SMTP. It holds configuration and idle
// connections, and is safe for concurrent use.
type Client struct {
	opts Options
	t    Timeouts
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	pool *connPool
}

// dialError marks a failure to connect (enhanced code X.4.1).
type dialError struct {
	addr string
	err  error
}

func (e *dialError) Error() string { return "connect " + e.addr + ": " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// New checks opts.
func New(opts Options) (*Client, error) {
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
			d.ControlContext = netguard.Control
		}
		c.dial = d.DialContext
	}
	return c, nil
}

// Deliver carries env to the first of hosts that will take it: hosts in
// order, each host's addresses in order (RFC 5321 5.1). A host that cannot
// be reached, fails before MAIL is accepted (greeting, EHLO, 4xx to MAIL, a
// 421, a network error) is left for the next one; once MAIL is accepted,
// that host's replies decide every recipient, over as many transactions on
// that connection as the recipients need. If no host got that far, every
// recipient is deferred with the last host's error.
//
// A 5xx greeting or EHLO is skipped like a 4xx (Postfix's
// smtp_skip_5xx_greeting): it says "not this host", not "not this
// recipient". A 5xx to MAIL bounces the recipients of that transaction.
func (c *Client) Deliver(ctx context.Context, hosts []Host, env Envelope) (a Attempt) {
	a.Started = time.Now()
	defer func() { a.Duration = time.Since(a.Started) }()
	a.Results = make([]Result, len(env.To))

	sub := prepared{from: env.From, body: env.Body, needs8Bit: env.Needs8Bit, needsUTF8: env.NeedsUTF8, tls: env.TLS}
	var idx []int
	if env.From != "" { // "" is the null reverse-path, RFC 5321 4.5.5
		if bad := badAddr(env.From); bad != "" {
			fill(a.Results, allIdx(len(env.To)), localResult(enhBadFromSyntax, fmt.Errorf("MAIL FROM address %q: %s", env.From, bad)))
			return a
		}
	}
	for i, to := range env.To {
		if bad := badAddr(to); bad != "" {
			a.Results[i] = localResult(enhBadRcptSyntax, fmt.Errorf("RCPT TO address %q: %s", to, bad))
			continue
		}
		idx = append(idx, i)
		sub.to = append(sub.to, to)
	}
	if len(idx) == 0 {
		return a
	}
	put := func(rs []Result) {
		for j, i := range idx {
			a.Results[i] = rs[j]
		}
	}
	if sub.body == nil {
		sub.body = Message("", nil)
	}
	size, err := measure(sub.body)
	if err != nil {
		fill(a.Results, idx, localResult(enhLocal, fmt.Errorf("read message: %w", err)))
		return a
	}
	sub.size = size

	var (
		last                         error
		tried, guarded, policyFailed int
	)
	// An idle connection to any of the most preferred hosts first: their
	// order among themselves is random anyway (RFC 5321 5.1), and a busy
	// destination keeps its connections busy rather than dialing more.
	if out, ok := c.reusePreferred(ctx, hosts, &sub, &a); ok {
		put(out.results)
		return a
	}
hosts:
	for _, h := range hosts {
		for _, ip := range h.Addrs {
			if err := ctx.Err(); err != nil {
				last = context.Cause(ctx)
				break hosts
			}
			out, ok := c.reuse(ctx, h, ip, &sub, &a)
			if !ok {
				// A new connection replaces an idle one to the same hosts,
				// so one transaction never holds two: a caller that counts
				// connections per destination (relay's leases) stays in
				// its count. Nor does it overlap one the pool is closing.
				c.evictOne(hosts)
				c.pool.awaitClosing(ctx, hostNames(hosts))
				out = c.connect(ctx, h, ip, &sub, !c.opts.ImplicitTLS, &a)
			}
			if out.tlsFailed && !c.opts.RequireTLS && env.TLS == nil {
				// Opportunistic TLS (RFC 7435): a failed handshake is
				// retried in plaintext on the same host, unless TLS is required.
				a.Tried = append(a.Tried, HostError{Host: h.Name, IP: ip, Err: out.err})
				out = c.connect(ctx, h, ip, &sub, false, &a)
			}
			if out.results != nil {
				a.Host, a.IP, a.TLS, a.Transactions = h.Name, ip, out.tls, out.txs
				a.TLSFailure = "" // a host met the policy
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
			var te *TLSError
			if errors.As(out.err, &te) {
				a.TLSFailure, policyFailed = te.Type, policyFailed+1
			}
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
	case env.TLS != nil && env.TLS.RequireTLS && policyFailed > 0:
		// RFC 8689 5: no server could take the message as REQUIRETLS
		// demands; it goes back to the sender.
		r = localResult(enhRequireTLS, fmt.Errorf("REQUIRETLS: no mail host offers verified TLS with REQUIRETLS: %w", last))
	case last != nil:
		r = failureResult(last)
	default:
		r = localResult(enhNoRouteTemp, fmt.Errorf("%w: no host address to try", ErrNoAddress))
	}
	fill(a.Results, idx, r)
	return a
}

func allIdx(n int) []int {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// badAddr says why s will not be sent as the mailbox of a path; "" if it
// will. The rule is mail.CheckMailbox, the one mail.ParseAddress holds
// every address to, so that what the API or submission accepted is sent
// rather than bounced here; it also keeps CR, LF and NUL, and a ">" that
// would end the path early, off the command line.
func badAddr(s string) string {
	if err := mail.CheckMailbox(s); err != nil {
		return strings.TrimPrefix(err.Error(), "invalid address: ")
	}
	return ""
}

// CloseIdle ends the connections kept for reuse, as at shutdown.
func (c *Client) CloseIdle() { c.pool.closeIdle() }

// SweepIdle ends the connections idle longer than Reuse.Idle.
func (c *Client) SweepIdle() { c.pool.sweep() }

// TrimIdle closes idle connections to the named hosts, longest idle
// first, until at most keep connections to them are open, busy ones
// included. It returns once they are closed (QUIT answered or timed out),
// so a caller that counts connections against a limit shared with others
// can give its share back after it: relay calls it before it releases a
// destination lease, with the leases it still holds (relay/slots.go).
func (c *Client) TrimIdle(hosts []string, keep int) {
	ss := c.pool.trim(hosts, keep)
	var wg sync.WaitGroup
	for _, s := range ss {
		wg.Go(s.close)
	}
	wg.Wait()
}

// reuse runs the transactions on an idle connection to h at ip, if there is
// one. ok is false when there was none or it turned out dead before a
// transaction began: the caller then dials afresh. A receiver may close an
// idle connection at any time (RFC 5321 4.5.3.2.7), so RSET checks it
// first (pipelined with MAIL when the server allows).
func (c *Client) reuse(ctx context.Context, h Host, ip netip.Addr, env *prepared, a *Attempt) (out outcome, ok bool) {
	s := c.pool.take(poolKey{host: h.Name, ip: ip})
	if s == nil {
		return outcome{}, false
	}
	if s.checkPolicy(env.tls) != nil {
		// Kept for mail without this demand; this one needs a session
		// that meets it, and a fresh one gets the host's own answer.
		c.release(s)
		return outcome{}, false
	}
	stop := context.AfterFunc(ctx, s.conn.abort)
	s.open, s.trips = true, 0 // RSET before the first MAIL
	results, txs, err := s.deliver(env)
	a.RoundTrips += s.trips
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
	return outcome{results: results, txs: txs, tls: s.tls}, true
}

// reusePreferred runs the transactions on an idle connection to one of
// the hosts of the best preference, if there is one.
func (c *Client) reusePreferred(ctx context.Context, hosts []Host, env *prepared, a *Attempt) (outcome, bool) {
	if len(hosts) == 0 || ctx.Err() != nil {
		return outcome{}, false
	}
	for _, h := range hosts {
		if h.Preference != hosts[0].Preference {
			break
		}
		for _, ip := range h.Addrs {
			if out, ok := c.reuse(ctx, h, ip, env, a); ok {
				a.Host, a.IP, a.TLS, a.Transactions = h.Name, ip, out.tls, out.txs
				a.TLSFailure = ""
				for i := range out.results {
					if out.results[i].Err != nil {
						out.results[i].Err = withCause(ctx, out.results[i].Err)
					}
				}
				return out, true
			}
		}
	}
	return outcome{}, false
}

// evictOne closes an idle connection to one of hosts, if there is one,
// and returns once it is closed.
func (c *Client) evictOne(hosts []Host) {
	for _, s := range c.pool.evict(hostNames(hosts)) {
		s.close()
	}
}

func hostNames(hosts []Host) []string {
	names := make([]string, len(hosts))
	for i, h := range hosts {
		names[i] = h.Name
	}
	return names
}

// release pools s if it can carry another transaction, else closes it.
func (c *Client) release(s *session) {
	if s.broken {
		s.close()
		return
	}
	c.pool.put(s)
}

// connect runs one session with ip. It closes the connection unless the
// transactions left it fit for reuse.
func (c *Client) connect(ctx context.Context, h Host, ip netip.Addr, env *prepared, tryTLS bool, a *Attempt) outcome {
	if !c.opts.AllowPrivate {
		if err := netguard.Check(ip); err != nil {
			return outcome{err: err, guarded: true}
		}
	}
	addr := netip.AddrPortFrom(ip, uint16(c.opts.Port)).String()
	dctx, cancel := context.WithTimeout(ctx, c.t.Connect)
	raw, err := c.dial(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return outcome{err: &dialError{addr: addr, err: withCause(ctx, err)}, guarded: errors.Is(err, netguard.ErrPrivateAddress)}
	}
	conn := &deadlineConn{Conn: raw}
	stop := context.AfterFunc(ctx, conn.abort)

	s := &session{c: c, host: h, ip: ip, conn: conn, born: time.Now()}
	c.pool.opened(h.Name)
	out := s.run(env, tryTLS)
	a.RoundTrips += s.trips
	if !stop() {
		s.broken = true
	}
	if out.results != nil {
		c.release(s)
	} else {
		s.end()
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
