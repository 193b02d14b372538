package bounce

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const testVERP = "b-agjulqt4dz7tvhjllzxxbamnfm-0-3yq6m2xv7tc4bkge@bounces.mailferry.example"

// corpusCase is what one sample under testdata must parse to. For DSNs
// and plain bounces the first recipient's (SMTPCode, Status,
// DiagnosticCode) go through DefaultRules().Classify.
type corpusCase struct {
	file      string
	kind      string
	rcpt      string
	action    string
	status    string
	smtpCode  int
	class     Class // "" for ARF
	typ       Type
	reporting string
	feedback  string
	messageID string
}

var corpus = []corpusCase{
	{file: "postfix-dsn-user-unknown.eml", kind: "dsn", rcpt: "nobody@example.com", action: "failed", status: "5.1.1", smtpCode: 550, class: InvalidRecipient, typ: Hard, reporting: "mx.example.com", messageID: "20261207.abc123@mailferry.example"},
	{file: "postfix-dsn-mailbox-full.eml", kind: "dsn", rcpt: "full@example.com", action: "failed", status: "5.2.2", smtpCode: 552, class: MailboxFull, typ: Soft, reporting: "mx.example.com"},
	{file: "exim-dsn-too-large.eml", kind: "dsn", rcpt: "big@example.net", action: "failed", status: "5.0.0", smtpCode: 552, class: MessageTooLarge, typ: Hard, reporting: "exim.example.net"},
	{file: "dsn-content-virus.eml", kind: "dsn", rcpt: "clerk@example.org", action: "failed", status: "5.7.1", smtpCode: 554, class: ContentRejected, typ: Hard},
	{file: "gmail-dsn-spam.eml", kind: "dsn", rcpt: "someone@gmail.example", action: "failed", status: "5.7.1", smtpCode: 550, class: SpamBlock, typ: Hard, reporting: "googlemail.com"},
	{file: "dsn-policy-relay-denied.eml", kind: "dsn", rcpt: "user@elsewhere.example", action: "failed", status: "5.7.1", smtpCode: 554, class: Policy, typ: Hard},
	{file: "dsn-auth-dmarc.eml", kind: "dsn", rcpt: "ceo@strict.example", action: "failed", status: "5.7.26", smtpCode: 550, class: AuthFailure, typ: Hard},
	{file: "postfix-dsn-delayed-tss04.eml", kind: "dsn", rcpt: "reader@yahoo.example", action: "delayed", status: "4.7.0", smtpCode: 421, class: RateLimited, typ: Soft},
	{file: "postfix-dsn-host-not-found.eml", kind: "dsn", rcpt: "someone@nowhere.invalid", action: "failed", status: "5.4.4", class: DNSFailure, typ: Hard},
	{file: "postfix-dsn-tls-required.eml", kind: "dsn", rcpt: "secure@bank.example", action: "failed", status: "4.7.4", class: TLSFailure, typ: Soft},
	{file: "postfix-dsn-connection-refused.eml", kind: "dsn", rcpt: "ops@down.example", action: "failed", status: "4.4.1", class: ConnectionFailure, typ: Soft},
	{file: "dsn-protocol-syntax.eml", kind: "dsn", rcpt: "dev@oldmta.example", action: "failed", status: "5.5.2", smtpCode: 500, class: ProtocolError, typ: Hard},
	{file: "sendmail-dsn-expired.eml", kind: "dsn", rcpt: "late@slow.example", action: "failed", status: "4.4.7", class: Expired, typ: Soft, reporting: "relay.example.org"},
	{file: "dsn-suppressed.eml", kind: "dsn", rcpt: "gone@example.com", action: "failed", status: "5.1.0", smtpCode: 550, class: Suppressed, typ: Hard},
	{file: "dsn-other-system-error.eml", kind: "dsn", rcpt: "odd@example.com", action: "failed", status: "5.3.0", smtpCode: 554, class: Other, typ: Hard},
	{file: "m365-dsn-banned-ip.eml", kind: "dsn", rcpt: "user@contoso.example", action: "failed", status: "5.7.606", smtpCode: 550, class: SpamBlock, typ: Hard, reporting: "BN8NAM12HT123.mail.protection.outlook.example"},
	{file: "dsn-multi-recipient.eml", kind: "dsn", rcpt: "a@example.com", action: "failed", status: "5.1.1", smtpCode: 550, class: InvalidRecipient, typ: Hard},
	{file: "global-dsn-utf8.eml", kind: "dsn", rcpt: "jörg@bücher.example", action: "failed", status: "5.1.1", smtpCode: 550, class: InvalidRecipient, typ: Hard, reporting: "mx.xn--bcher-kva.example"},

	{file: "arf-abuse.eml", kind: "arf", rcpt: "reader@isp.example", action: "complained", feedback: "abuse", reporting: "mail.isp.example", messageID: "20261207.abc123@mailferry.example"},
	{file: "arf-no-rcpt-to.eml", kind: "arf", rcpt: "redacted@yahoo.example", action: "complained", feedback: "abuse"},
	{file: "arf-headers-only-fraud.eml", kind: "arf", rcpt: "victim@isp.example", action: "complained", feedback: "fraud", reporting: "fbl.isp.example"},

	{file: "postfix-plain-user-unknown.eml", kind: "plain", rcpt: "nobody@example.org", action: "failed", status: "5.1.1", smtpCode: 550, class: InvalidRecipient, typ: Hard, reporting: "old.example.org", messageID: "20261207.abc123@mailferry.example"},
	{file: "exim-plain-retry-timeout.eml", kind: "plain", rcpt: "late@slow.example", action: "failed", class: Expired, typ: Soft, messageID: "20261207.abc123@mailferry.example"},
	{file: "exim-plain-spamhaus.eml", kind: "plain", rcpt: "friend@listed.example", action: "failed", status: "5.7.1", smtpCode: 554, class: SpamBlock, typ: Hard, messageID: "20261207.abc123@mailferry.example"},
	{file: "exchange-plain-not-found.eml", kind: "plain", rcpt: "nobody@contoso.example", action: "failed", status: "5.1.10", smtpCode: 550, class: InvalidRecipient, typ: Hard, reporting: "BN8PR12MB3456.namprd12.prod.outlook.example", messageID: "20261207.abc123@mailferry.example"},
	{file: "gmail-plain-permanent.eml", kind: "plain", rcpt: "nobody@example.net", action: "failed", status: "5.1.1", smtpCode: 550, class: InvalidRecipient, typ: Hard, messageID: "20261207.abc123@mailferry.example"},
	{file: "gmail-plain-over-quota.eml", kind: "plain", rcpt: "stuffed@gmail.example", action: "failed", status: "5.2.2", smtpCode: 552, class: MailboxFull, typ: Soft},
	{file: "yahoo-plain-blocked.eml", kind: "plain", rcpt: "friend@listed.example", action: "failed", status: "5.7.1", smtpCode: 550, class: SpamBlock, typ: Hard, messageID: "20261207.abc123@mailferry.example"},
	{file: "qmail-plain-no-mailbox.eml", kind: "plain", rcpt: "nobody@mail.example.org", action: "failed", status: "5.1.1", class: InvalidRecipient, typ: Hard, reporting: "mail.example.org", messageID: "20261207.abc123@mailferry.example"},
	{file: "exchange2010-plain-expired.eml", kind: "plain", rcpt: "someone@partner.example", action: "failed", status: "4.4.7", smtpCode: 550, class: Expired, typ: Soft, reporting: "EXCH01.corp.example", messageID: "20261207.abc123@mailferry.example"},
	{file: "gmail-plain-delayed.eml", kind: "plain", rcpt: "busy@gmail.example", action: "delayed", status: "4.2.1", smtpCode: 450, class: RateLimited, typ: Soft},
	{file: "postfix-plain-delayed-timeout.eml", kind: "plain", rcpt: "ops@slow.example", action: "delayed", class: ConnectionFailure, typ: Soft, reporting: "old.example.org", messageID: "20261207.abc123@mailferry.example"},
	{file: "exim-mixed-base64.eml", kind: "plain", rcpt: "gone@old-isp.example", action: "failed", status: "5.1.1", smtpCode: 550, class: InvalidRecipient, typ: Hard, messageID: "20261207.abc123@mailferry.example"},
	{file: "m365-plain-dbeb.eml", kind: "plain", rcpt: "ghost@contoso.example", action: "failed", status: "5.4.1", smtpCode: 550, class: InvalidRecipient, typ: Hard, reporting: "DM6PR12MB4567.namprd12.prod.outlook.example", messageID: "20261207.abc123@mailferry.example"},
	{file: "qmail-plain-remote-full.eml", kind: "plain", rcpt: "stuffed@remote.example", action: "failed", status: "5.2.2", smtpCode: 552, class: MailboxFull, typ: Soft, reporting: "mail.example.org"},
}

