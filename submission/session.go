package submission

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailferry/mailferry/budget"
	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/store"
)

// session is one client from EHLO on. go-smtp starts a new one after
// STARTTLS, so nothing learnt before TLS survives it (RFC 3207 4.2).
type session struct {
	srv  *Server
	conn *smtp.Conn
	tc   *trackedConn
	ip   netip.Addr
	tls  bool

	// With CHUNKING, go-smtp runs Data in its own goroutine while the
	// connection's goroutine may call Reset: mu guards what both touch.
	mu    sync.Mutex
	key   *store.APIKey // set by a successful AUTH
	from  string        // MAIL FROM, normalised
	rcpts []string      // RCPT TO, normalised
	size  int64         // SIZE parameter of MAIL, 0 if none
	utf8  bool          // MAIL had SMTPUTF8: 8-bit headers allowed (RFC 6531 3.4)
	// requireTLS: MAIL had REQUIRETLS (RFC 8689 3), stored with the message.
	requireTLS bool
}

var _ smtp.AuthSession = (*session)(nil)

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	tc := unwrap(c.Conn())
	if tc == nil {
		return nil, errors.New("connection not accepted through this server's listener")
	}
	tc.greeted.Store(true) // go-smtp starts a session at EHLO or HELO
	_, isTLS := c.TLSConnectionState()
	return &session{srv: s, conn: c, tc: tc, ip: tc.ip, tls: isTLS}, nil
}

// log is the server's logger with the client and, once known, its key.
func (s *session) log(key *store.APIKey) *slog.Logger {
	l := s.srv.opts.Logger.With(slog.String("client_ip", s.ip.String()))
	if key != nil {
		l = l.With(slog.String("tenant", key.TenantID), slog.String("api_key_id", key.ID))
	}
	return l
}

// AuthMechanisms lists what EHLO offers: nothing before TLS (RFC 4954 4:
// no plaintext password mechanism over an unprotected channel).
func (s *session) AuthMechanisms() []string {
	if !s.tls {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// Auth starts a SASL exchange. go-smtp has already refused a second AUTH
// with 503 (RFC 4954 4).
func (s *session) Auth(mech string) (sasl.Server, error) {
	if !s.tls {
		s.srv.opts.Metrics.authFailure(authFailPlaintext)
		return nil, errEncryptionRequired()
	}
	if wait := s.srv.limiter.wait(s.ip); wait > 0 {
		s.srv.opts.Metrics.authFailure(authFailRateLimited)
		return nil, errAuthBlocked(wait)
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			// RFC 4616 2: an authorization identity other than the user's
			// own would mean acting as someone else; there is no such right.
			if identity != "" && identity != username {
				return s.failed(username, "authorization identity differs from the user name", s.srv.limiter.fail(s.ip))
			}
			return s.login(username, password)
		}), nil
	case sasl.Login:
		return newLoginServer(s.login), nil
	}
	return nil, smtp.ErrAuthUnknownMechanism // 504 5.7.4, RFC 4954 6
}

