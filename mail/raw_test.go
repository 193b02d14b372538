package mail

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

const rawBasic = "From: Alice <alice@example.com>\r\n" +
	"To: Bob <bob@example.net>, carol@example.org\r\n" +
	"Cc: dave@example.com\r\n" +
	"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= from\r\n Alice\r\n" +
	"Date: Wed, 04 Mar 2026 05:06:07 +0100\r\n" +
	"Message-ID: <abc@example.com>\r\n" +
	"\r\n" +
	"Hello Bob.\r\n"

func parseRaw(t *testing.T, raw string, envelopeTo []string) *Message {
	t.Helper()
	m, err := ParseRaw([]byte(raw), envelopeTo, testOpts())
	if err != nil {
		t.Fatalf("ParseRaw: %v", err)
	}
	if err := checkWire(m.Body); err != nil {
		t.Fatalf("%v\n%q", err, m.Body)
	}
	return m
}

func TestParseRawKeepsTheMessage(t *testing.T) {
	m := parseRaw(t, rawBasic, nil)
	if string(m.Body) != rawBasic {
		t.Fatalf("Body changed:\n%q\nwant\n%q", m.Body, rawBasic)
	}
	if m.MessageID != "abc@example.com" || m.Subject != "Grüße from Alice" || m.Sender != "alice@example.com" || m.SenderHeader != "" {
		t.Fatalf("MessageID %q Subject %q Sender %q SenderHeader %q", m.MessageID, m.Subject, m.Sender, m.SenderHeader)
	}
	if want := []string{"bob@example.net", "carol@example.org", "dave@example.com"}; !slices.Equal(m.Recipients, want) {
		t.Fatalf("Recipients %q, want %q", m.Recipients, want)
	}
	if len(m.From) != 1 || m.From[0] != (Address{"Alice", "alice@example.com"}) {
		t.Fatalf("From %+v", m.From)
	}
	if m.Needs8Bit || m.NeedsUTF8 {
		t.Fatalf("Needs8Bit %v NeedsUTF8 %v", m.Needs8Bit, m.NeedsUTF8)
	}
	raw := []byte(rawBasic)
	m.Body[0] = 'X'
	if raw[0] != 'F' {
		t.Fatal("Body shares memory with raw")
	}
}

func TestParseRawLineEnds(t *testing.T) {
	head := "From: a@example.com\nTo: b@example.net\nDate: x\nMessage-ID: <i@x>\n\n"
	for _, tc := range []struct{ name, raw, want string }{
		{"bare LF", head + "one\ntwo\n", "one\r\ntwo\r\n"},
		{"bare CR", strings.ReplaceAll(head, "\n", "\r") + "one\rtwo\r", "one\r\ntwo\r\n"},
		{"mixed", head + "a\r\nb\nc\rd\r\r\ne", "a\r\nb\r\nc\r\nd\r\n\r\ne\r\n"},
		// SMTP smuggling: every end-of-data look-alike becomes a real CRLF.CRLF,
		// which the SMTP client then dot-stuffs.
		{"LF dot LF", head + "a\n.\nMAIL FROM:<x@evil.test>\n", "a\r\n.\r\nMAIL FROM:<x@evil.test>\r\n"},
		{"CR dot CR", head + "a\r.\rMAIL FROM:<x@evil.test>", "a\r\n.\r\nMAIL FROM:<x@evil.test>\r\n"},
		{"CRLF dot LF", head + "a\r\n.\nb", "a\r\n.\r\nb\r\n"},
		{"LF dot CRLF", head + "a\n.\r\nb", "a\r\n.\r\nb\r\n"},
		{"no final line end", head + "last", "last\r\n"},
		{"empty body", head, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := parseRaw(t, tc.raw, nil)
			_, body, _ := bytes.Cut(m.Body, []byte("\r\n\r\n"))
			if string(body) != tc.want {
				t.Fatalf("body %q, want %q", body, tc.want)
			}
		})
	}
}

