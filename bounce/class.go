// Package bounce holds Mailferry's one failure taxonomy and the parsers of
// the reports that tell of failures after the SMTP session:
//
//   - Classify turns one failure (reply code, RFC 3463 enhanced status code,
//     reply text) into a Verdict: hard or soft, one Class, and whether the
//     address goes on the suppression list. The same rules serve synchronous
//     replies, asynchronous DSNs and expiry.
//   - Parse reads an RFC 3464 delivery status notification (and its RFC 6533
//     global form), an RFC 5965 ARF feedback report, or one of the plain-text
//     bounces that common MTAs still send, into a Report.
//
// The package does no I/O besides LoadRules reading the operator's rule
// file, and keeps no mutable package-level state; Rules and the functions
// are safe for concurrent use.
package bounce

// Type says whether a failure is worth retrying or mailing again.
type Type string

// The two types.
const (
	Hard Type = "hard" // permanent: the address or the message will not do
	Soft Type = "soft" // temporary, or about the mailbox state or our rate
)

// Valid reports whether t is Hard or Soft.
func (t Type) Valid() bool { return t == Hard || t == Soft }

// Class says what went wrong, in the words of the API (openapi.yaml,
// BounceClass).
type Class string

// The classes.
const (
	InvalidRecipient  Class = "invalid_recipient"  // no such mailbox or domain
	MailboxFull       Class = "mailbox_full"       // over quota, storage full
	MessageTooLarge   Class = "message_too_large"  // size limits
	ContentRejected   Class = "content_rejected"   // virus, attachment, format
	SpamBlock         Class = "spam_block"         // blocklist, reputation, spam verdict
	Policy            Class = "policy"             // other local policy
	AuthFailure       Class = "auth_failure"       // SPF, DKIM, DMARC, reverse DNS
	RateLimited       Class = "rate_limited"       // too many messages or connections
	DNSFailure        Class = "dns_failure"        // the domain does not resolve or route
	TLSFailure        Class = "tls_failure"        // TLS required, not had
	ConnectionFailure Class = "connection_failure" // no answer, connection lost
	ProtocolError     Class = "protocol_error"     // SMTP syntax, extensions
	Expired           Class = "expired"            // gave up retrying
	Suppressed        Class = "suppressed"         // on a suppression list
	Other             Class = "other"
)

// Classes returns every class, in the order openapi.yaml lists them.
func Classes() []Class {
	return []Class{
		InvalidRecipient, MailboxFull, MessageTooLarge, ContentRejected, SpamBlock, Policy,
		AuthFailure, RateLimited, DNSFailure, TLSFailure, ConnectionFailure, ProtocolError,
		Expired, Suppressed, Other,
	}
}

// Valid reports whether c is one of Classes.
func (c Class) Valid() bool {
	switch c {
	case InvalidRecipient, MailboxFull, MessageTooLarge, ContentRejected, SpamBlock, Policy,
		AuthFailure, RateLimited, DNSFailure, TLSFailure, ConnectionFailure, ProtocolError,
		Expired, Suppressed, Other:
		return true
	}
	return false
}

// Verdict is the classification of one failure.
type Verdict struct {
	Type  Type
	Class Class
	// Suppress: this failure puts the address on the suppression list
	// (reason hard_bounce). True for a hard InvalidRecipient and for
	// permanent failures a rule marks "suppress".
	Suppress bool
}
