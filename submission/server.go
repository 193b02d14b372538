package submission

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailferry/mailferry/budget"
	"github.com/mailferry/mailferry/connlimit"
	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/ratelimit"
	"github.com/mailferry/mailferry/store"
)

// Intake takes accepted mail; *intake.Intake is the one used in production,
// shared with the HTTP API.
type Intake interface {
	NewReceipt(s intake.Submission) (intake.Receipt, error)
	Submit(ctx context.Context, r intake.Receipt, s intake.Submission) error
}

// Authenticator checks an API key; *store.Store is one. A wrong, unknown or
// revoked key is store.ErrUnauthorized; any other error means the key store
// could not answer.
type Authenticator interface {
	Authenticate(ctx context.Context, secret string) (store.APIKey, error)
}

var (
	_ Intake        = (*intake.Intake)(nil)
	_ Authenticator = (*store.Store)(nil)
)

// ErrServerClosed is returned by ServeSubmission and ServeSubmissions after
// Shutdown.
var ErrServerClosed = errors.New("submission: server closed")

// Options configures a Server. Intake, Auth, TLSConfig, Hostname,
// MaxMessageBytes and MaxRecipients are required; the rest have defaults.
type Options struct {
	Intake    Intake
	Auth      Authenticator
	TLSConfig *tls.Config // for STARTTLS on 587 and implicit TLS on 465
	Hostname  string      // greeting and EHLO domain; Message-ID domain of added Message-IDs

	MaxMessageBytes int64 // advertised as SIZE (RFC 1870); larger messages get 552 5.3.4
	MaxRecipients   int   // RCPT beyond it gets 452 4.5.3 (RFC 5321 4.5.3.1.10)

	Logger  *slog.Logger
	Metrics *Metrics

	// RequireVerified, when set (MAILFERRY_REQUIRE_VERIFIED_DOMAIN), is
	// asked about each From domain: a refusal (non-empty, naming the
	// record that is not verified) is answered 550 5.7.1; an error, 451.
	RequireVerified func(ctx context.Context, tenant, domain string) (refusal string, err error)

	// MaxConnections caps open connections over both listeners; beyond it a
	// new connection gets 421 4.4.5 and is closed. Default 100.
	MaxConnections int
	// MaxConnectionsPerIP caps open connections from one client address
	// (IPv6: one /64) over both listeners, so that one client cannot take
	// every slot (MAILFERRY_SUBMISSION_MAX_PER_IP); beyond it a new
	// connection gets 421 4.7.0 and is closed. Default 10.
	MaxConnectionsPerIP int
	// GreetingTimeout bounds the time from accepting a connection to the
	// client's EHLO or HELO, TLS handshake on 465 included: a client that
	// connects and says nothing holds a slot this long. Default 30 seconds.
	GreetingTimeout time.Duration
	// TLSHandshakeTimeout bounds the TLS handshake on 465, from accepting
	// the connection. Default 10 seconds.
	TLSHandshakeTimeout time.Duration
	// CommandTimeout bounds the wait for each command line after EHLO.
	// Default 5 minutes, RFC 5321 4.5.3.2.7.
	CommandTimeout time.Duration
	// DataTimeout bounds reading one whole message after DATA. Default 10
	// minutes, RFC 5321 4.5.3.2.6.
	DataTimeout time.Duration
	// WriteTimeout bounds writing each reply. Default 1 minute.
	WriteTimeout time.Duration
	// OpTimeout bounds one key check against the store and one intake
	// submission. Default 30 seconds.
	OpTimeout time.Duration
	// AuthFailures failed logins from one address (IPv6: one /64) within
	// AuthBlock make AUTH from it refused, 454 4.7.0, for AuthBlock.
	// Defaults 5 and 1 minute.
	AuthFailures int
	AuthBlock    time.Duration
	// Now is the clock of the failed-login limiter and of the Received
	// field's date; nil means time.Now.
	Now func() time.Time
	// Budget caps the message bytes in flight, shared with the HTTP API
	// (MAILFERRY_MAX_BYTES_IN_FLIGHT); past it DATA and BDAT get 452
	// 4.3.1. Nil: no cap.
	Budget *budget.Budget
	// Limiter is the per-key budget (MAILFERRY_RATE_LIMIT) shared with
	// the HTTP API: each MAIL spends a token, and past the budget MAIL
	// gets 451 4.7.0 with the wait. Nil: no limit.
	Limiter ratelimit.Limiter
	// Quota counts each MAIL against its tenant's daily quota
	// (MAILFERRY_TENANT_DAILY_QUOTA), shared with the HTTP API; past it
	// MAIL gets 451 4.7.0 naming midnight UTC. Nil: no quota.
	Quota *ratelimit.Quota
	// HideClient leaves the client's IP address out of the Received field
	// (MAILFERRY_SUBMISSION_HIDE_CLIENT).
	HideClient bool
}

