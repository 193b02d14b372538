package smtpclient

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// TLSRequirement is what a TLS policy (MTA-STS, DANE, REQUIRETLS) demands of
// one envelope's delivery. Set on an Envelope, it makes TLS mandatory: no
// host is used without a STARTTLS whose certificate passes Verify, and a
// failed handshake is never retried in plaintext (RFC 8461 5, RFC 7672 2.2).
type TLSRequirement struct {
	// Verify checks the chain a host presented. Nil is WebPKI: the chain
	// must verify against Options.RootCAs for the MX host name (RFC 8461
	// 4.2). It returns a *TLSError saying why not.
	Verify func(host string, chain []*x509.Certificate) error
	// RequireTLS: the message was sent with REQUIRETLS (RFC 8689). Only a
	// server that advertises REQUIRETLS after STARTTLS gets it, with the
	// REQUIRETLS MAIL parameter passed on (RFC 8689 4.1); when no host
	// qualifies every recipient bounces with 5.7.30 (RFC 8689 5).
	RequireTLS bool
}

// Result types of TLS-RPT (RFC 8460 4.3) a TLSError can carry.
const (
	TLSStartTLSNotSupported = "starttls-not-supported"
	TLSCertHostMismatch     = "certificate-host-mismatch"
	TLSCertExpired          = "certificate-expired"
	TLSCertNotTrusted       = "certificate-not-trusted"
	TLSValidationFailure    = "validation-failure"
	TLSTLSAInvalid          = "tlsa-invalid"
	// TLSNoRequireTLS is not an RFC 8460 type: the server lacks the
	// REQUIRETLS extension (RFC 8689 4.1).
	TLSNoRequireTLS = "requiretls-not-supported"
)

// enhRequireTLS is RFC 8689 5's "REQUIRETLS support required".
const enhRequireTLS = "5.7.30"

// TLSError is a host refused because it did not meet a TLSRequirement; Type
// is one of the TLS-RPT result types above.
type TLSError struct {
	Type string
	Err  error
}

func (e *TLSError) Error() string { return e.Type + ": " + e.Err.Error() }
func (e *TLSError) Unwrap() []error {
	return []error{errTLSRequired, e.Err}
}

// VerifyWebPKI checks chain against roots (nil: the system pool) for host,
// and names the failure with its TLS-RPT result type.
func VerifyWebPKI(host string, chain []*x509.Certificate, roots *x509.CertPool, now time.Time) error {
	if len(chain) == 0 {
		return &TLSError{Type: TLSValidationFailure, Err: errors.New("no certificate presented")}
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{DNSName: host, Roots: roots, Intermediates: inter, CurrentTime: now})
	if err == nil {
		return nil
	}
	typ := TLSValidationFailure
	var hn x509.HostnameError
	var inv x509.CertificateInvalidError
	var ua x509.UnknownAuthorityError
	switch {
	case errors.As(err, &hn):
		typ = TLSCertHostMismatch
	case errors.As(err, &inv) && inv.Reason == x509.Expired:
		typ = TLSCertExpired
	case errors.As(err, &ua):
		typ = TLSCertNotTrusted
	}
	return &TLSError{Type: typ, Err: fmt.Errorf("certificate for %s: %w", host, err)}
}

// checkPolicy applies req to the session's TLS state after STARTTLS and
// the second EHLO; nil when the session may carry the envelope.
func (s *session) checkPolicy(req *TLSRequirement) error {
	if req == nil {
		return nil
	}
	if s.tls == nil {
		return &TLSError{Type: TLSStartTLSNotSupported, Err: fmt.Errorf("%s[%s] does not offer STARTTLS", s.host.Name, s.ip)}
	}
	var err error
	if req.Verify != nil {
		err = req.Verify(s.host.Name, s.peer)
	} else {
		err = VerifyWebPKI(s.host.Name, s.peer, s.c.opts.RootCAs, time.Now())
	}
	if err != nil {
		var te *TLSError
		if !errors.As(err, &te) {
			err = &TLSError{Type: TLSValidationFailure, Err: err}
		}
		return err
	}
	if req.Verify != nil {
		s.tls.Verified = true // by the policy's own verifier (DANE)
	}
	if req.RequireTLS && !s.ext.requireTLS {
		// RFC 8689 4.1: REQUIRETLS must be advertised, else not this server.
		return &TLSError{Type: TLSNoRequireTLS, Err: fmt.Errorf("%s does not offer REQUIRETLS (RFC 8689)", s.host.Name)}
	}
	return nil
}
