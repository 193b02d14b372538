// Package inbound receives delivery status notifications and complaints
// for the mail Mailferry sent, and applies them: an SMTP server that takes
// mail only for VERP return paths (package returnpath) and the feedback
// loop address, stores each report before its 250, and a processor that
// parses the stored reports (package bounce) and records what they say
// about each recipient.
package inbound

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/google/uuid"

	"github.com/mailferry/mailferry/budget"
	"github.com/mailferry/mailferry/connlimit"
	"github.com/mailferry/mailferry/returnpath"
	"github.com/mailferry/mailferry/store"
)

// Saver stores a report; *store.Store is one. It must have committed when
// it returns nil.
type Saver interface {
	SaveInbound(ctx context.Context, m store.InboundMessage) (uuid.UUID, error)
}

// ReturnPaths checks a VERP address at the bounce domain or at a custom
// return path domain (sending is then the sending domain, else "");
// *returnpath.Signer is one.
type ReturnPaths interface {
	ParseAny(addr string) (sending string, messageID uuid.UUID, rcptIdx int, err error)
}

// CustomReturnPaths says which tenant owns a sending domain whose custom
// return path (bounces.<domain>) is verified, "" for none;
// *store.ReturnPathCache is one.
type CustomReturnPaths interface {
	ReturnPathTenant(ctx context.Context, domain string) (string, error)
}

var (
	_ Saver             = (*store.Store)(nil)
	_ ReturnPaths       = (*returnpath.Signer)(nil)
	_ CustomReturnPaths = (*store.ReturnPathCache)(nil)
)

// ServerOptions configures a Server. Saver, ReturnPaths and Hostname are
// required.
type ServerOptions struct {
	Saver       Saver
	ReturnPaths ReturnPaths
	// CustomReturnPaths, when set, lets RCPT take return paths at
	// bounces.<domain> for the domains that have it verified; nil: only
	// the bounce domain's. Asked once per such RCPT whose tag verifies, so
	// it should cache: a *store.ReturnPathCache.
	CustomReturnPaths CustomReturnPaths
	// FBLAddress takes complaints (MAILFERRY_FBL_ADDRESS); "" for none.
	FBLAddress string
	Hostname   string      // greeting and EHLO domain
	TLSConfig  *tls.Config // STARTTLS when set (RFC 3207)

	// MaxMessageBytes refuses larger reports with 552 5.3.4 (SIZE, RFC
	// 1870). Default 10 MiB: a DSN returns headers or the message, and
	// the API's limit is for the message itself.
	MaxMessageBytes int64
	// MaxRecipients per transaction; more get 452 4.5.3. Default 10.
	MaxRecipients int
	// MaxConnections open at once; beyond it 421. Default 100.
	MaxConnections int
	// MaxConnectionsPerIP from one client (IPv6: a /64); beyond it 421.
	// Default 5.
	MaxConnectionsPerIP int
	// CommandTimeout bounds the wait for each command and each read of
	// the message, the greeting's included. Default 2 minutes: a peer
	// sending a report has it ready (RFC 5321 4.5.3.2 sets longer ones for
	// a server that relays; this one stores and replies).
	CommandTimeout time.Duration
	WriteTimeout   time.Duration // each reply; default 1 minute
	// SaveTimeout bounds storing a report; past it 451 4.3.0. Default 30
	// seconds.
	SaveTimeout time.Duration

	// Stored is called after each report is stored, to wake the
	// processor; nil: nothing.
	Stored func()
	// Budget caps the message bytes in flight, shared with the API and
	// submission (MAILFERRY_MAX_BYTES_IN_FLIGHT): past it DATA gets 452
	// 4.3.1 and the sender tries again later. Nil: no cap.
	Budget *budget.Budget

	Logger  *slog.Logger
	Metrics *Metrics
}

// Server is the inbound SMTP listener.
type Server struct {
	opts ServerOptions
	smtp *smtp.Server
	gate *connlimit.Gate // MaxConnections, MaxConnectionsPerIP
}

