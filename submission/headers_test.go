package submission_test

import (
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

// TestRawHeaderRules (issue 18, items 2 and 12): what mail.ParseRaw
// refuses of a submitted header gets its own reply after DATA, and
// nothing is kept. Before the fix the \xff Message-ID got 451 (retried
// for ever) and failed the batch it was in; 8-bit headers without
// SMTPUTF8 and another domain's DKIM-Signature were accepted.
func TestRawHeaderRules(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	const tail = "To: bob@example.net\r\nSubject: hi\r\n\r\nbody\r\n"
	for _, tc := range []struct {
		name     string
		smtputf8 bool
		msg      string
		code     int
		enhanced smtp.EnhancedCode // zero: accepted
		detail   string
	}{
		{"Message-ID not UTF-8", true, "From: alice@example.com\r\nMessage-ID: <\xff@example.com>\r\n" + tail,
			554, smtp.EnhancedCode{5, 6, 0}, "Message-ID: is not valid UTF-8"},
		{"header control", true, "From: alice@example.com\r\nX-Note: a\x1bb\r\n" + tail,
			554, smtp.EnhancedCode{5, 6, 0}, "X-Note: must not contain control characters"},
		{"UTF-8 header without SMTPUTF8", false, "From: Jörg <alice@example.com>\r\n" + tail,
			554, smtp.EnhancedCode{5, 6, 7}, "SMTPUTF8"},
		{"UTF-8 header with SMTPUTF8", true, "From: Jörg <alice@example.com>\r\n" + tail, 0, smtp.EnhancedCode{}, ""},
		{"foreign DKIM-Signature", false, "DKIM-Signature: v=1; d=bank.example; s=s; bh=x; b=y\r\nFrom: alice@example.com\r\n" + tail,
			550, smtp.EnhancedCode{5, 7, 1}, "d=bank.example is not the domain"},
		{"own DKIM-Signature", false, "DKIM-Signature: v=1; d=example.com; s=s; bh=x; b=y\r\nFrom: alice@example.com\r\n" + tail, 0, smtp.EnhancedCode{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := h.login()
			before := h.messageCount()
			_, err := sendWith(c, &smtp.MailOptions{UTF8: tc.smtputf8}, "alice@example.com", []string{"bob@example.net"}, tc.msg)
			if tc.code == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			se := wantSMTPError(t, tc.name, err, tc.code, tc.enhanced)
			if !strings.Contains(se.Message, tc.detail) {
				t.Errorf("reply %q does not say …%s…", se.Message, tc.detail)
			}
			if n := h.messageCount(); n != before {
				t.Errorf("%d messages recorded by a refusal", n-before)
			}
		})
	}
}
