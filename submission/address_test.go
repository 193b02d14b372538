package submission_test

import (
	"testing"

	"github.com/emersion/go-smtp"
)

// TestQuotedLocalParts: a local part the relay would not send is refused
// at MAIL (553 5.1.7) or RCPT (553 5.1.3), before any data, as the API
// refuses it with 422 (issue 18 item 11; mail.CheckLocalPart).
func TestQuotedLocalParts(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	c := h.login()
	for _, from := range []string{`"a<b"@example.com`, `"x>y"@example.com`} {
		wantSMTPError(t, "MAIL FROM "+from, c.Mail(from, nil), 553, smtp.EnhancedCode{5, 1, 7})
	}
	if err := c.Mail("alice@example.com", nil); err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{`"a<b"@example.com`, `"x>y"@example.net`, `"<bob@evil.test>"@example.net`,
		// Read as a mailbox with a display name this would be bob@evil.test.
		`"Bob <bob@evil.test> (x"@example.com`} {
		wantSMTPError(t, "RCPT TO "+to, c.Rcpt(to, nil), 553, smtp.EnhancedCode{5, 1, 3})
	}
	// What the API takes, a path takes too: a quoted local part with a
	// space is a valid mailbox (RFC 5321 4.1.2 Quoted-string).
	if err := c.Rcpt(`"a b"@example.net`, nil); err != nil {
		t.Errorf(`RCPT TO "a b"@example.net: %v`, err)
	}
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	if n := h.messageCount(); n != 0 {
		t.Errorf("%d messages in the ledger after refusals", n)
	}
}
