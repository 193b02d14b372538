package smtpclient

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// SMTP reply codes this package acts on.
const (
	codeReady           = 220 // RFC 5321 4.2.3; also the go-ahead for STARTTLS, RFC 3207 4
	codeAuthOK          = 235 // RFC 4954 6
	codeAuthMore        = 334 // RFC 4954 4: a server challenge
	codeStartData       = 354 // RFC 5321 4.1.1.4
	codeClosing         = 421 // RFC 5321 3.8: service not available, the server closes the channel
	codeTooManyRcpts    = 452 // RFC 5321 4.5.3.1.10: "too many recipients" on RCPT
	codeExceededStorage = 552 // RFC 5321 4.2.2; on RCPT, 4.5.3.1.10: "too many recipients", treat as 452
)

// Enhanced status codes (RFC 3463) for outcomes decided here rather than by
// a server.
const (
	enhNoAnswer      = "4.4.1" // RFC 3463 3.5 X.4.1: no answer from host
	enhBadConnection = "4.4.2" // RFC 3463 3.5 X.4.2: bad connection
	enhSecurity      = "4.7.0" // RFC 3463 3.8 X.7.0: other security status (TLS required, not had)
	enhLocal         = "4.3.0" // RFC 3463 3.4 X.3.0: other or undefined mail system status
	enhTooBig        = "5.3.4" // RFC 3463 3.4 X.3.4: message too big for system (RFC 1870 SIZE)
	enhNo8Bit        = "5.6.3" // RFC 3463 3.7 X.6.3: conversion required but not supported (RFC 6152 3)
	enhNoUTF8        = "5.6.7" // RFC 6531 3.5, RFC 5248: non-ASCII addresses not permitted
	enhBadRcptSyntax = "5.1.3" // RFC 3463 3.2 X.1.3: bad destination mailbox address syntax
	enhBadFromSyntax = "5.1.7" // RFC 3463 3.2 X.1.7: bad sender's mailbox address syntax
	enhNoRoute       = "5.4.4" // RFC 3463 3.5 X.4.4: unable to route
	enhNoRouteTemp   = "4.4.4"
)

var (
	// ErrNoAddress: no host had an address to try.
	ErrNoAddress = errors.New("no mail host has an address")
	// ErrPrivateOnly: every address tried was refused by netguard.
	ErrPrivateOnly = errors.New("destination resolves only to private addresses")

	errTLSRequired = errors.New("TLS required")
)

// Result is what became of one recipient in one attempt: the server's reply
// when there was one (Code, Enhanced, Line), whether it is final
// (Permanent), and the cause when it is not a success (Err). Code is 0 when
// the outcome was decided without a reply (a network error, SIZE, the
// guard); Enhanced is then set by us. Err is nil exactly when the recipient
// was delivered; Permanent says a failure is final (bounce), otherwise it
// may be retried. A host skipped for a 5xx greeting leaves a temporary
// failure that still carries the server's 5.x.x.
type Result struct {
	Code      int
	Enhanced  string // "2.0.0"; "" when the server sent none
	Line      string // server text without code and enhanced code; lines joined by "\n"
	Permanent bool
	Err       error
}

// TLSInfo describes the TLS session a transaction ran over.
type TLSInfo struct {
	Version  string // "TLS1.3"
	Cipher   string // tls.CipherSuiteName
	Verified bool   // chain verified against RootCAs for the host name, or by a TLSRequirement's Verify (DANE)
}

// Host is one mail host in delivery order, its addresses in the order to
// try them.
type Host struct {
	Name       string // no trailing dot; the TLS server name
	Preference uint16 // MX preference, for the record
	Addrs      []netip.Addr
}

// HostError is one host (one address) that failed before a transaction
// could run on it, kept for logs and events.
type HostError struct {
	Host string
	IP   netip.Addr
	Err  error
}

