package smtpclient

import (
	"bufio"
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
)

// Stages name the command a reply answers, in errors and results.
const (
	stageMail = "MAIL FROM"
	stageRcpt = "RCPT TO"
	stageData = "DATA"
	stageEnd  = "end of DATA"
)

// maxRcptsPerTx is what RFC 5321 4.5.3.1.8 obliges a server to accept in
// one transaction; more go in further transactions on the same connection.
const maxRcptsPerTx = 100

// extensions is what a server's EHLO reply offers (RFC 5321 4.1.1.1).
type extensions struct {
	pipelining, eightBit, utf8, startTLS bool
	requireTLS                           bool // RFC 8689 2
	sizeOffered                          bool
	size                                 int64 // 0: no limit declared
	rcptMax                              int   // LIMITS RCPTMAX (RFC 9422 4.2); 0: none
	auth                                 []string
}

// parseEHLO reads the keyword lines after the first line of an EHLO reply.
// Unknown keywords and malformed values are ignored, as if not offered.
func parseEHLO(text string) extensions {
	var x extensions
	lines := strings.Split(text, "\n")
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "PIPELINING": // RFC 2920
			x.pipelining = true
		case "8BITMIME": // RFC 6152
			x.eightBit = true
		case "SMTPUTF8": // RFC 6531
			x.utf8 = true
		case "STARTTLS": // RFC 3207
			x.startTLS = true
		case "REQUIRETLS": // RFC 8689 2
			x.requireTLS = true
		case "SIZE": // RFC 1870 4: "SIZE" [SP number]; 0 or none means no fixed limit
			x.sizeOffered = true
			if len(f) > 1 {
				if n, err := strconv.ParseInt(f[1], 10, 64); err == nil && n > 0 {
					x.size = n
				}
			}
		case "AUTH": // RFC 4954 3
			for _, m := range f[1:] {
				x.auth = append(x.auth, strings.ToUpper(m))
			}
		case "LIMITS": // RFC 9422 4: LIMITS SP name=value *(SP name=value)
			for _, p := range f[1:] {
				name, v, ok := strings.Cut(p, "=")
				if !ok || !strings.EqualFold(name, "RCPTMAX") {
					continue
				}
				if n, err := strconv.Atoi(v); err == nil && n > 0 {
					x.rcptMax = n
				}
			}
		}
	}
	return x
}

// session is one connection to one address.
type session struct {
	c    *Client
	host Host
	ip   netip.Addr
	conn *deadlineConn
	r    *bufio.Reader
	w    *bufio.Writer
	ext  extensions
	tls  *TLSInfo
	peer []*x509.Certificate // the chain the server presented
	// broken: the connection cannot carry another command.
	broken bool
	// open: a MAIL was accepted and its transaction has not ended, so the
	// next one needs RSET first (RFC 5321 4.1.1.5).
	open bool
	// writeTimeout is the deadline of each write in the current step.
	writeTimeout time.Duration
	// wrote: something was sent since the last reply was read, so the
	// next reply costs a round trip.
	wrote bool
	trips int // round trips in the current use, see Attempt.RoundTrips

	born      time.Time
	idleSince time.Time
	used      int  // transactions run
	ended     bool // closed and uncounted in the pool
	closing   bool // taken out of the pool to be closed (connPool.detach)
}

// wire sets up reading and writing over c, plain or TLS. A fresh reader
// drops whatever the old one had buffered (RFC 3207 4.2).
func (s *session) wire(c net.Conn) {
	s.r = bufio.NewReaderSize(c, 4096)
	s.w = bufio.NewWriterSize(blockWriter{s: s, w: c}, 16*1024)
}

// send buffers one command line.
func (s *session) send(line string) {
	s.w.WriteString(line)
	s.w.Write(crlf)
}

// flush writes what send buffered, with timeout per block.
func (s *session) flush(timeout time.Duration) error {
	s.writeTimeout = timeout
	s.wrote = true
	if err := s.w.Flush(); err != nil {
		s.broken = true
		return err
	}
	return nil
}

// read reads one reply within timeout. A reply that cannot be read leaves
// the connection unusable, and so does 421 (RFC 5321 3.8).
func (s *session) read(timeout time.Duration) (reply, error) {
	if s.wrote {
		s.trips++
		s.wrote = false
	}
	s.conn.SetReadDeadline(time.Now().Add(timeout))
	rep, err := readReply(s.r)
	if err != nil {
		s.broken = true
		return reply{}, err
	}
	if rep.Code == codeClosing {
		s.broken = true
	}
	return rep, nil
}