func TestParseRawAddsAndStrips(t *testing.T) {
	raw := "From: alice@example.com\r\n" +
		"To: bob@example.net\r\n" +
		"Bcc: secret1@example.org,\r\n secret2@example.org\r\n" +
		"bcc: secret3@example.org\r\n" +
		"Resent-Bcc: secret4@example.org\r\n" +
		"Subject: hi\r\n" +
		"\r\n" +
		"body\r\n"
	m := parseRaw(t, raw, nil)
	want := "From: alice@example.com\r\n" +
		"To: bob@example.net\r\n" +
		"Subject: hi\r\n" +
		"Date: Wed, 04 Mar 2026 05:06:07 +0100\r\n" +
		"Message-ID: <id1@relay.example.com>\r\n" +
		"\r\n" +
		"body\r\n"
	if string(m.Body) != want {
		t.Fatalf("Body\n%s\nwant\n%s", m.Body, want)
	}
	if m.MessageID != "id1@relay.example.com" {
		t.Fatalf("MessageID %q", m.MessageID)
	}
	if w := []string{"bob@example.net", "secret1@example.org", "secret2@example.org", "secret3@example.org"}; !slices.Equal(m.Recipients, w) {
		t.Fatalf("Recipients %q, want %q", m.Recipients, w)
	}
	t.Run("hostname from From", func(t *testing.T) {
		opts := testOpts()
		opts.Hostname = ""
		m, err := ParseRaw([]byte(raw), nil, opts)
		if err != nil || m.MessageID != "id1@example.com" {
			t.Fatalf("ParseRaw: %v, %v", m, err)
		}
	})
}

func TestParseRawRecipients(t *testing.T) {
	for _, tc := range []struct {
		name       string
		header     string
		envelopeTo []string
		want       []string
	}{
		{"groups", "To: Team: a@example.com, B <b@example.com>;, c@example.com\r\nCc: undisclosed-recipients:;\r\n", nil,
			[]string{"a@example.com", "b@example.com", "c@example.com"}},
		{"several fields", "To: a@example.com\r\nTo: b@example.com\r\nCc: A@EXAMPLE.com, a@Example.com\r\n", nil,
			[]string{"a@example.com", "b@example.com", "A@example.com"}},
		{"envelope wins", "To: a@example.com\r\nBcc: b@example.com\r\n", []string{"x@example.org", "Y <y@Example.org>", "x@example.org"},
			[]string{"x@example.org", "y@example.org"}},
		{"empty envelope means headers", "To: a@example.com\r\n", []string{}, []string{"a@example.com"}},
		{"envelope without header recipients", "", []string{"x@example.org"}, []string{"x@example.org"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := parseRaw(t, "From: f@example.com\r\n"+tc.header+"\r\nbody\r\n", tc.envelopeTo)
			if !slices.Equal(m.Recipients, tc.want) {
				t.Fatalf("Recipients %q, want %q", m.Recipients, tc.want)
			}
		})
	}
}

func TestParseRawSenders(t *testing.T) {
	m := parseRaw(t, "From: a@one.example, b@two.example\r\nSender: Secretary <s@three.example>\r\nTo: x@example.net\r\n\r\n", nil)
	if m.Sender != "s@three.example" || m.SenderHeader != "s@three.example" || len(m.From) != 2 {
		t.Fatalf("Sender %q SenderHeader %q From %v", m.Sender, m.SenderHeader, m.From)
	}
	if got := m.SenderDomains(); !slices.Equal(got, []string{"one.example", "two.example", "three.example"}) {
		t.Fatalf("SenderDomains %q", got)
	}
	m = parseRaw(t, "From: a@one.example\r\nSender: s@other.example\r\nTo: x@example.net\r\n\r\n", nil)
	if got := m.SenderDomains(); !slices.Equal(got, []string{"one.example", "other.example"}) {
		t.Fatalf("SenderDomains %q: a Sender header must be checked too", got)
	}
}