// Attempt is the outcome of Client.Deliver.
type Attempt struct {
	// Host, IP and TLS are those of the host that ran the transactions;
	// Host is "" when none got that far and Tried says why.
	Host    string
	IP      netip.Addr
	TLS     *TLSInfo // nil over plaintext
	Started time.Time
	// Duration covers every host tried.
	Duration time.Duration
	// Results has one entry per Envelope.To, in the same order.
	Results []Result
	Tried   []HostError
	// Transactions is how many MAIL transactions ran on Host: more than
	// one when the recipients exceed the server's limit.
	Transactions int
	// RoundTrips counts the replies we had to wait for over the network,
	// on every host tried: the greeting, each EHLO, and each group of
	// commands sent together (with PIPELINING, MAIL, the RCPTs and DATA
	// are one).
	RoundTrips int
	// TLSFailure is the TLS-RPT result type (RFC 8460 4.3) of the last
	// host a TLSRequirement ruled out; "" when none was.
	TLSFailure string
	// TLSPolicy names the policy the attempt ran under (none, mta-sts,
	// dane, requiretls) and TLSOptOut says the message's "TLS-Required:
	// No" header (RFC 8689 5) set policies aside; both are set by the
	// policy layer around the client (package tlspolicy), not here.
	TLSPolicy string
	TLSOptOut bool
}

// ReplyError is a server reply that was not the one hoped for.
type ReplyError struct {
	Code     int
	Enhanced string // RFC 3463 code, "" if none
	Text     string // lines joined by "\n"
}

func (e *ReplyError) Error() string {
	var b strings.Builder
	b.WriteString("SMTP reply ")
	b.WriteString(strconv.Itoa(e.Code))
	if e.Enhanced != "" {
		b.WriteString(" " + e.Enhanced)
	}
	if e.Text != "" {
		b.WriteString(" " + clip(strings.ReplaceAll(e.Text, "\n", " / ")))
	}
	return b.String()
}

func (r reply) err() *ReplyError {
	return &ReplyError{Code: r.Code, Enhanced: r.Enhanced, Text: r.Text}
}

// replyResult classifies a server's reply to stage ("MAIL FROM", "RCPT TO",
// "DATA") for one recipient: 2xx success, 4xx temporary, 5xx permanent, with
// the RCPT 552 exception.
func replyResult(e *ReplyError, stage string) Result {
	if e.Code < 200 || e.Code > 599 {
		return failureResult(fmt.Errorf("%s: %w", stage, e))
	}
	r := Result{Code: e.Code, Enhanced: e.Enhanced, Line: e.Text}
	switch {
	case e.Code/100 == 2:
		return r
	case tooManyRcpts(e.Code, stage):
		// RFC 5321 4.5.3.1.10: "552 … too many recipients" on RCPT must be
		// treated as temporary, like 452.
		r.Err = fmt.Errorf("%s: %w (too many recipients: temporary, RFC 5321 4.5.3.1.10)", stage, e)
	case e.Code/100 == 5:
		r.Permanent = true
		r.Err = fmt.Errorf("%s: %w", stage, e)
	default:
		// 4xx, and 3xx where it does not belong (a protocol error): retry.
		r.Err = fmt.Errorf("%s: %w", stage, e)
	}
	return r
}

// tooManyRcpts: a reply that asks for the recipient to come in another
// transaction (RFC 5321 4.5.3.1.10).
func tooManyRcpts(code int, stage string) bool {
	return stage == stageRcpt && (code == codeTooManyRcpts || code == codeExceededStorage)
}

// localResult is an outcome decided without a server reply.
func localResult(enhanced string, err error) Result {
	return Result{Enhanced: enhanced, Permanent: enhanced[0] == '5', Err: err}
}

// failureResult turns whatever made a host unusable into a deferral,
// keeping the server's reply when the failure was one.
func failureResult(err error) Result {
	var e *ReplyError
	if errors.As(err, &e) && e.Code >= 200 && e.Code <= 599 {
		return Result{Code: e.Code, Enhanced: e.Enhanced, Line: e.Text, Err: err}
	}
	// No reply: Code stays 0 so that garbage never looks like a server's
	// verdict.
	enh := enhBadConnection
	var de *dialError
	if errors.As(err, &de) {
		enh = enhNoAnswer
	}
	if errors.Is(err, errTLSRequired) {
		enh = enhSecurity
	}
	var te *TLSError
	if errors.As(err, &te) {
		// RFC 3463 3.8: X.7.4 security features not supported (no
		// STARTTLS, no REQUIRETLS), X.7.5 cryptographic failure.
		enh = "4.7.5"
		if te.Type == TLSStartTLSNotSupported || te.Type == TLSNoRequireTLS {
			enh = "4.7.4"
		}
	}
	return Result{Enhanced: enh, Err: err}
}