// command sends line and reads its reply.
func (s *session) command(line string, timeout time.Duration) (reply, error) {
	s.send(line)
	if err := s.flush(timeout); err != nil {
		return reply{}, err
	}
	return s.read(timeout)
}

// outcome is the result of one connection.
type outcome struct {
	results   []Result // set when a transaction ran: final for this attempt
	txs       int
	tls       *TLSInfo
	err       error // why the host could not be used
	tlsFailed bool  // the TLS handshake failed: plaintext may be retried
	guarded   bool  // the guard refused the address
}

func (s *session) run(env *prepared, tryTLS bool) outcome {
	if s.c.opts.ImplicitTLS {
		tc, err := s.handshake()
		if err != nil {
			s.broken = true
			return outcome{err: fmt.Errorf("TLS handshake (implicit TLS, RFC 8314): %w", err)}
		}
		s.wire(tc)
	} else {
		s.wire(s.conn)
	}
	s.wrote = true // the greeting is a wait too
	rep, err := s.read(s.c.t.Greeting)
	if err != nil {
		return outcome{err: fmt.Errorf("greeting: %w", err)}
	}
	if rep.Code != codeReady {
		// RFC 5321 3.1: after a 554 greeting the client should QUIT.
		s.quit()
		return outcome{err: fmt.Errorf("greeting: %w", rep.err())}
	}
	if err := s.hello(); err != nil {
		s.quit()
		return outcome{err: fmt.Errorf("EHLO: %w", err)}
	}
	if !s.c.opts.ImplicitTLS {
		switch {
		case s.ext.startTLS && tryTLS:
			if out, ok := s.startTLS(env.tls); !ok {
				s.quit()
				return out
			}
		case s.c.opts.RequireTLS:
			s.quit()
			return outcome{err: fmt.Errorf("%w: server does not offer STARTTLS", errTLSRequired)}
		}
	}
	if err := s.checkPolicy(env.tls); err != nil {
		// A policy's demand unmet: not this host, never in plaintext.
		s.quit()
		return outcome{err: err}
	}
	if s.c.opts.Username != "" {
		if err := s.auth(); err != nil {
			s.quit()
			return outcome{err: err}
		}
	}
	results, txs, err := s.deliver(env)
	if err != nil {
		s.quit()
		return outcome{err: err}
	}
	// The caller pools the connection or says QUIT.
	return outcome{results: results, txs: txs, tls: s.tls}
}

// hello says EHLO with our name (RFC 5321 4.1.4: the argument is the
// client's FQDN), or HELO to a server that does not know EHLO (RFC 5321
// 3.2).
func (s *session) hello() error {
	rep, err := s.command("EHLO "+s.c.opts.Hostname, s.c.t.Hello)
	if err != nil {
		return err
	}
	if rep.Code == 500 || rep.Code == 502 {
		if rep, err = s.command("HELO "+s.c.opts.Hostname, s.c.t.Hello); err != nil {
			return err
		}
		if rep.Code/100 != 2 {
			return rep.err()
		}
		s.ext = extensions{}
		return nil
	}
	if rep.Code/100 != 2 {
		return rep.err()
	}
	s.ext = parseEHLO(rep.Text)
	return nil
}