// TestParseRawResentSenders: the originators of RFC 5322 3.6.6, of every
// resent block, count as senders; Reply-To does not (see SenderDomains).
func TestParseRawResentSenders(t *testing.T) {
	for _, tc := range []struct {
		name, header string
		resent       []string
		domains      []string
	}{
		{"Resent-From", "Resent-From: Mallory <m@evil.example>\r\n",
			[]string{"m@evil.example"}, []string{"one.example", "evil.example"}},
		{"Resent-Sender", "Resent-From: r@one.example\r\nResent-Sender: s@Evil.Example\r\n",
			[]string{"r@one.example", "s@evil.example"}, []string{"one.example", "evil.example"}},
		{"lower-case names, folded list", "resent-from: a@two.example,\r\n b@three.example\r\nRESENT-SENDER: c@four.example\r\n",
			[]string{"a@two.example", "b@three.example", "c@four.example"}, []string{"one.example", "two.example", "three.example", "four.example"}},
		{"two resent blocks", "Resent-From: a@two.example\r\nResent-Date: Wed, 04 Mar 2026 05:06:07 +0100\r\nResent-From: b@three.example\r\n",
			[]string{"a@two.example", "b@three.example"}, []string{"one.example", "two.example", "three.example"}},
		{"Reply-To is not a sender", "Reply-To: help@desk.example\r\n", nil, []string{"one.example"}},
		{"Resent-To is not a sender", "Resent-To: x@else.example\r\n", nil, []string{"one.example"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := parseRaw(t, "From: a@one.example\r\n"+tc.header+"To: x@example.net\r\n\r\nbody\r\n", nil)
			if !slices.Equal(m.Resent, tc.resent) {
				t.Errorf("Resent %q, want %q", m.Resent, tc.resent)
			}
			if got := m.SenderDomains(); !slices.Equal(got, tc.domains) {
				t.Errorf("SenderDomains %q, want %q", got, tc.domains)
			}
			if m.Sender != "a@one.example" {
				t.Errorf("envelope sender %q changed", m.Sender)
			}
		})
	}
}

// TestParseRawStripsReturnPath: a Return-Path written by the client would
// show readers a sender nobody checked; the final server adds the real
// one from the envelope (RFC 5321 4.4).
func TestParseRawStripsReturnPath(t *testing.T) {
	m := parseRaw(t, "Return-Path: <bounce@evil.example>\r\nFrom: a@one.example\r\nreturn-path:\r\n <x@evil.example>\r\nTo: x@example.net\r\n\r\nReturn-Path: <in-body@evil.example>\r\n", nil)
	head, body, _ := strings.Cut(string(m.Body), "\r\n\r\n")
	if strings.Contains(strings.ToLower(head), "return-path") || strings.Contains(head, "evil.example") {
		t.Fatalf("Return-Path kept:\n%s", m.Body)
	}
	if body != "Return-Path: <in-body@evil.example>\r\n" {
		t.Fatalf("body changed: %q", body)
	}
	if got := m.SenderDomains(); !slices.Equal(got, []string{"one.example"}) {
		t.Fatalf("SenderDomains %q", got)
	}
}

func TestParseRawUTF8(t *testing.T) {
	for _, tc := range []struct {
		name, raw       string
		utf8, eightBits bool
	}{
		{"ascii", "From: a@example.com\r\nTo: b@example.net\r\n\r\nhi\r\n", false, false},
		{"8-bit body", "From: a@example.com\r\nTo: b@example.net\r\n\r\nGrüße\r\n", false, true},
		{"UTF-8 subject", "From: a@example.com\r\nTo: b@example.net\r\nSubject: Grüße\r\n\r\nhi\r\n", true, true},
		{"UTF-8 recipient", "From: a@example.com\r\nTo: b@example.net\r\n\r\nhi\r\n", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var env []string
			if tc.name == "UTF-8 recipient" {
				env = []string{"jörg@example.de"}
			}
			m := parseRaw(t, tc.raw, env)
			if m.NeedsUTF8 != tc.utf8 || m.Needs8Bit != tc.eightBits {
				t.Fatalf("NeedsUTF8 %v Needs8Bit %v; want %v %v", m.NeedsUTF8, m.Needs8Bit, tc.utf8, tc.eightBits)
			}
		})
	}
	m := parseRaw(t, "From: a@example.com\r\nTo: b@example.net\r\nSubject: =?iso-8859-1?q?Gr=FC=DFe?= aus =?utf-8?q?K=C3=B6ln?=\r\n\r\n", nil)
	if m.Subject != "Grüße aus Köln" {
		t.Fatalf("Subject %q", m.Subject)
	}
}