// Server is the submission server. One Server serves both listeners.
type Server struct {
	opts    Options
	smtp    *smtp.Server
	limiter *failureLimiter

	gate     *connlimit.Gate // MaxConnections, MaxConnectionsPerIP
	draining atomic.Bool

	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

// New checks opts and returns a Server. It starts nothing.
func New(opts Options) (*Server, error) {
	var missing []error
	if opts.Intake == nil {
		missing = append(missing, errors.New("option Intake is required"))
	}
	if opts.Auth == nil {
		missing = append(missing, errors.New("option Auth is required"))
	}
	if opts.TLSConfig == nil || (len(opts.TLSConfig.Certificates) == 0 && opts.TLSConfig.GetCertificate == nil && opts.TLSConfig.GetConfigForClient == nil) {
		missing = append(missing, errors.New("option TLSConfig with a certificate is required: AUTH is only offered under TLS"))
	}
	if opts.Hostname == "" {
		missing = append(missing, errors.New("option Hostname is required"))
	}
	if opts.MaxMessageBytes <= 0 {
		missing = append(missing, errors.New("option MaxMessageBytes must be positive"))
	}
	if opts.MaxRecipients <= 0 {
		missing = append(missing, errors.New("option MaxRecipients must be positive"))
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("submission: %w", errors.Join(missing...))
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	setDefault(&opts.MaxConnections, 100)
	setDefault(&opts.MaxConnectionsPerIP, 10)
	setDefault(&opts.GreetingTimeout, 30*time.Second)
	setDefault(&opts.TLSHandshakeTimeout, 10*time.Second)
	setDefault(&opts.CommandTimeout, 5*time.Minute) // RFC 5321 4.5.3.2.7
	setDefault(&opts.DataTimeout, 10*time.Minute)   // RFC 5321 4.5.3.2.6
	setDefault(&opts.WriteTimeout, time.Minute)
	setDefault(&opts.OpTimeout, 30*time.Second)
	setDefault(&opts.AuthFailures, 5)
	setDefault(&opts.AuthBlock, time.Minute)
	if opts.Now == nil {
		opts.Now = time.Now
	}
	tlsConfig := opts.TLSConfig.Clone()
	if tlsConfig.MinVersion < tls.VersionTLS12 {
		tlsConfig.MinVersion = tls.VersionTLS12 // RFC 8314 4.1, RFC 8996
	}

	s := &Server{
		opts:    opts,
		limiter: newFailureLimiter(opts.AuthFailures, opts.AuthBlock, opts.Now),
		gate:    connlimit.NewGate(opts.MaxConnections, opts.MaxConnectionsPerIP),
		conns:   make(map[*trackedConn]struct{}),
	}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = opts.Hostname
	srv.TLSConfig = tlsConfig
	srv.MaxMessageBytes = opts.MaxMessageBytes // SIZE, RFC 1870; 552 5.3.4 on DATA and BDAT
	srv.MaxRecipients = opts.MaxRecipients     // 452 4.5.3, RFC 5321 4.5.3.1.10
	srv.ReadTimeout = opts.CommandTimeout
	srv.WriteTimeout = opts.WriteTimeout
	// go-smtp always offers PIPELINING (RFC 2920), 8BITMIME (RFC 6152),
	// ENHANCEDSTATUSCODES (RFC 2034) and CHUNKING (RFC 3030).
	srv.EnableSMTPUTF8 = true // RFC 6531: mail.ParseRaw takes RFC 6532 headers
	// RFC 8689 2: go-smtp advertises REQUIRETLS only after STARTTLS.
	srv.EnableREQUIRETLS = true
	// AUTH must reach the session before TLS too, so that a plaintext
	// attempt gets 538 5.7.11 (RFC 4954 6) rather than go-smtp's 523; the
	// session offers no mechanism and accepts none until TLS is up.
	srv.AllowInsecureAuth = true
	srv.ErrorLog = errorLog{opts.Logger}
	s.smtp = srv
	return s, nil
}

// errorLog takes go-smtp's own log lines. Most are TLS handshakes that
// failed and connections dropped, which port scanners and TCP health
// checks cause all day: those are debug lines; panics are errors.
type errorLog struct{ log *slog.Logger }

func (l errorLog) Printf(format string, v ...any) { l.print(fmt.Sprintf(format, v...)) }
func (l errorLog) Println(v ...any)               { l.print(fmt.Sprintln(v...)) }

func (l errorLog) print(msg string) {
	level := slog.LevelDebug
	switch {
	case strings.HasPrefix(msg, "panic"):
		level = slog.LevelError
	case strings.HasPrefix(msg, "accept error"):
		level = slog.LevelWarn
	}
	l.log.Log(context.Background(), level, "smtp server: "+strings.TrimSpace(msg))
}

func setDefault[T int | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// ServeSubmission serves port 587: plaintext first, STARTTLS offered (RFC
// 3207), AUTH only after it (RFC 6409 4.3, RFC 4954 4). It returns
// ErrServerClosed after Shutdown, or the listener's error.
func (s *Server) ServeSubmission(ln net.Listener) error {
	return s.serve(&listener{Listener: ln, srv: s, name: listenerSubmission})
}

// ServeSubmissions serves port 465: TLS from the first byte (RFC 8314 3.3).
// It returns ErrServerClosed after Shutdown, or the listener's error.
func (s *Server) ServeSubmissions(ln net.Listener) error {
	return s.serve(&listener{Listener: ln, srv: s, name: listenerSubmissions, implicitTLS: true})
}

func (s *Server) serve(ln net.Listener) error {
	if s.draining.Load() {
		ln.Close()
		return ErrServerClosed
	}
	err := s.smtp.Serve(ln)
	if err == nil || s.draining.Load() {
		return ErrServerClosed
	}
	return err
}

// Shutdown stops accepting connections, ends idle ones with 421 (RFC 5321
// 3.8), lets transactions in progress finish, and waits for every
// connection to end. When ctx ends first it closes what is left and
// returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	s.mu.Lock()
	for c := range s.conns {
		c.kickIfIdle()
	}
	s.mu.Unlock()
	err := s.smtp.Shutdown(ctx)
	if errors.Is(err, smtp.ErrServerClosed) {
		err = nil
	}
	if ctx.Err() != nil {
		_ = s.smtp.Close()
		err = ctx.Err()
	}
	s.gate.Wait()
	return err
}

// listener counts connections, holds them to MaxConnections and
// MaxConnectionsPerIP, and wraps each so that Shutdown can end it when
// idle and the greeting and handshake timeouts apply. On 465 it starts
// TLS itself, so that the connection knows when its handshake is done.
type listener struct {
	net.Listener
	srv         *Server
	name        string
	implicitTLS bool
}

// Accept returns the listener's errors as they are: go-smtp's Serve backs
// off on a temporary one (EMFILE, ENFILE) instead of spinning.
func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := connlimit.AddrOf(c)
		switch l.srv.gate.Admit(ip) {
		case connlimit.Admitted:
			l.srv.opts.Metrics.session(l.name)
			tc := l.srv.track(c, ip)
			if !l.implicitTLS {
				return tc, nil
			}
			tc.tls = tls.Server(tc, l.srv.smtp.TLSConfig)
			return tc.tls, nil
		case connlimit.ClientLimit:
			l.srv.opts.Metrics.refused(refusedClientLimit)
			l.srv.refuse(c, l.implicitTLS, clientLimitLine(l.srv.opts.Hostname))
		default:
			l.srv.opts.Metrics.refused(refusedConnectionLimit)
			l.srv.refuse(c, l.implicitTLS, connectionLimitLine(l.srv.opts.Hostname))
		}
	}
}