// startTLS upgrades the session (RFC 3207). ok is false when the session
// must end with out. req is the envelope's policy demand, if any.
func (s *session) startTLS(req *TLSRequirement) (out outcome, ok bool) {
	// Whatever the server sent after its EHLO reply came unasked: drop it,
	// so that a reply slipped in early is never taken for the answer to
	// STARTTLS (the STARTTLS command-injection flaw, RFC 3207 4.2).
	s.r.Discard(s.r.Buffered())
	rep, err := s.command("STARTTLS", s.c.t.Hello)
	if err != nil {
		return outcome{err: fmt.Errorf("STARTTLS: %w", err)}, false
	}
	if rep.Code != codeReady {
		if req != nil && rep.Code != codeClosing {
			return outcome{err: &TLSError{Type: TLSStartTLSNotSupported, Err: fmt.Errorf("STARTTLS refused: %w", rep.err())}}, false
		}
		if s.c.opts.RequireTLS || rep.Code == codeClosing {
			return outcome{err: fmt.Errorf("%w: STARTTLS refused: %w", errTLSRequired, rep.err())}, false
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
		if req != nil {
			// A policy's host whose handshake fails: a TLS-RPT
			// validation failure, never a plaintext retry.
			err = &TLSError{Type: TLSValidationFailure, Err: err}
		}
		return outcome{err: err, tlsFailed: true}, false
	}
	// RFC 3207 4.2: anything after the 220 that came before the handshake
	// is not part of the TLS session and is dropped with the old reader;
	// the server forgets all it knew, so EHLO again.
	s.wire(tc)
	if err := s.hello(); err != nil {
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
	s.peer = st.PeerCertificates
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
// answers. PLAIN is preferred, LOGIN taken when it is all there is.
func (s *session) auth() error {
	if s.tls == nil || !s.tls.Verified {
		return fmt.Errorf("%w: no AUTH without TLS whose certificate verifies for %s", errTLSRequired, s.host.Name)
	}
	var mech sasl.Client
	switch {
	case hasMech(s.ext.auth, sasl.Plain):
		mech = sasl.NewPlainClient("", s.c.opts.Username, s.c.opts.Password)
	case hasMech(s.ext.auth, sasl.Login):
		mech = sasl.NewLoginClient(s.c.opts.Username, s.c.opts.Password)
	default:
		return errors.New("AUTH: server offers neither PLAIN nor LOGIN")
	}
	name, ir, err := mech.Start()
	if err != nil {
		return fmt.Errorf("AUTH %s: %w", name, err)
	}
	line := "AUTH " + name
	if ir != nil {
		// RFC 4954 4: an empty initial response is sent as "=".
		line += " " + cmp.Or(base64.StdEncoding.EncodeToString(ir), "=")
	}
	for range 10 { // PLAIN takes one step, LOGIN three
		rep, err := s.command(line, s.c.t.Hello)
		if err != nil {
			return fmt.Errorf("AUTH: %w", err)
		}
		switch rep.Code {
		case codeAuthOK:
			return nil
		case codeAuthMore:
			ch, err := base64.StdEncoding.DecodeString(strings.TrimSpace(rep.Text))
			if err != nil {
				s.broken = true // mid-exchange; the server waits for an answer
				return fmt.Errorf("AUTH: challenge not base64: %w", err)
			}
			resp, err := mech.Next(ch)
			if err != nil {
				s.send("*") // RFC 4954 4: cancel the exchange
				s.flush(s.c.t.Hello)
				s.read(s.c.t.Hello)
				return fmt.Errorf("AUTH: %w", err)
			}
			line = base64.StdEncoding.EncodeToString(resp)
		default:
			return fmt.Errorf("AUTH: %w", rep.err())
		}
	}
	s.broken = true
	return errors.New("AUTH: too many challenges")
}

func hasMech(offered []string, m string) bool { return slices.Contains(offered, m) }

// quit says goodbye when the connection can still carry it (RFC 5321
// 4.1.1.10); its reply changes nothing.
func (s *session) quit() {
	if s.broken || s.w == nil {
		return
	}
	s.send("QUIT")
	if s.flush(s.c.t.Quit) == nil {
		if rep, err := s.read(s.c.t.Quit); err == nil && rep.Code == 221 {
			s.awaitClose(min(s.c.t.Quit, closeWait))
		}
	}
	s.broken = true
}

// closeWait bounds how long a client waits for the server to close the
// channel after its 221.
const closeWait = time.Second

// awaitClose waits for the server to close the channel, as it must after
// its 221 (RFC 5321 4.1.1.10), so the session ends on the server's side
// first: a receiver that counts its sessions never sees this one outlive
// the destination lease it was opened under (relay/slots.go) when a new
// connection follows at once, and TIME_WAIT stays with the server. A
// server that keeps talking or never closes costs at most closeWait.
func (s *session) awaitClose(d time.Duration) {
	s.conn.SetReadDeadline(time.Now().Add(d))
	_, _ = io.Copy(io.Discard, io.LimitReader(s.r, 4096))
}

// close says QUIT when the connection can still carry it and closes it.
func (s *session) close() {
	s.quit()
	s.end()
}

// end closes the connection without QUIT and uncounts it, once.
func (s *session) end() {
	s.conn.Close()
	if !s.ended {
		s.ended = true
		s.c.pool.closed(s)
	}
}

// drain reads and drops n replies, keeping a pipelined session in step
// after a failure; false when the connection gave out.
func (s *session) drain(n int, timeout time.Duration) bool {
	for range n {
		if _, err := s.read(timeout); err != nil {
			return false
		}
	}
	return !s.broken
}