func TestCorpus(t *testing.T) {
	rules := DefaultRules()
	seen := map[string]bool{}
	for _, tc := range corpus {
		seen[tc.file] = true
		t.Run(tc.file, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			r, err := Parse(raw)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if r.Kind != tc.kind || r.Feedback != tc.feedback {
				t.Errorf("Kind, Feedback = %q, %q; want %q, %q", r.Kind, r.Feedback, tc.kind, tc.feedback)
			}
			if tc.reporting != "" && r.ReportingMTA != tc.reporting {
				t.Errorf("ReportingMTA = %q; want %q", r.ReportingMTA, tc.reporting)
			}
			if tc.messageID != "" && r.Original.MessageID != tc.messageID {
				t.Errorf("Original.MessageID = %q; want %q", r.Original.MessageID, tc.messageID)
			}
			if len(r.Recipients) == 0 {
				t.Fatalf("no recipients: %+v", r)
			}
			rc := r.Recipients[0]
			if rc.Address != tc.rcpt || rc.Action != tc.action || rc.Status != tc.status || rc.SMTPCode != tc.smtpCode {
				t.Errorf("recipient = %+v; want address %q, action %q, status %q, SMTP code %d", rc, tc.rcpt, tc.action, tc.status, tc.smtpCode)
			}
			if tc.kind == "arf" {
				return
			}
			v := rules.Classify(rc.SMTPCode, rc.Status, rc.DiagnosticCode)
			if v.Class != tc.class || v.Type != tc.typ {
				t.Errorf("Classify(%d, %q, %q) = %+v; want %s %s (rule %s)", rc.SMTPCode, rc.Status, rc.DiagnosticCode, v, tc.typ, tc.class,
					rules.which(rc.SMTPCode, rc.Status, rc.DiagnosticCode))
			}
		})
	}
	// Every sample is in the table, and the table covers every class.
	files, _ := filepath.Glob(filepath.Join("testdata", "*.eml"))
	for _, f := range files {
		if b := filepath.Base(f); !seen[b] && !strings.HasPrefix(b, "not-report-") {
			t.Errorf("testdata/%s has no row in the corpus table", b)
		}
	}
	classes := map[Class]bool{}
	for _, tc := range corpus {
		classes[tc.class] = true
	}
	for _, c := range Classes() {
		if !classes[c] {
			t.Errorf("no corpus sample maps to class %q", c)
		}
	}
}