// refuse tells a connection over a limit line (421, RFC 5321 3.1); on 465
// after the TLS handshake the client expects first.
func (s *Server) refuse(c net.Conn, implicitTLS bool, line string) {
	var wrap func(net.Conn) (net.Conn, error)
	if implicitTLS {
		wrap = func(c net.Conn) (net.Conn, error) {
			tc := tls.Server(c, s.smtp.TLSConfig)
			return tc, tc.Handshake()
		}
	}
	s.gate.Refuse(c, s.opts.TLSHandshakeTimeout, wrap, line)
}

func (s *Server) track(c net.Conn, ip netip.Addr) *trackedConn {
	tc := &trackedConn{Conn: c, srv: s, ip: ip, accepted: time.Now()}
	s.mu.Lock()
	s.conns[tc] = struct{}{}
	s.mu.Unlock()
	s.opts.Metrics.open(1)
	return tc
}

func (s *Server) release(c *trackedConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.opts.Metrics.open(-1)
	s.gate.Release(c.ip)
}

// trackedConn is one accepted connection. While the server drains, a
// connection outside a mail transaction gets a read deadline in the past:
// go-smtp then answers 421 4.4.2 and closes it, from its own goroutine, so
// no reply is ever interleaved with another.
//
// Until the client's EHLO or HELO, every read ends by GreetingTimeout
// after the accept, and on 465, until the handshake is done, by
// TLSHandshakeTimeout: a silent client or a stalled handshake gives its
// slot back in seconds, not after the 5-minute command timeout.
type trackedConn struct {
	net.Conn
	srv      *Server
	ip       netip.Addr // the client's, zero if not TCP
	accepted time.Time
	tls      *tls.Conn   // on 465: the TLS server over this connection
	greeted  atomic.Bool // EHLO or HELO seen: CommandTimeout alone applies
	busy     atomic.Bool // inside a mail transaction: MAIL accepted, not yet reset
	closed   sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.closed.Do(func() { c.srv.release(c) })
	return err
}

