package mail

import (
	"bytes"
	"errors"
	"mime"
	netmail "net/mail"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// FuzzParseAddress: an accepted address prints (String) as text that parses
// back to the same address, within the RFC 5321 limits.
func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{
		"alice@example.com", "Alice <alice@example.com>", `"Smith, A" <a@example.com>`,
		"=?utf-8?q?J=C3=B6rg?= <j@bücher.de>", `"a b"@example.com`, "用户@例子.广告",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddress(s)
		if err != nil {
			return
		}
		out := a.String()
		b, err := ParseAddress(out)
		if err != nil {
			t.Fatalf("ParseAddress(%q) = %+v, whose String %q does not parse: %v", s, a, out, err)
		}
		if b != a {
			t.Fatalf("ParseAddress(%q) = %+v; String %q parses to %+v", s, a, out, b)
		}
		local, domain := a.Addr[:strings.LastIndexByte(a.Addr, '@')], a.Domain()
		if len(a.Addr) > maxAddrLen || len(local) > maxLocalLen || local == "" ||
			!strings.Contains(domain, ".") || domain != strings.ToLower(domain) || !isASCII(domain) {
			t.Fatalf("ParseAddress(%q) = %+v: outside the limits", s, a)
		}
		if strings.ContainsAny(a.Addr+a.Name, "\r\n\x00") || !utf8.ValidString(a.Name) {
			t.Fatalf("ParseAddress(%q) = %+v: CR, LF, NUL or bad UTF-8", s, a)
		}
	})
}

// FuzzBuild: whatever the draft, an accepted one gives CRLF-only lines of at
// most 998 octets, no Bcc header nor Bcc address, a Subject that decodes to
// the input, and text that go-message decodes to the input.
func FuzzBuild(f *testing.F) {
	f.Add("Alice <alice@example.com>", "bob@example.net", "Hi", "Hello", "", "X-Campaign", "welcome", "")
	f.Add("Jörg <j@example.de>", "Bob <bob@example.net>", "Grüße aus Köln", "Grüße\n", "<p>x</p>", "X-Tag", "Größe", "Prüfbericht.pdf")
	f.Fuzz(func(t *testing.T, from, to, subject, text, html, hname, hvalue, filename string) {
		d := Draft{
			From: from, To: []string{to}, Bcc: []string{"hidden@example.org"},
			Subject: subject, Text: text, HTML: html,
		}
		if hname != "" {
			d.Headers = map[string]string{hname: hvalue}
		}
		if filename != "" {
			d.Attachments = []Attachment{{Filename: filename, Content: b64(text)}}
		}
		m, err := Build(d, testOpts())
		if err != nil {
			var fe FieldErrors
			if !errors.As(err, &fe) || len(fe) == 0 {
				t.Fatalf("Build: %v is not FieldErrors", err)
			}
			return
		}
		if err := checkWire(m.Body); err != nil {
			t.Fatalf("%v\n%q", err, m.Body)
		}
		if bytes.Contains(m.Body, []byte("hidden@example.org")) {
			t.Fatalf("the Bcc address is in the message:\n%s", m.Body)
		}
		raw, _ := unfoldHeader(m.Body, "Subject")
		if got, err := new(mime.WordDecoder).DecodeHeader(strings.TrimPrefix(raw, " ")); err != nil || got != subject {
			t.Fatalf("Subject %q decodes to %q, %v; want %q", raw, got, err, subject)
		}
		p := parseMessage(t, m.Body)
		if text != "" {
			want := crlf(text)
			if len(p.parts) == 0 && p.header.Get("Content-Transfer-Encoding") == "7bit" && !strings.HasSuffix(want, "\r\n") {
				want += "\r\n" // a message ends in CRLF
			}
			if got := findPart(p, "text/plain"); got == nil || string(got.body) != want {
				t.Fatalf("text decodes to %+v, want %q\n%s", got, want, m.Body)
			}
		}
		if m.Needs8Bit != has8bit(m.Body) {
			t.Fatalf("Needs8Bit %v, but has8bit says otherwise", m.Needs8Bit)
		}
	})
}

// FuzzParseRaw: an accepted message comes out with CRLF-only lines of at
// most 998 octets and no Bcc header, every sender another parser reads in
// it is one SenderDomains names, and going through ParseRaw again changes
// nothing.
func FuzzParseRaw(f *testing.F) {
	f.Add([]byte(rawBasic), "")
	f.Add([]byte("From: a@example.com\nTo: b@example.net\nBcc: c@example.org\n\nx\n.\n"), "")
	f.Add([]byte("From: a@example.com\rTo: G: b@example.net;\r\r.\r"), "x@example.org")
	f.Fuzz(func(t *testing.T, raw []byte, envelopeTo string) {
		var env []string
		if envelopeTo != "" {
			env = []string{envelopeTo}
		}
		m, err := ParseRaw(raw, env, testOpts())
		if err != nil {
			var fe FieldErrors
			if !errors.As(err, &fe) || len(fe) == 0 {
				t.Fatalf("ParseRaw: %v is not FieldErrors", err)
			}
			return
		}
		if err := checkWire(m.Body); err != nil {
			t.Fatalf("%v\n%q", err, m.Body)
		}
		if len(m.Recipients) == 0 || m.Sender == "" || m.MessageID == "" || !utf8.ValidString(m.Subject) {
			t.Fatalf("incomplete message: %+v", m)
		}
		checkSenderOracle(t, m)
		checkStorable(t, m)
		// The recipients go along: a Bcc-only message has none left in it.
		again, err := ParseRaw(m.Body, m.Recipients, testOpts())
		if err != nil {
			t.Fatalf("ParseRaw of its own output: %v\n%q", err, m.Body)
		}
		if !bytes.Equal(again.Body, m.Body) || !slices.Equal(again.Recipients, m.Recipients) || again.MessageID != m.MessageID {
			t.Fatalf("ParseRaw is not idempotent:\n%q\n%q", m.Body, again.Body)
		}
	})
}