func TestParseRawErrors(t *testing.T) {
	long := strings.Repeat("x", 999)
	many := strings.Repeat("X-A: b\r\n", 1000)
	for _, tc := range []struct {
		name, raw  string
		envelopeTo []string
		field      string
		detail     string
	}{
		{"empty", "", nil, "raw", "empty"},
		{"no From", "To: b@example.net\r\n\r\nx", nil, "raw", "From header field is required"},
		{"two From fields", "From: a@example.com\r\nFrom: c@example.com\r\nTo: b@example.net\r\n\r\n", nil, "raw", "more than one From"},
		{"two mailboxes without Sender", "From: a@example.com, c@example.com\r\nTo: b@example.net\r\n\r\n", nil, "raw", "Sender header field is required (RFC 5322 3.6.2)"},
		{"Sender list", "From: a@example.com\r\nSender: a@example.com, c@example.com\r\nTo: b@example.net\r\n\r\n", nil, "raw", "one mailbox"},
		{"From group", "From: G: a@example.com;\r\nTo: b@example.net\r\n\r\n", nil, "raw", "groups"},
		{"bad From", "From: alice\r\nTo: b@example.net\r\n\r\n", nil, "raw", "From: invalid address"},
		{"empty From", "From: \r\nTo: b@example.net\r\n\r\n", nil, "raw", "no mailbox"},
		// A Resent-From the parser cannot read is one whose domain nobody
		// checked, though a lenient reader may still show it.
		{"bad Resent-From", "From: a@example.com\r\nResent-From: mallory@evil.example (unclosed\r\nTo: b@example.net\r\n\r\n", nil, "raw", "Resent-From: invalid address"},
		{"empty Resent-From", "From: a@example.com\r\nResent-From:\r\nTo: b@example.net\r\n\r\n", nil, "raw", "Resent-From: has no mailbox"},
		{"Resent-Sender group", "From: a@example.com\r\nResent-Sender: G: m@evil.example;\r\nTo: b@example.net\r\n\r\n", nil, "raw", "Resent-Sender: "},
		{"Resent-From literal", "From: a@example.com\r\nResent-From: m@[127.0.0.1]\r\nTo: b@example.net\r\n\r\n", nil, "raw", "address literals"},
		{"bad To", "From: a@example.com\r\nTo: b@localhost\r\n\r\n", nil, "raw", "To: invalid address"},
		{"bad UTF-8 domain", "From: a@example.com\r\nTo: b@\xff.example\r\n\r\n", nil, "raw", "To: is not valid UTF-8"},
		{"no recipients", "From: a@example.com\r\n\r\nx", nil, "to", "at least one recipient"},
		{"bad envelope", "From: a@example.com\r\n\r\nx", []string{"ok@example.com", "nope"}, "to[1]", "invalid address"},
		{"envelope injection", "From: a@example.com\r\n\r\nx", []string{"ok@example.com\r\nRCPT TO:<x@evil.test>"}, "to[0]", "CR, LF or NUL"},
		{"no colon", "From: a@example.com\r\nTo b@example.net\r\n\r\n", nil, "raw", "line 2 is not a header field"},
		{"mbox From line", "From alice@example.com Mon Jan  1 00:00:00 2026\r\nFrom: a@example.com\r\n\r\n", nil, "raw", "line 1"},
		{"bad field name", "From: a@example.com\r\nX Y: z\r\n\r\n", nil, "raw", "not a header field name"},
		{"starts with space", " From: a@example.com\r\n\r\n", nil, "raw", "line 1 starts with white space"},
		{"header never ends", "From: a@example.com\r\nTo: b@example.net\r\n", nil, "raw", "does not end"},
		{"header never ends without line end", "From: a@example.com", nil, "raw", "does not end"},
		{"NUL in header", "From: a@example.com\r\nX: a\x00b\r\n\r\n", nil, "raw", "line 2: NUL"},
		{"long header line", "From: a@example.com\r\nX: " + long + "\r\n\r\n", nil, "raw", "line 2 is 1002 octets long; the limit is 998 (RFC 5322 2.1.1)"},
		{"long body line", "From: a@example.com\r\nTo: b@example.net\r\n\r\nok\r\n" + long + "\r\n", nil, "raw", "line 5 is 999 octets"},
		{"long line after bare CRs", "From: a@example.com\rTo: b@example.net\r\r" + long, nil, "raw", "line 4 is 999 octets"},
		{"long last line", "From: a@example.com\n\n" + long, nil, "raw", "line 3 is 999"},
		{"too many fields", "From: a@example.com\r\n" + many + "\r\n", nil, "raw", "more than 1000 header fields"},
		{"huge header section", "From: a@example.com\r\nX-Big: a\r\n" + strings.Repeat(" "+strings.Repeat("b", 900)+"\r\n", 1200) + "\r\n", nil, "raw", "larger than 1048576 octets"},
		{"empty Message-ID", "From: a@example.com\r\nTo: b@example.net\r\nMessage-ID: <>\r\n\r\n", nil, "raw", "Message-ID: has no id"},
		{"too many recipients", "From: a@example.com\r\nTo: " + strings.Repeat("x@example.com, ", 5) + "\r\n\r\n",
			[]string{"a@example.com", "b@example.com", "c@example.com", "d@example.com"}, "to", "too many recipients: 4 > 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOpts()
			opts.MaxRecipients = 3
			m, err := ParseRaw([]byte(tc.raw), tc.envelopeTo, opts)
			if err == nil {
				t.Fatalf("ParseRaw succeeded: %q", m.Body)
			}
			var fe FieldErrors
			if !errors.As(err, &fe) {
				t.Fatalf("error %T %v is not FieldErrors", err, err)
			}
			if fe[0].Field != tc.field || !strings.Contains(fe[0].Detail, tc.detail) {
				t.Fatalf("error %v; want %s: …%s…", err, tc.field, tc.detail)
			}
		})
	}
}

