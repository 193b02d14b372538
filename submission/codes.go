package submission

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// Reply codes (RFC 5321 4.2.3) this package sends, each where it is
// defined. The enhanced status codes (RFC 3463, RFC 2034) go with them in
// the constructors below.
const (
	codeQueued            = 250 // RFC 5321 4.2.3: requested mail action okay, completed
	codeConnectionLimit   = 421 // RFC 5321 3.1: a server may refuse a connection with 421
	codeLocalError        = 451 // RFC 5321 4.2.3: requested action aborted, local error in processing
	codeInsufficient      = 452 // RFC 5321 4.2.3: requested action not taken, insufficient system storage
	codeAuthTemporary     = 454 // RFC 4954 6: temporary authentication failure
	codeAuthRequired      = 530 // RFC 4954 6: authentication required
	codeAuthInvalid       = 535 // RFC 4954 6: authentication credentials invalid
	codeEncryptionNeeded  = 538 // RFC 4954 6: encryption required for requested authentication mechanism
	codeBadSequence       = 503 // RFC 5321 4.2.3: bad sequence of commands
	codeNotAllowed        = 550 // RFC 5321 4.2.3: requested action not taken, not allowed
	codeTooLarge          = 552 // RFC 1870 6.1, RFC 5321 4.2.3: exceeded storage allocation
	codeMailboxNotAllowed = 553 // RFC 5321 4.2.3: mailbox name not allowed (syntax)
	codeTransactionFailed = 554 // RFC 5321 4.2.3: transaction failed
)

func reply(code int, enhanced smtp.EnhancedCode, format string, args ...any) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: enhanced, Message: fmt.Sprintf(format, args...)}
}

// errQueued is the success reply to DATA (and BDAT LAST). go-smtp's Session
// has no other way to choose the text of a 2xx reply than to return it as
// an *SMTPError: it writes its code and message as they are.
func errQueued(id string) *smtp.SMTPError {
	return reply(codeQueued, smtp.EnhancedCode{2, 0, 0}, "queued as %s", id) // RFC 3463 3.1: X.0.0
}

// errAuthRequired answers MAIL before a successful AUTH. RFC 6409 4.3: the
// MSA does not take mail from a client it has not authenticated.
func errAuthRequired() *smtp.SMTPError {
	return reply(codeAuthRequired, smtp.EnhancedCode{5, 7, 0}, // RFC 4954 6
		"authentication required: AUTH with your tenant as user name and an API key as password")
}

// errEncryptionRequired answers AUTH before TLS. RFC 4954 4: a server
// SHOULD NOT offer plaintext mechanisms over an unencrypted channel; RFC
// 3207 4.1 has the client issue STARTTLS first.
func errEncryptionRequired() *smtp.SMTPError {
	return reply(codeEncryptionNeeded, smtp.EnhancedCode{5, 7, 11}, // RFC 4954 6
		"encryption required for authentication: issue STARTTLS first, or connect to the implicit-TLS port")
}

func errAuthInvalid() *smtp.SMTPError {
	return reply(codeAuthInvalid, smtp.EnhancedCode{5, 7, 8}, // RFC 4954 6
		"authentication credentials invalid: the user name is the tenant, the password one of its API keys")
}

func errAuthUnavailable() *smtp.SMTPError {
	return reply(codeAuthTemporary, smtp.EnhancedCode{4, 7, 0}, // RFC 4954 6
		"temporary authentication failure: the key store did not answer, try again")
}

func errAuthBlocked(wait time.Duration) *smtp.SMTPError {
	return reply(codeAuthTemporary, smtp.EnhancedCode{4, 7, 0}, // RFC 4954 6
		"too many failed logins from your address: try again in %d seconds", int(wait.Round(time.Second)/time.Second))
}

// errSenderNotAllowed refuses a sender domain outside the key's; RFC 3463
// 3.8 X.7.1: delivery not authorized, message refused.
func errSenderNotAllowed(where, domain string, allowed []string) *smtp.SMTPError {
	return reply(codeNotAllowed, smtp.EnhancedCode{5, 7, 1},
		"%s: this key may not send from %s (allowed: %s)", where, domain, strings.Join(allowed, ", "))
}

func errSenderUnverified(refusal string) *smtp.SMTPError {
	return reply(codeNotAllowed, smtp.EnhancedCode{5, 7, 1}, "%s", refusal) // RFC 3463 3.8: X.7.1 not authorized
}

func errNullSender() *smtp.SMTPError {
	return reply(codeNotAllowed, smtp.EnhancedCode{5, 7, 1}, // RFC 3463 3.8
		"a null reverse-path <> cannot be submitted: give a sender address in one of your domains")
}