// findPart returns the first part of type mediaType, depth first.
func findPart(p *part, mediaType string) *part {
	if p.mediaType == mediaType {
		return p
	}
	for _, c := range p.parts {
		if f := findPart(c, mediaType); f != nil {
			return f
		}
	}
	return nil
}

// checkSenderOracle reads the originator fields of m's header with the
// standard library's parser, as a receiver might, and fails if it finds a
// domain SenderDomains does not list: that sender would go unchecked.
func checkSenderOracle(t *testing.T, m *Message) {
	t.Helper()
	msg, err := netmail.ReadMessage(bytes.NewReader(m.Body))
	if err != nil {
		return // not a parse it can do; ours is the stricter one
	}
	domains := m.SenderDomains()
	for _, name := range []string{"From", "Sender", "Resent-From", "Resent-Sender"} {
		for _, v := range msg.Header[name] {
			list, err := netmail.ParseAddressList(v)
			if err != nil {
				continue
			}
			for _, a := range list {
				d := strings.ToLower(a.Address[strings.LastIndexByte(a.Address, '@')+1:])
				if ascii, err := idna.Lookup.ToASCII(d); err == nil {
					d = ascii
				}
				if !slices.Contains(domains, d) {
					t.Fatalf("%s: %q has domain %q, which SenderDomains %q misses\n%q", name, v, d, domains, m.Body)
				}
			}
		}
	}
}

// checkStorable fails unless what the ledger stores as text of m is valid
// UTF-8 without controls (PostgreSQL refused the whole batch otherwise,
// issue 18), every header field obeys checkHeaderText once unfolded, and
// no Authentication-Results field is left.
func checkStorable(t *testing.T, m *Message) {
	t.Helper()
	texts := []string{m.MessageID, m.Subject, m.Sender}
	for _, a := range m.From {
		texts = append(texts, a.Name, a.Addr, a.String())
	}
	for _, s := range texts {
		if d := checkHeaderText(s); d != "" {
			t.Fatalf("stored text %q %s\n%q", s, d, m.Body)
		}
	}
	head, _, _ := bytes.Cut(m.Body, []byte("\r\n\r\n"))
	fields, _, err := readHeader(append(head, "\r\n\r\n"...))
	if err != nil {
		t.Fatalf("the header does not read back: %v", err)
	}
	src := append(head, "\r\n\r\n"...)
	for _, f := range fields {
		if strings.EqualFold(f.name, "authentication-results") {
			t.Fatalf("an Authentication-Results field is left\n%q", m.Body)
		}
		if d := checkHeaderText(strings.ReplaceAll(string(src[f.valueStart:f.end-2]), "\r\n", "")); d != "" {
			t.Fatalf("%s: %s\n%q", f.name, d, m.Body)
		}
	}
}

// FuzzCheckFieldBody: the raw-field check and the JSON path's rule agree:
// a field body passes checkFieldBody exactly when, its folds unfolded, it
// passes checkHeaderText; with asciiOnly, only when it is also ASCII.
func FuzzCheckFieldBody(f *testing.F) {
	for _, s := range []string{" plain", " folded\r\n over", " Grüße", " \xff", " a\x00b", " a\rb", " a\x1bb", " tab\there", " a\r\r\n\n"} {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, v []byte, asciiOnly bool) {
		detail, kind := checkFieldBody(v, asciiOnly)
		unfolded := strings.ReplaceAll(string(v), "\r\n", "")
		// A fold inside a UTF-8 sequence leaves the field's octets invalid
		// UTF-8 even though its unfolded text is valid: refused either way.
		valid := checkHeaderText(unfolded) == "" && utf8.Valid(v)
		want := valid && (!asciiOnly || isASCII(unfolded))
		if (detail == "") != want {
			t.Fatalf("checkFieldBody(%q, %v) = %q; checkHeaderText of it unfolded: %q", v, asciiOnly, detail, checkHeaderText(unfolded))
		}
		if (kind == ErrNeedsSMTPUTF8) != (detail != "" && asciiOnly && valid) {
			t.Fatalf("checkFieldBody(%q, %v): kind %v for %q", v, asciiOnly, kind, detail)
		}
	})
}