func TestParseRawBuildRoundTrip(t *testing.T) {
	built, _ := build(t, draft(func(d *Draft) {
		d.Subject = "Grüße"
		d.HTML = "<p>x</p>"
		d.Bcc = []string{"hidden@example.org"}
		d.Attachments = []Attachment{{Filename: "a.pdf", Content: b64("x")}}
	}))
	m := parseRaw(t, string(built.Body), nil)
	if !bytes.Equal(m.Body, built.Body) {
		t.Fatal("ParseRaw changed a built message")
	}
	if m.Subject != built.Subject || m.MessageID != built.MessageID {
		t.Fatalf("Subject %q MessageID %q", m.Subject, m.MessageID)
	}
	// The Bcc recipient is not in the message, so only the envelope knows it.
	if want := []string{"bob@example.net"}; !slices.Equal(m.Recipients, want) {
		t.Fatalf("Recipients %q", m.Recipients)
	}
}

func TestFieldErrorsError(t *testing.T) {
	e := FieldErrors{{Field: "to[0]", Detail: "not an address"}, {Field: "subject", Detail: "must not contain CR, LF or NUL"}}
	if got := e.Error(); got != "to[0]: not an address; subject: must not contain CR, LF or NUL" {
		t.Fatalf("Error() = %q", got)
	}
	wrapped := fmt.Errorf("submit: %w", e)
	var fe FieldErrors
	if !errors.As(wrapped, &fe) || len(fe) != 2 {
		t.Fatalf("errors.As through a wrap: %v", fe)
	}
}