// NewServer checks opts and returns a Server. It starts nothing.
func NewServer(opts ServerOptions) (*Server, error) {
	var errs []error
	if opts.Saver == nil {
		errs = append(errs, errors.New("option Saver is required"))
	}
	if opts.ReturnPaths == nil {
		errs = append(errs, errors.New("option ReturnPaths is required"))
	}
	if opts.Hostname == "" {
		errs = append(errs, errors.New("option Hostname is required"))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("inbound: %w", errors.Join(errs...))
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	setDefault(&opts.MaxMessageBytes, 10<<20)
	setDefault(&opts.MaxRecipients, 10)
	setDefault(&opts.MaxConnections, 100)
	setDefault(&opts.MaxConnectionsPerIP, 5)
	setDefault(&opts.CommandTimeout, 2*time.Minute)
	setDefault(&opts.WriteTimeout, time.Minute)
	setDefault(&opts.SaveTimeout, 30*time.Second)
	s := &Server{opts: opts, gate: connlimit.NewGate(opts.MaxConnections, opts.MaxConnectionsPerIP)}
	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = opts.Hostname
	if opts.TLSConfig != nil {
		c := opts.TLSConfig.Clone()
		c.MinVersion = max(c.MinVersion, tls.VersionTLS12)
		srv.TLSConfig = c
	}
	srv.MaxMessageBytes = opts.MaxMessageBytes // 552 5.3.4
	srv.MaxRecipients = opts.MaxRecipients     // 452 4.5.3, RFC 5321 4.5.3.1.10
	srv.ReadTimeout = opts.CommandTimeout
	srv.WriteTimeout = opts.WriteTimeout
	srv.EnableSMTPUTF8 = true // RFC 6533 global DSNs come with UTF-8 addresses
	srv.ErrorLog = errorLog{opts.Logger}
	s.smtp = srv
	return s, nil
}

func setDefault[T int | int64 | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// Serve accepts connections on ln until Shutdown. go-smtp backs off on a
// temporary accept error (EMFILE) instead of spinning.
func (s *Server) Serve(ln net.Listener) error {
	err := s.smtp.Serve(&listener{Listener: ln, srv: s})
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, lets sessions in progress end, and waits for
// them; when ctx ends first it closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
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

// listener holds connections to MaxConnections and MaxConnectionsPerIP.
type listener struct {
	net.Listener
	srv *Server
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := connlimit.AddrOf(c)
		var line string
		switch l.srv.gate.Admit(ip) {
		case connlimit.Admitted:
			return &conn{Conn: c, srv: l.srv, ip: ip}, nil
		case connlimit.ClientLimit:
			line = "421 4.7.0 " + l.srv.opts.Hostname + " too many connections from your address\r\n"
		default:
			line = "421 4.4.5 " + l.srv.opts.Hostname + " too many connections\r\n"
		}
		l.srv.gate.Refuse(c, 5*time.Second, nil, line) // RFC 5321 3.1
	}
}

// conn gives back its slots once closed.
type conn struct {
	net.Conn
	srv    *Server
	ip     netip.Addr
	closed sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.closed.Do(func() {
		c.srv.gate.Release(c.ip)
	})
	return err
}

// session is one client from EHLO on.
type session struct {
	srv  *Server
	ip   netip.Addr
	helo string

	// With CHUNKING, go-smtp runs Data in its own goroutine while the
	// connection's goroutine may call Reset: mu guards what both touch.
	mu    sync.Mutex
	from  string
	rcpts []string
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	var ip netip.Addr
	if ap, err := netip.ParseAddrPort(c.Conn().RemoteAddr().String()); err == nil {
		ip = ap.Addr().Unmap()
	}
	return &session{srv: s, ip: ip, helo: c.Hostname()}, nil
}

func (s *session) log() *slog.Logger {
	return s.srv.opts.Logger.With(slog.String("client_ip", s.ip.String()))
}

// Mail takes any sender: a DSN comes from the null path (RFC 3464 2), an
// ARF report from the feedback provider. Nothing is ever sent back to it.
func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.from, s.rcpts = from, nil
	return nil
}

// Rcpt takes the return paths whose tag verifies and the FBL address;
// everything else is refused, so this is never a relay. A forged or
// altered tag gets the same answer as a stranger. A return path at
// bounces.<domain> is taken only while that domain has its custom return
// path verified; the tag is checked first, so a stranger's addresses cost
// no lookup.
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	sending, _, _, err := s.srv.opts.ReturnPaths.ParseAny(to)
	if err == nil && sending != "" {
		err = s.srv.customAllowed(sending)
		if errors.Is(err, errLookup) {
			// RFC 3463 3.4 X.3.0: the sender tries again later.
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Cannot check the recipient now, try again later"}
		}
	}
	if err == nil || s.srv.isFBL(to) {
		s.mu.Lock()
		s.rcpts = append(s.rcpts, to)
		s.mu.Unlock()
		return nil
	}
	s.srv.opts.Metrics.message(ResultRejected)
	if errors.Is(err, returnpath.ErrForged) {
		// Info, not Warn: anyone can send these, as often as they like.
		s.log().Info("inbound: forged return path refused", "rcpt", to)
	}
	// RFC 3463 3.8 X.7.1: delivery not authorized.
	return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "No such recipient here; relaying denied"}
}

