package relay

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/emersion/go-smtp"
)

// Recipient outcomes, as the API reports them (PRODUCT.md "Contract").
const (
	StatusDelivered = "delivered"
	StatusDeferred  = "deferred"
	StatusBounced   = "bounced"
)

// SMTP reply codes this package acts on.
const (
	codeReady           = 220 // RFC 5321 4.2.3; also the go-ahead for STARTTLS, RFC 3207 4
	codeClosing         = 421 // RFC 5321 3.8: service not available, the server closes the channel
	codeExceededStorage = 552 // RFC 5321 4.2.2; on RCPT, 4.5.3.1.10: "too many recipients", treat as 452
)

// Enhanced status codes (RFC 3463) for outcomes decided here rather than by
// a server.
const (
	enhNoAnswer      = "4.4.1"  // RFC 3463 3.5 X.4.1: no answer from host
	enhBadConnection = "4.4.2"  // RFC 3463 3.5 X.4.2: bad connection
	enhSecurity      = "4.7.0"  // RFC 3463 3.8 X.7.0: other security status (TLS required, not had)
	enhTooBig        = "5.3.4"  // RFC 3463 3.4 X.3.4: message too big for system (RFC 1870 SIZE)
	enhNoUTF8        = "5.6.7"  // RFC 6531 3.5, RFC 5248: non-ASCII addresses not permitted
	enhBadRcptSyntax = "5.1.3"  // RFC 3463 3.2 X.1.3: bad destination mailbox address syntax
	enhBadFromSyntax = "5.1.7"  // RFC 3463 3.2 X.1.7: bad sender's mailbox address syntax
	enhNullMX        = "5.1.10" // RFC 7505 3, 4.1: recipient address has null MX
	enhNoDomain      = "5.1.2"  // RFC 3463 3.2 X.1.2: bad destination system address
	enhNoRoute       = "5.4.4"  // RFC 3463 3.5 X.4.4: unable to route
	enhNoRouteTemp   = "4.4.4"
	enhDNSTemp       = "4.4.3" // RFC 3463 3.5 X.4.3: directory server failure
)

// Result is what became of one recipient in one attempt: the server's reply
// when there was one (Code, Enhanced, Line), whether it is final
// (Permanent), and the cause when it is not a success (Err). Code is 0 when
// the outcome was decided without a reply (a network error, SIZE, the
// guard); Enhanced is then set by us. Status, not the codes, is the
// verdict: a host skipped for a 5xx greeting leaves a deferral that still
// carries the server's 5.x.x.
type Result struct {
	Code      int
	Enhanced  string // "2.0.0"; "" when the server sent none
	Line      string // server text without code and enhanced code; lines joined by "\n"
	Permanent bool
	Err       error
}

// Status is StatusDelivered, StatusDeferred or StatusBounced.
func (r Result) Status() string {
	switch {
	case r.Permanent:
		return StatusBounced
	case r.Err == nil && r.Code/100 == 2:
		return StatusDelivered
	default:
		return StatusDeferred
	}
}

// TLSInfo describes the TLS session a transaction ran over.
type TLSInfo struct {
	Version  string // "TLS1.3"
	Cipher   string // tls.CipherSuiteName
	Verified bool   // chain verified against RootCAs for the host name
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
	// Host, IP and TLS are those of the host that ran the transaction; Host
	// is "" when none got that far and Tried says why.
	Host    string
	IP      netip.Addr
	TLS     *TLSInfo // nil over plaintext
	Started time.Time
	// Duration covers every host tried.
	Duration time.Duration
	// Results has one entry per Envelope.To, in the same order.
	Results []Result
	Tried   []HostError
}

// replyResult classifies a server's reply to stage ("MAIL FROM", "RCPT TO",
// "DATA") for one recipient: 2xx success, 4xx temporary, 5xx permanent, with
// the RCPT 552 exception.
func replyResult(e *smtp.SMTPError, stage string) Result {
	if e.Code < 200 || e.Code > 599 {
		return failureResult(fmt.Errorf("%s: %w", stage, e))
	}
	enh, line := smtpErrorText(e)
	r := Result{Code: e.Code, Enhanced: enh, Line: line}
	switch {
	case e.Code/100 == 2:
		return r
	case e.Code == codeExceededStorage && stage == "RCPT TO":
		// RFC 5321 4.5.3.1.10: "552 … too many recipients" on RCPT must be
		// treated as temporary; the recipient is retried later.
		r.Err = fmt.Errorf("%s: %w (treated as temporary, RFC 5321 4.5.3.1.10)", stage, e)
	case e.Code/100 == 5:
		r.Permanent = true
		r.Err = fmt.Errorf("%s: %w", stage, e)
	default:
		// 4xx, and anything outside 2xx/4xx/5xx (a protocol error): retry.
		r.Err = fmt.Errorf("%s: %w", stage, e)
	}
	return r
}

// localResult is an outcome decided without a server reply.
func localResult(enhanced string, err error) Result {
	return Result{Enhanced: enhanced, Permanent: enhanced[0] == '5', Err: err}
}

// failureResult turns whatever made a host unusable into a deferral,
// keeping the server's reply when the failure was one.
func failureResult(err error) Result {
	var e *smtp.SMTPError
	if errors.As(err, &e) && e.Code >= 200 && e.Code <= 599 {
		enh, line := smtpErrorText(e)
		return Result{Code: e.Code, Enhanced: enh, Line: line, Err: err}
	}
	// No reply, or one whose code RFC 5321 4.2.1 does not allow: Code
	// stays 0 so that garbage never looks like a server's verdict.
	enh := enhBadConnection
	var de *dialError
	if errors.As(err, &de) {
		enh = enhNoAnswer
	}
	if errors.Is(err, errTLSRequired) {
		enh = enhSecurity
	}
	return Result{Enhanced: enh, Err: err}
}

// smtpErrorText recovers the enhanced code and text of a reply go-smtp has
// already parsed. go-smtp strips an enhanced code it recognised from the
// text; it sets none when the text did not start with one.
func smtpErrorText(e *smtp.SMTPError) (enhanced, line string) {
	ec := e.EnhancedCode
	if ec == smtp.EnhancedCodeNotSet || ec == smtp.NoEnhancedCode {
		return parseEnhanced(e.Code, e.Message)
	}
	enh := fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
	if validEnhanced(e.Code, enh) {
		return enh, e.Message
	}
	return "", enh + " " + e.Message
}