func TestPrepend(t *testing.T) {
	raw := []byte("From: a@example.com\r\nTo: b@example.net\r\n\r\nhello\r\n")
	field := "Received: from client.example ([192.0.2.1])\r\n\tby relay.example; Mon, 02 Jan 2006 15:04:05 +0000\r\n"
	for _, tc := range []struct {
		name   string
		room   int
		inside bool // written into the room ParseRaw left
	}{
		{"room enough", 512, true},
		{"room too small", 16, false},
		{"no room", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseRaw(raw, nil, BuildOptions{Hostname: "relay.example", TraceRoom: tc.room})
			if err != nil {
				t.Fatal(err)
			}
			before := string(m.Body)
			first := &m.Body[0]
			if err := m.Prepend(field); err != nil {
				t.Fatal(err)
			}
			if got, want := string(m.Body), field+before; got != want {
				t.Fatalf("body\n%q\nwant\n%q", got, want)
			}
			moved := &m.Body[len(field)] != first
			if moved == tc.inside {
				t.Errorf("body copied: %v, want %v", moved, !tc.inside)
			}
		})
	}
	bad := []string{
		"Received: x\r\nBcc: evil@example.org\r\n",
		"Received: x\ninjected\r\n",
		"Received: x",
		"no colon\r\n",
		"Received: caf\xc3\xa9\r\n",
		"Received: \x00\r\n",
	}
	for _, f := range bad {
		m, err := ParseRaw(raw, nil, BuildOptions{Hostname: "relay.example", TraceRoom: 512})
		if err != nil {
			t.Fatal(err)
		}
		before := string(m.Body)
		if err := m.Prepend(f); err == nil {
			t.Errorf("Prepend(%q) took it", f)
		}
		if string(m.Body) != before {
			t.Errorf("Prepend(%q) changed the body after refusing", f)
		}
	}
}