func TestDSNFieldForms(t *testing.T) {
	for _, tc := range []struct{ in, addr string }{
		{"rfc822; user@example.com", "user@example.com"},
		{"RFC822;<user@example.com>", "user@example.com"},
		{"rfc822; user@example.com (the user)", "user@example.com"},
		{"rfc822; user@example.com (nested (comment))", "user@example.com"},
		{"user@example.com", "user@example.com"},
		{"utf-8; j\\x{F6}rg@example.com", "jörg@example.com"},
		{"utf-8; bad\\x{110000}@example.com", "bad\\x{110000}@example.com"},
		{"rfc822; not an address", ""},
		{"rfc822; user@", ""},
		{"x400; /C=US/ADMD=x/", ""},
	} {
		if got := typedAddress(tc.in); got != tc.addr {
			t.Errorf("typedAddress(%q) = %q; want %q", tc.in, got, tc.addr)
		}
	}
	for _, tc := range []struct{ in, name string }{
		{"dns; mx.example.com", "mx.example.com"},
		{"dns;mx.example.com.", "mx.example.com"},
		{"dns; mx.example.com (192.0.2.1)", "mx.example.com"},
		{"mx.example.com", "mx.example.com"},
		{"", ""},
	} {
		if got := mtaName(tc.in); got != tc.name {
			t.Errorf("mtaName(%q) = %q; want %q", tc.in, got, tc.name)
		}
	}
}

func TestNotReport(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "not-report-*.eml"))
	if len(files) == 0 {
		t.Fatal("no not-report samples")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			r, err := Parse(raw)
			if !errors.Is(err, ErrNotReport) {
				t.Fatalf("Parse = %+v, %v; want ErrNotReport", r, err)
			}
		})
	}
}