func errBadSequence(cmd, detail string) *smtp.SMTPError {
	return reply(codeBadSequence, smtp.EnhancedCode{5, 5, 1}, "%s out of sequence: %s", cmd, detail) // RFC 3463 3.6: X.5.1
}

func errBadSender(err error) *smtp.SMTPError {
	return reply(codeMailboxNotAllowed, smtp.EnhancedCode{5, 1, 7}, "bad sender address: %v", err) // RFC 3463 3.2: X.1.7
}

func errBadRecipient(err error) *smtp.SMTPError {
	return reply(codeMailboxNotAllowed, smtp.EnhancedCode{5, 1, 3}, "bad recipient address: %v", err) // RFC 3463 3.2: X.1.3
}

func errTooLarge(limit int64) *smtp.SMTPError {
	return reply(codeTooLarge, smtp.EnhancedCode{5, 3, 4}, // RFC 3463 3.4: X.3.4, message too big for system
		"message too large: the limit is %d bytes", limit)
}

// errInvalidMessage refuses content mail.ParseRaw will not take; RFC 3463
// 3.7 X.6.0: other or undefined media error.
func errInvalidMessage(detail string) *smtp.SMTPError {
	return reply(codeTransactionFailed, smtp.EnhancedCode{5, 6, 0}, "message refused: %s", detail)
}

// errNeedsSMTPUTF8 refuses 8-bit header octets in a transaction whose MAIL
// had no SMTPUTF8 parameter: RFC 6531 3.4, the client MUST give it when the
// message needs it; 554 after the final dot and X.6.7, the extension's
// code for what needs it and was not allowed (RFC 6531 3.5).
func errNeedsSMTPUTF8(detail string) *smtp.SMTPError {
	return reply(codeTransactionFailed, smtp.EnhancedCode{5, 6, 7}, "message refused: %s", detail)
}

// errForeignSignature refuses a DKIM-Signature of a domain the message
// does not claim to come from; RFC 3463 3.8 X.7.1: delivery not
// authorized, message refused, as for a sender domain outside the key's.
func errForeignSignature(detail string) *smtp.SMTPError {
	return reply(codeNotAllowed, smtp.EnhancedCode{5, 7, 1}, "message refused: %s", detail)
}

// errUnavailable: the ledger or the queue did not take the message, and
// nothing was accepted; RFC 3463 3.4 X.3.0: other or undefined mail system
// status.
func errUnavailable() *smtp.SMTPError {
	return reply(codeLocalError, smtp.EnhancedCode{4, 3, 0},
		"message not accepted: the queue or the ledger is unavailable; nothing was kept, try again")
}

// errBusy: the message bytes in flight are at MAILFERRY_MAX_BYTES_IN_FLIGHT;
// RFC 3463 3.4 X.3.1: mail system full. Nothing was kept.
func errBusy() *smtp.SMTPError {
	return reply(codeInsufficient, smtp.EnhancedCode{4, 3, 1},
		"message not accepted: too many large messages in flight on this server; nothing was kept, try again")
}

// errRateLimited: the key's budget (MAILFERRY_RATE_LIMIT), shared with
// the HTTP API, is spent; RFC 3463 3.8 X.7.0: other security or policy
// status. A 4xx: the client retries after the wait it is told.
func errRateLimited(waitSeconds int64, rate float64, burst int) *smtp.SMTPError {
	return reply(codeLocalError, smtp.EnhancedCode{4, 7, 0},
		"rate limited; try again in %ds: this API key may send %s messages a second (bursts of %d), over the API and SMTP together",
		waitSeconds, strconv.FormatFloat(rate, 'f', -1, 64), burst)
}

// errReadAborted: the client stopped sending in mid-message (timeout,
// reset, closed connection). A 4xx, so a client that reads it retries.
func errReadAborted() *smtp.SMTPError {
	return reply(codeLocalError, smtp.EnhancedCode{4, 4, 2}, "message not accepted: reading it failed") // RFC 3463 3.5: X.4.2, bad connection
}

// connectionLimitLine refuses a connection beyond MaxConnections; RFC 3463
// 3.5 X.4.5: mail system congestion.
func connectionLimitLine(hostname string) string {
	return fmt.Sprintf("%d 4.4.5 %s too many connections, try again later\r\n", codeConnectionLimit, hostname)
}

// clientLimitLine refuses a connection beyond MaxConnectionsPerIP; RFC
// 3463 3.8 X.7.0: other security or policy status.
func clientLimitLine(hostname string) string {
	return fmt.Sprintf("%d 4.7.0 %s too many connections from your address, try again later\r\n", codeConnectionLimit, hostname)
}