// SetReadDeadline is how go-smtp bounds every command read; while
// draining, an idle connection's next read times out at once.
func (c *trackedConn) SetReadDeadline(t time.Time) error {
	if c.srv.draining.Load() && !c.busy.Load() {
		t = time.Unix(1, 0)
	} else if early := c.earlyDeadline(); !early.IsZero() && (t.IsZero() || early.Before(t)) {
		t = early
	}
	return c.Conn.SetReadDeadline(t)
}

// earlyDeadline is when the greeting or the handshake must be over; zero
// once the client has said EHLO or HELO. RFC 5321 4.5.3.2 sets no limit
// before the first command; these keep idle connections from holding
// every slot.
func (c *trackedConn) earlyDeadline() time.Time {
	if c.greeted.Load() {
		return time.Time{}
	}
	d := c.accepted.Add(c.srv.opts.GreetingTimeout)
	// go-smtp sets a read deadline just before it starts the handshake;
	// ConnectionState does not wait here, as no handshake is running yet.
	if c.tls != nil && !c.tls.ConnectionState().HandshakeComplete {
		if h := c.accepted.Add(c.srv.opts.TLSHandshakeTimeout); h.Before(d) {
			d = h
		}
	}
	return d
}

// kickIfIdle wakes a connection waiting for its next command, so that it
// sees the past deadline.
func (c *trackedConn) kickIfIdle() {
	if !c.busy.Load() {
		_ = c.Conn.SetReadDeadline(time.Unix(1, 0))
	}
}

// unwrap finds the trackedConn under a go-smtp connection, through TLS.
func unwrap(c net.Conn) *trackedConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	t, _ := c.(*trackedConn)
	return t
}