// TestParseRawHeaderText (issue 18, items 2 and 12): every raw header
// field, and what the Subject and display names decode to, obeys the rule
// of the JSON path. Before it, such a message was accepted, and the
// ledger's text columns (message_id, subject, from_header) refused the
// whole group commit it was in.
func TestParseRawHeaderText(t *testing.T) {
	const head = "From: a@example.com\r\nTo: b@example.net\r\n"
	for _, tc := range []struct{ name, raw, detail string }{
		{"Message-ID not UTF-8", head + "Message-ID: <\xff@example.com>\r\n\r\n", "Message-ID: is not valid UTF-8"},
		{"Message-ID control", head + "Message-ID: <a\x01b@example.com>\r\n\r\n", "Message-ID: must not contain control characters other than tab (0x01"},
		{"Subject not UTF-8", head + "Subject: Gr\xfc\xdfe\r\n\r\n", "Subject: is not valid UTF-8"},
		{"Subject truncated UTF-8", head + "Subject: Gr\xc3\r\n\r\n", "Subject: is not valid UTF-8"},
		{"Subject ESC", head + "Subject: \x1b$B\r\n\r\n", "Subject: must not contain control characters other than tab (0x1B"},
		{"Subject DEL", head + "Subject: a\x7f\r\n\r\n", "Subject: must not contain control characters"},
		{"Subject control in a fold", head + "Subject: a\r\n \x08b\r\n\r\n", "Subject: must not contain control characters"},
		{"Subject encoded NUL", head + "Subject: =?utf-8?q?a=00b?=\r\n\r\n", "Subject: its encoded-words decode to text that must not contain CR, LF or NUL"},
		{"Subject encoded CRLF", head + "Subject: =?utf-8?q?a=0D=0ABcc:_x@evil.test?=\r\n\r\n", "Subject: its encoded-words decode to text that must not contain CR, LF or NUL"},
		{"Subject encoded control", head + "Subject: =?utf-8?b?AQ==?=\r\n\r\n", "Subject: its encoded-words decode to text that must not contain control"},
		{"Subject encoded bad UTF-8", head + "Subject: =?utf-8?q?=FF?=\r\n\r\n", "Subject: its encoded-words decode to text that is not valid UTF-8"},
		{"display name not UTF-8", "From: J\xf6rg <a@example.com>\r\nTo: b@example.net\r\n\r\n", "From: is not valid UTF-8"},
		{"display name encoded control", "From: =?utf-8?q?J=07rg?= <a@example.com>\r\nTo: b@example.net\r\n\r\n", "From: invalid address: the display name must not contain control"},
		{"display name encoded bad UTF-8", "From: =?utf-8?q?J=F6rg?= <a@example.com>\r\nTo: b@example.net\r\n\r\n", "From: invalid address: the display name is not valid UTF-8"},
		{"other field not UTF-8", head + "X-Mailer: \xff\xfe\r\n\r\n", "X-Mailer: is not valid UTF-8"},
		{"other field control", head + "X-Mailer: a\x0cb\r\n\r\n", "X-Mailer: must not contain control characters"},
		{"stripped field still checked", head + "Bcc: \xff@example.org\r\n\r\n", "Bcc: is not valid UTF-8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseRaw([]byte(tc.raw), nil, testOpts())
			if err == nil {
				t.Fatalf("ParseRaw succeeded: MessageID %q Subject %q From %+v", m.MessageID, m.Subject, m.From)
			}
			var fe FieldErrors
			if !errors.As(err, &fe) || fe[0].Field != "raw" || !strings.Contains(fe[0].Detail, tc.detail) {
				t.Fatalf("error %v; want raw: …%s…", err, tc.detail)
			}
			if errors.Is(err, ErrNeedsSMTPUTF8) || errors.Is(err, ErrForeignSignature) {
				t.Fatalf("error %v has a kind; want a plain media error", err)
			}
		})
	}
	t.Run("allowed", func(t *testing.T) {
		for _, raw := range []string{
			head + "Subject: tab\there\r\n\r\n",
			head + "Subject: folded\r\n\tover two lines\r\n\r\n",
			head + "Subject: Grüße aus Köln\r\nMessage-ID: <grüße@example.com>\r\n\r\n",
			"From: Jörg <a@example.com>\r\nTo: b@example.net\r\n\r\n",
			head + "Subject: \r\n\r\n",
		} {
			parseRaw(t, raw, nil)
		}
	})
	t.Run("errors are capped", func(t *testing.T) {
		raw := head + strings.Repeat("X-Bad: \xff\r\n", 500) + "\r\n"
		_, err := ParseRaw([]byte(raw), nil, testOpts())
		var fe FieldErrors
		if !errors.As(err, &fe) || len(fe) != maxErrorsPerList+1 || !strings.Contains(fe[maxErrorsPerList].Detail, "480 more header fields") {
			t.Fatalf("error %v; want %d named and a count of the rest", err, maxErrorsPerList)
		}
	})
}

// TestParseRawASCIIHeaders (issue 18, item 12): with ASCIIHeaders, as for
// SMTP submitted without SMTPUTF8, an 8-bit header is refused with a kind
// submission answers 5.6.7; without it valid UTF-8 is taken (RFC 6532).
func TestParseRawASCIIHeaders(t *testing.T) {
	for _, tc := range []struct {
		name, raw string
		ascii     bool
		refused   bool
	}{
		{"UTF-8 Subject without SMTPUTF8", "From: a@example.com\r\nTo: b@example.net\r\nSubject: Grüße\r\n\r\n", true, true},
		{"UTF-8 display name without SMTPUTF8", "From: Jörg <a@example.com>\r\nTo: b@example.net\r\n\r\n", true, true},
		{"UTF-8 Subject with SMTPUTF8", "From: a@example.com\r\nTo: b@example.net\r\nSubject: Grüße\r\n\r\n", false, false},
		{"encoded-words without SMTPUTF8", "From: a@example.com\r\nTo: b@example.net\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\n", true, false},
		{"8-bit body without SMTPUTF8", "From: a@example.com\r\nTo: b@example.net\r\n\r\nGrüße\r\n", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOpts()
			opts.ASCIIHeaders = tc.ascii
			_, err := ParseRaw([]byte(tc.raw), nil, opts)
			switch {
			case !tc.refused && err != nil:
				t.Fatalf("ParseRaw: %v", err)
			case tc.refused && !errors.Is(err, ErrNeedsSMTPUTF8):
				t.Fatalf("ParseRaw: %v; want ErrNeedsSMTPUTF8", err)
			case tc.refused && !strings.Contains(err.Error(), "SMTPUTF8"):
				t.Fatalf("error %q does not say what is missing", err)
			}
		})
	}
}