// Details of single samples the table does not show.
func TestCorpusDetails(t *testing.T) {
	parse := func(t *testing.T, name string) *Report {
		t.Helper()
		raw, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		r, err := Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	t.Run("original vs final recipient, folded diagnostic", func(t *testing.T) {
		r := parse(t, "postfix-dsn-user-unknown.eml")
		rc := r.Recipients[0]
		if rc.Address != "nobody@example.com" { // Final-Recipient is nobody@mail.example.com
			t.Errorf("Address = %q; want the Original-Recipient", rc.Address)
		}
		want := "550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown in virtual mailbox table"
		if rc.DiagnosticCode != want || rc.RemoteMTA != "mail.example.com" {
			t.Errorf("DiagnosticCode, RemoteMTA = %q, %q; want %q, mail.example.com", rc.DiagnosticCode, rc.RemoteMTA, want)
		}
		o := r.Original
		if o.ReturnPath != testVERP || o.From != "news@shop.example" || !slices.Equal(o.To, []string{"nobody@example.com"}) {
			t.Errorf("Original = %+v", o)
		}
	})
	t.Run("return path from X-Postfix-Sender", func(t *testing.T) {
		raw := "Content-Type: multipart/report; report-type=delivery-status; boundary=q\r\n\r\n" +
			"--q\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\nX-Postfix-Sender: rfc822; " + testVERP +
			"\r\n\r\nFinal-Recipient: rfc822; a@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n" +
			"--q\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <x@y>\r\nTo: a@example.com\r\n--q--\r\n"
		r, err := Parse([]byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		if r.Original.ReturnPath != testVERP || r.Original.MessageID != "x@y" {
			t.Errorf("Original = %+v", r.Original)
		}
	})
	t.Run("two recipients", func(t *testing.T) {
		r := parse(t, "dsn-multi-recipient.eml")
		if len(r.Recipients) != 2 || r.Recipients[1].Address != "b@example.com" || r.Recipients[1].Action != "delayed" || r.Recipients[1].Status != "4.2.2" {
			t.Fatalf("Recipients = %+v", r.Recipients)
		}
		if !slices.Equal(r.Original.To, []string{"a@example.com", "b@example.com"}) || r.Original.ReturnPath != "" {
			t.Errorf("Original = %+v", r.Original)
		}
	})
	t.Run("arf return path from the embedded message", func(t *testing.T) {
		r := parse(t, "arf-no-rcpt-to.eml")
		if r.Original.ReturnPath != testVERP {
			t.Errorf("Original.ReturnPath = %q; want %q", r.Original.ReturnPath, testVERP)
		}
	})
	t.Run("arf return path from Original-Mail-From", func(t *testing.T) {
		r := parse(t, "arf-headers-only-fraud.eml")
		if r.Original.ReturnPath != testVERP || r.Original.MessageID == "" {
			t.Errorf("Original = %+v; want ReturnPath %q and a Message-ID", r.Original, testVERP)
		}
	})
	t.Run("exim remote MTA and multi-line reply", func(t *testing.T) {
		rc := parse(t, "exim-plain-spamhaus.eml").Recipients[0]
		if rc.RemoteMTA != "mx.listed.example" || !strings.Contains(rc.DiagnosticCode, "zen.spamhaus.org") {
			t.Errorf("recipient = %+v", rc)
		}
	})
	t.Run("postfix plain remote MTA", func(t *testing.T) {
		rc := parse(t, "postfix-plain-user-unknown.eml").Recipients[0]
		want := "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown in local recipient table"
		if rc.RemoteMTA != "mail.example.org" || rc.DiagnosticCode != want {
			t.Errorf("recipient = %+v; want remote mail.example.org, diagnostic %q", rc, want)
		}
	})
}

func TestDecodeTransfer(t *testing.T) {
	for _, tc := range []struct{ cte, in, want string }{
		{"base64", "aGVsbG8=", "hello"},
		{"BASE64", "aGVs\r\nbG8=\r\n", "hello"},
		{"base64", "aGVsbG8", "hello"},
		{"base64", "00", "\xd3"},
		{"base64", "0", ""},
		{"base64", "", ""},
		{"base64", "!!!!", ""},
		{"quoted-printable", "a=3Db=\r\nc", "a=bc"},
		{"7bit", "as is", "as is"},
		{"", "as is", "as is"},
	} {
		if got := string(decodeTransfer(tc.cte, []byte(tc.in))); got != tc.want {
			t.Errorf("decodeTransfer(%q, %q) = %q; want %q", tc.cte, tc.in, got, tc.want)
		}
	}
}
