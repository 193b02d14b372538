package intake

import (
	"fmt"
	"slices"
	"strings"

	"github.com/mailferry/mailferry/mail"
)

// SenderError refuses a message that claims to come from a domain its key
// may not send from. The API answers it with 403, submission with 550 5.7.1.
type SenderError struct {
	Allowed []string // the key's domains
	Refused []RefusedSender
}

// RefusedSender is one sender domain outside the key's, and where the
// message claims it.
type RefusedSender struct {
	Domain string
	// Where is "From header", "Sender header", "Resent-From or
	// Resent-Sender header" or "envelope sender".
	Where string
}

func (e *SenderError) Error() string {
	ds := make([]string, len(e.Refused))
	for i, r := range e.Refused {
		ds[i] = fmt.Sprintf("%s (%s)", r.Domain, r.Where)
	}
	return fmt.Sprintf("sender domain not allowed for this key: %s; allowed: %s",
		strings.Join(ds, ", "), strings.Join(e.Allowed, ", "))
}

// CheckSenders is the open-relay rule, the one copy of it: every domain a
// receiver could read as the sender (From, Sender, Resent-From,
// Resent-Sender, the envelope sender) must be one of allowed, the key's
// domains. Otherwise Mailferry would sign and send mail for other people's
// domains. It returns a *SenderError naming each refused domain, or nil.
func CheckSenders(allowed []string, msg *mail.Message) error {
	var bad []RefusedSender
	for _, d := range msg.SenderDomains() {
		if !SenderAllowed(allowed, d) {
			bad = append(bad, RefusedSender{Domain: d, Where: senderWhere(msg, d)})
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return &SenderError{Allowed: allowed, Refused: bad}
}

// SenderAllowed reports whether domain is one of allowed. Submission asks
// it at MAIL FROM, before the message is read; CheckSenders asks it again
// of every sender the message names.
func SenderAllowed(allowed []string, domain string) bool {
	return slices.ContainsFunc(allowed, func(a string) bool { return strings.EqualFold(a, domain) })
}

// senderWhere names where a sender domain came from, first match wins.
func senderWhere(msg *mail.Message, domain string) string {
	has := func(addr string) bool { return addr != "" && strings.EqualFold(domainOf(addr), domain) }
	for _, a := range msg.From {
		if has(a.Addr) {
			return "From header"
		}
	}
	if has(msg.SenderHeader) {
		return "Sender header"
	}
	if slices.ContainsFunc(msg.Resent, has) {
		return "Resent-From or Resent-Sender header"
	}
	return "envelope sender"
}