// TestParseRawTraceAndAuthFields (issue 18, item 12): the documented rule
// for the fields a client could forge. Authentication-Results: all
// removed. DKIM-Signature: kept for a domain the message claims to come
// from, refused for any other. Received: kept, in place.
func TestParseRawTraceAndAuthFields(t *testing.T) {
	const tail = "To: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n"
	for _, tc := range []struct {
		name, raw string
		refused   string // "" → accepted
		gone      []string
		kept      []string
	}{
		{name: "Authentication-Results removed",
			raw:  "Authentication-Results: relay.test; dkim=pass header.d=bank.example\r\nFrom: a@example.com\r\nauthentication-results: x;\r\n spf=pass\r\n" + tail,
			gone: []string{"Authentication-Results", "authentication-results", "spf=pass"}, kept: []string{"From: a@example.com\r\n"}},
		{name: "Received kept",
			raw:  "Received: from laptop by mail.example.com; Mon, 1 Jan 2026 00:00:00 +0000\r\nFrom: a@example.com\r\n" + tail,
			kept: []string{"Received: from laptop by mail.example.com; Mon, 1 Jan 2026 00:00:00 +0000\r\n"}},
		{name: "DKIM-Signature of the From domain kept",
			raw:  "DKIM-Signature: v=1; a=rsa-sha256; d=Example.COM; s=s1;\r\n bh=x; b=y\r\nFrom: a@example.com\r\n" + tail,
			kept: []string{"DKIM-Signature: v=1; a=rsa-sha256; d=Example.COM;"}},
		{name: "DKIM-Signature of the Sender domain kept",
			raw:  "DKIM-Signature: v=1; d=lists.example.org; s=s1; bh=x; b=y\r\nFrom: a@example.com\r\nSender: l@lists.example.org\r\n" + tail,
			kept: []string{"d=lists.example.org"}},
		{name: "DKIM-Signature of an IDN From domain kept",
			raw:  "DKIM-Signature: v=1; d=xn--bcher-kva.example; s=s1; bh=x; b=y\r\nFrom: a@bücher.example\r\n" + tail,
			kept: []string{"d=xn--bcher-kva.example"}},
		{name: "DKIM-Signature of another domain refused",
			raw:     "DKIM-Signature: v=1; a=rsa-sha256; d=bank.example; s=s1; bh=x; b=y\r\nFrom: a@example.com\r\n" + tail,
			refused: "d=bank.example is not the domain of the From"},
		{name: "DKIM-Signature of a parent domain refused",
			raw:     "DKIM-Signature: v=1; d=example.com; s=s1; bh=x; b=y\r\nFrom: a@news.example.com\r\n" + tail,
			refused: "d=example.com is not"},
		{name: "DKIM-Signature without d= refused",
			raw:     "DKIM-Signature: v=1; s=s1; bh=x; b=y\r\nFrom: a@example.com\r\n" + tail,
			refused: "has no d= tag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ParseRaw([]byte(tc.raw), nil, testOpts())
			if tc.refused != "" {
				var fe FieldErrors
				if !errors.Is(err, ErrForeignSignature) || !errors.As(err, &fe) || fe[0].Field != "raw" || !strings.Contains(fe[0].Detail, tc.refused) {
					t.Fatalf("error %v; want ErrForeignSignature, raw: …%s…", err, tc.refused)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRaw: %v", err)
			}
			head, _, _ := strings.Cut(string(m.Body), "\r\n\r\n")
			for _, g := range tc.gone {
				if strings.Contains(head, g) {
					t.Errorf("%q still in the header:\n%s", g, head)
				}
			}
			for _, k := range tc.kept {
				if !strings.Contains(head+"\r\n", k) {
					t.Errorf("%q not in the header:\n%s", k, head)
				}
			}
		})
	}
}