// login checks the API key and that it belongs to the tenant named as the
// user. The password never reaches a log line or an error.
func (s *session) login(tenant, secret string) error {
	// The attempt counts from here, before the check, so that parallel
	// sessions cannot all be checked before the first failure is counted.
	if wait, ok := s.srv.limiter.begin(s.ip); !ok {
		s.srv.opts.Metrics.authFailure(authFailRateLimited)
		s.log(nil).LogAttrs(context.Background(), slog.LevelDebug, "smtp auth refused: too many failed or concurrent logins from this address",
			slog.String("user", redactUser(tenant)))
		return errAuthBlocked(wait)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.opts.OpTimeout)
	defer cancel()
	key, err := s.srv.opts.Auth.Authenticate(ctx, secret)
	switch {
	case errors.Is(err, store.ErrUnauthorized):
		return s.failed(tenant, "unknown, wrong or revoked API key", s.srv.limiter.end(s.ip, true))
	case err != nil:
		s.srv.limiter.end(s.ip, false) // our failure, not the client's
		s.log(nil).LogAttrs(ctx, slog.LevelError, "smtp auth: key store unavailable", slog.Any("error", err))
		return errAuthUnavailable()
	case key.TenantID != tenant:
		return s.failed(tenant, "the API key belongs to another tenant", s.srv.limiter.end(s.ip, true))
	case !key.Has(store.ScopeSend):
		// Submission is sending: a read-only or manage-only key may not.
		return s.failed(tenant, "the API key lacks the send scope", s.srv.limiter.end(s.ip, true))
	}
	s.srv.limiter.end(s.ip, false)
	s.mu.Lock()
	s.key = &key
	s.mu.Unlock()
	s.log(&key).LogAttrs(ctx, slog.LevelDebug, "smtp auth succeeded")
	return nil
}

// failed logs a failed login and answers it; blocked is what the
// limiter said on counting it. The user name is redacted when it looks
// like a credential: a client that swaps user and password sends its key
// as the user name.
func (s *session) failed(user, why string, blocked bool) error {
	s.srv.opts.Metrics.authFailure(authFailCredentials)
	level := slog.LevelInfo
	if blocked {
		level = slog.LevelWarn
		why += "; too many failures, AUTH from this address refused for " + s.srv.opts.AuthBlock.String()
	}
	s.log(nil).LogAttrs(context.Background(), level, "smtp auth failed", slog.String("user", redactUser(user)), slog.String("reason", why))
	return errAuthInvalid()
}

// Mail starts a transaction. RFC 6409 4.3 and RFC 4954 6: 530 without AUTH.
// The envelope sender's domain must be one of the key's, as From's is.
func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.key == nil {
		s.srv.opts.Metrics.refused(refusedAuthRequired)
		return errAuthRequired()
	}
	if s.from != "" {
		return errBadSequence("MAIL", "a transaction is already open: RSET first") // RFC 5321 4.1.4
	}
	if from == "" {
		// The relay needs a return path for bounces, and the key's
		// domains cannot be checked against none.
		s.srv.opts.Metrics.refused(refusedSenderDomain)
		return errNullSender()
	}
	addr, err := mail.ParsePath(from)
	if err != nil {
		s.srv.opts.Metrics.refused(refusedBadAddress)
		return errBadSender(err)
	}
	if d := addr.Domain(); !intake.SenderAllowed(s.key.Domains, d) {
		s.srv.opts.Metrics.refused(refusedSenderDomain)
		s.log(s.key).Info("smtp sender refused", slog.String("mail_from_domain", d))
		return errSenderNotAllowed("MAIL FROM", d, s.key.Domains)
	}
	if opts != nil && opts.Size > 0 && s.srv.opts.Budget != nil && opts.Size > s.srv.opts.Budget.Capacity() {
		// More than the server can ever hold at once; go-smtp has already
		// refused a SIZE over MaxMessageBytes the same way (RFC 1870 6.1).
		s.srv.opts.Metrics.refused(refusedTooLarge)
		return errTooLarge(s.srv.opts.Budget.Capacity())
	}
	if opts != nil && opts.RequireTLS {
		// go-smtp advertises REQUIRETLS only over TLS but takes the
		// parameter either way; RFC 8689 3 allows it only over TLS.
		if _, isTLS := s.conn.TLSConnectionState(); !isTLS {
			return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 10},
				Message: "REQUIRETLS needs a TLS session: STARTTLS first (RFC 8689 3)"}
		}
	}
	if err := s.rateLimit(s.key); err != nil {
		return err
	}
	s.from, s.rcpts, s.size, s.utf8, s.requireTLS = addr.Addr, nil, 0, false, false
	if opts != nil {
		s.size, s.utf8, s.requireTLS = opts.Size, opts.UTF8, opts.RequireTLS
	}
	s.tc.busy.Store(true)
	return nil
}