var (
	errNotCustom = errors.New("no verified custom return path")
	errLookup    = errors.New("custom return path lookup failed")
)

// customAllowed says whether sending domain has its custom return path
// verified: nil if so, errNotCustom if not, errLookup when it cannot be
// told now.
func (s *Server) customAllowed(sending string) error {
	if s.opts.CustomReturnPaths == nil {
		return errNotCustom
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.SaveTimeout)
	defer cancel()
	tenant, err := s.opts.CustomReturnPaths.ReturnPathTenant(ctx, sending)
	if err != nil {
		s.opts.Logger.Error("inbound: custom return path lookup", "domain", sending, "error", err)
		return errLookup
	}
	if tenant == "" {
		return errNotCustom
	}
	return nil
}

func (s *Server) isFBL(addr string) bool {
	f := s.opts.FBLAddress
	if f == "" {
		return false
	}
	at, fat := strings.LastIndexByte(addr, '@'), strings.LastIndexByte(f, '@')
	// RFC 5321 2.4: the local part as given, the domain in any case.
	return at > 0 && addr[:at] == f[:fat] && strings.EqualFold(addr[at+1:], f[fat+1:])
}

// Data stores the report and only then answers 250; if it cannot be
// stored, 451 4.3.0 makes the sender try again later.
func (s *session) Data(r io.Reader) error {
	// The bytes are reserved as they arrive and given back once stored.
	res, err := s.srv.opts.Budget.Reserve(0)
	if err != nil {
		return errBusy
	}
	defer res.Release()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(res.Reader(r)); err != nil {
		if errors.Is(err, budget.ErrFull) {
			return errBusy
		}
		return err // go-smtp answers 552 for too large, or the connection is gone
	}
	s.mu.Lock()
	from, rcpts := s.from, slices.Clone(s.rcpts)
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.opts.SaveTimeout)
	defer cancel()
	id, err := s.srv.opts.Saver.SaveInbound(ctx, store.InboundMessage{RemoteIP: s.ip, Helo: s.helo,
		MailFrom: from, RcptTo: rcpts, Body: buf.Bytes()})
	if err != nil {
		s.log().Error("inbound: store report", "error", err)
		// RFC 3463 3.4 X.3.0: other mail system status.
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Cannot store the report now, try again later"}
	}
	s.srv.opts.Metrics.message(ResultAccepted)
	s.log().Info("inbound: report stored", "inbound_id", id, "size", buf.Len())
	if s.srv.opts.Stored != nil {
		s.srv.opts.Stored()
	}
	return nil
}

// errBusy: the bytes in flight are at MAILFERRY_MAX_BYTES_IN_FLIGHT. RFC
// 3463 3.4 X.3.1: mail system full.
var errBusy = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Too busy now, try again later"}

func (s *session) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.from, s.rcpts = "", nil
}

func (s *session) Logout() error { return nil }

// errorLog takes go-smtp's own lines (dropped connections, failed
// handshakes): debug, but panics and accept errors.
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
	l.log.Log(context.Background(), level, "inbound smtp server: "+strings.TrimSpace(msg))
}