// Rcpt adds a recipient; go-smtp has counted them against MaxRecipients.
// Any destination is fine: the client is authenticated (RFC 6409 4.3).
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	addr, err := mail.ParsePath(to)
	if err != nil {
		s.srv.opts.Metrics.refused(refusedBadAddress)
		return errBadRecipient(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rcpts = append(s.rcpts, addr.Addr)
	return nil
}

// Data reads the message and hands it to intake. go-smtp has undone
// dot-stuffing and holds the message to MaxMessageBytes (552 5.3.4).
func (s *session) Data(r io.Reader) error {
	// RFC 5321 4.5.3.2.6: the whole message within DataTimeout, rather
	// than the one command read's deadline go-smtp left in place.
	_ = s.conn.Conn().SetReadDeadline(time.Now().Add(s.srv.opts.DataTimeout))
	s.mu.Lock()
	key, from, rcpts, size, smtputf8, requireTLS := s.key, s.from, slices.Clone(s.rcpts), s.size, s.utf8, s.requireTLS
	s.mu.Unlock()

	// The bytes in flight are reserved by the SIZE the client declared,
	// else as they arrive, and given back once the message is accepted or
	// refused. Memory is never allocated from SIZE: the buffer grows with
	// the bytes received, to MaxMessageBytes at most (go-smtp's limit).
	res, err := s.srv.opts.Budget.Reserve(min(size, s.srv.opts.MaxMessageBytes))
	if err != nil {
		s.srv.opts.Metrics.refused(refusedBusy)
		return errBusy()
	}
	defer res.Release()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(res.Reader(r)); err != nil {
		switch {
		case errors.Is(err, smtp.ErrDataTooLarge):
			s.srv.opts.Metrics.refused(refusedTooLarge)
			return errTooLarge(s.srv.opts.MaxMessageBytes)
		case errors.Is(err, budget.ErrFull):
			s.srv.opts.Metrics.refused(refusedBusy)
			return errBusy()
		}
		s.log(key).Info("smtp message not read", slog.Any("error", err))
		return errReadAborted()
	}
	if key == nil || from == "" || len(rcpts) == 0 {
		// go-smtp allows DATA only after MAIL and RCPT, and MAIL needs AUTH.
		return errBadSequence("DATA", "MAIL and RCPT must come first")
	}

	msg, err := mail.ParseRaw(buf.Bytes(), rcpts, mail.BuildOptions{
		Hostname:      s.srv.opts.Hostname,
		MaxRecipients: s.srv.opts.MaxRecipients,
		TraceRoom:     traceRoom,
		ASCIIHeaders:  !smtputf8,
	})
	buf = bytes.Buffer{} // the message is the one copy kept
	var fe mail.FieldErrors
	switch {
	case errors.As(err, &fe) && len(fe) > 0:
		s.srv.opts.Metrics.refused(refusedInvalidMessage)
		return refusedMessage(fe)
	case err != nil:
		s.log(key).Error("smtp message: prepare", slog.Any("error", err))
		return errUnavailable()
	}
	// The envelope sender is MAIL FROM, not the From or Sender header
	// ParseRaw chose: bounces go where the client said (RFC 5321 4.1.1.2).
	msg.Sender = from
	msg.NeedsUTF8 = msg.NeedsUTF8 || !isASCII(from)
	if err := s.checkSenders(key, msg); err != nil {
		return err
	}
	if err := s.checkVerified(key, msg); err != nil {
		return err
	}

	sub := intake.Submission{TenantID: key.TenantID, APIKeyID: key.ID, Ingress: "smtp", Message: msg, RequireTLS: requireTLS}
	receipt, err := s.srv.opts.Intake.NewReceipt(sub)
	if err != nil {
		s.log(key).Error("smtp message: new receipt", slog.Any("error", err))
		return errUnavailable()
	}
	// RFC 5321 4.4: the trace field goes on top before the message is
	// stored; DKIM signing, later, does not cover it.
	if err := msg.Prepend(received(receivedOptions{
		helo: s.conn.Hostname(), ip: s.ip, hideClient: s.srv.opts.HideClient,
		by: s.srv.opts.Hostname, tls: s.tls, auth: key != nil,
		id: receipt.ID.String(), now: s.srv.opts.Now(),
	})); err != nil {
		s.log(key).Error("smtp message: received field", slog.Any("error", err))
		return errUnavailable()
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.opts.OpTimeout)
	defer cancel()
	err = s.srv.opts.Intake.Submit(ctx, receipt, sub)
	var refused *intake.RefusedError
	if errors.As(err, &refused) {
		// The ledger refused this message's data; a 451 would have the
		// client send it again for ever.
		s.srv.opts.Metrics.refused(refusedInvalidMessage)
		return errInvalidMessage("it cannot be stored: " + refused.Reason())
	}
	if err != nil {
		s.srv.opts.Metrics.refused(refusedUnavailable)
		level := slog.LevelWarn
		if !errors.Is(err, intake.ErrUnavailable) {
			level = slog.LevelError
		}
		s.log(key).LogAttrs(ctx, level, "smtp message not accepted", slog.String("message_id", receipt.ID.String()), slog.Any("error", err))
		return errUnavailable()
	}
	return errQueued(receipt.ID.String())
}

// checkSenders applies intake's open-relay rule (intake.CheckSenders) to
// the headers; MAIL FROM was checked at MAIL.
func (s *session) checkSenders(key *store.APIKey, msg *mail.Message) error {
	var se *intake.SenderError
	if !errors.As(intake.CheckSenders(key.Domains, msg), &se) {
		return nil
	}
	r := se.Refused[0]
	s.srv.opts.Metrics.refused(refusedSenderDomain)
	s.log(key).Info("smtp sender refused", slog.String("header_domain", r.Domain))
	return errSenderNotAllowed(r.Where, r.Domain, key.Domains)
}

// checkVerified refuses a From domain that is not a verified sending
// domain of the key's tenant (Options.RequireVerified).
func (s *session) checkVerified(key *store.APIKey, msg *mail.Message) error {
	if s.srv.opts.RequireVerified == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.opts.OpTimeout)
	defer cancel()
	for _, a := range msg.From {
		refusal, err := s.srv.opts.RequireVerified(ctx, key.TenantID, a.Domain())
		if err != nil {
			s.log(key).Error("smtp message: domain verification lookup", slog.Any("error", err))
			return errUnavailable()
		}
		if refusal != "" {
			s.srv.opts.Metrics.refused(refusedSenderDomain)
			return errSenderUnverified(refusal)
		}
	}
	return nil
}

// refusedMessage answers what mail.ParseRaw refused: 5.6.7 for 8-bit
// headers without SMTPUTF8, 5.7.1 for another domain's DKIM-Signature,
// else 5.6.0; the first field of the kind gives the text.
func refusedMessage(fe mail.FieldErrors) error {
	for _, f := range fe {
		switch {
		case errors.Is(f.Err, mail.ErrNeedsSMTPUTF8):
			return errNeedsSMTPUTF8(f.Detail)
		case errors.Is(f.Err, mail.ErrForeignSignature):
			return errForeignSignature(f.Detail)
		}
	}
	return errInvalidMessage(fe[0].Detail)
}

// Reset ends the transaction (RSET, after DATA, a new EHLO); the login
// stays.
func (s *session) Reset() {
	s.mu.Lock()
	s.from, s.rcpts, s.size, s.utf8, s.requireTLS = "", nil, 0, false, false
	s.mu.Unlock()
	s.tc.busy.Store(false)
}

// Logout is called when the connection closes or STARTTLS replaces the
// session.
func (s *session) Logout() error {
	s.tc.busy.Store(false)
	return nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
