package mail

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"mime"
	"slices"
	"strings"
	"testing"

	gomail "github.com/emersion/go-message/mail"
)

// build builds d with the test options and checks what every message must be.
func build(t *testing.T, d Draft) (*Message, *part) {
	t.Helper()
	m, err := Build(d, testOpts())
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	if err := checkWire(m.Body); err != nil {
		t.Fatalf("%v\n%s", err, m.Body)
	}
	return m, parseMessage(t, m.Body)
}

func draft(edit func(*Draft)) Draft {
	d := Draft{From: "Alice <alice@example.com>", To: []string{"bob@example.net"}, Subject: "Hi", Text: "Hello Bob"}
	if edit != nil {
		edit(&d)
	}
	return d
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestBuildStructure(t *testing.T) {
	pdf := Attachment{Filename: "a.pdf", Content: b64("%PDF-1.4 fake")}
	logo := Attachment{Filename: "logo.png", Content: b64("\x89PNG fake"), ContentID: "logo@example.com"}
	for _, tc := range []struct {
		name string
		d    Draft
		want string
	}{
		{"text only", draft(nil), "text/plain"},
		{"html only", draft(func(d *Draft) { d.Text, d.HTML = "", "<p>hi</p>" }), "text/html"},
		{"text and html", draft(func(d *Draft) { d.HTML = "<p>hi</p>" }), "multipart/alternative[text/plain text/html]"},
		{"attachment", draft(func(d *Draft) { d.Attachments = []Attachment{pdf} }), "multipart/mixed[text/plain application/pdf]"},
		{"attachment only", draft(func(d *Draft) { d.Text, d.Attachments = "", []Attachment{pdf} }), "multipart/mixed[application/pdf]"},
		{"inline with html", draft(func(d *Draft) {
			d.Text, d.HTML, d.Attachments = "", `<img src="cid:logo@example.com">`, []Attachment{logo}
		}),
			"multipart/related[text/html image/png]"},
		{"inline with alternative", draft(func(d *Draft) { d.HTML, d.Attachments = "<p>x</p>", []Attachment{logo} }),
			"multipart/related[multipart/alternative[text/plain text/html] image/png]"},
		{"everything", draft(func(d *Draft) { d.HTML, d.Attachments = "<p>x</p>", []Attachment{pdf, logo} }),
			"multipart/mixed[multipart/related[multipart/alternative[text/plain text/html] image/png] application/pdf]"},
		{"inline without a body", draft(func(d *Draft) { d.Text, d.Attachments = "", []Attachment{logo} }), "multipart/mixed[image/png]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, p := build(t, tc.d)
			if got := p.types(); got != tc.want {
				t.Fatalf("structure %s, want %s\n%s", got, tc.want, m.Body)
			}
			if v := p.header.Get("MIME-Version"); v != "1.0" {
				t.Fatalf("MIME-Version %q", v)
			}
			single := len(p.parts) == 0 && p.header.Get("Content-Transfer-Encoding") == "7bit"
			var check func(p *part)
			check = func(p *part) {
				if single {
					// A message ends in CRLF; in a multipart the delimiter owns it.
					p.body = bytes.TrimSuffix(p.body, []byte("\r\n"))
				}
				switch p.mediaType {
				case "multipart/related":
					// RFC 2387 3.1: type names the root.
					if p.params["type"] != p.parts[0].mediaType {
						t.Errorf("related type=%q, root %s", p.params["type"], p.parts[0].mediaType)
					}
				case "text/plain":
					if string(p.body) != tc.d.Text {
						t.Errorf("text %q, want %q", p.body, tc.d.Text)
					}
				case "text/html":
					if string(p.body) != tc.d.HTML {
						t.Errorf("html %q, want %q", p.body, tc.d.HTML)
					}
				case "image/png":
					if cid := p.header.Get("Content-ID"); cid != "<logo@example.com>" {
						t.Errorf("Content-ID %q", cid)
					}
					if d, _, _ := p.header.ContentDisposition(); d != "inline" {
						t.Errorf("disposition %q, want inline", d)
					}
				case "application/pdf":
					if d, params, _ := p.header.ContentDisposition(); d != "attachment" || params["filename"] != "a.pdf" {
						t.Errorf("disposition %q %v", d, params)
					}
				}
				if strings.HasPrefix(p.mediaType, "multipart/") && !strings.HasPrefix(p.params["boundary"], "=_") {
					t.Errorf("boundary %q", p.params["boundary"])
				}
				for _, c := range p.parts {
					check(c)
				}
			}
			check(p)
		})
	}
}

func TestBuildBoundariesAreRandom(t *testing.T) {
	d := draft(func(d *Draft) { d.HTML = "<p>x</p>" })
	m1, p1 := build(t, d)
	m2, p2 := build(t, d)
	if p1.params["boundary"] == p2.params["boundary"] || bytes.Equal(m1.Body, m2.Body) {
		t.Fatalf("two builds share boundary %q", p1.params["boundary"])
	}
}

func TestBuildTextEncoding(t *testing.T) {
	for _, tc := range []struct {
		name, text, cte string
	}{
		{"ascii", "Hello Bob,\r\nsee you.\r\n", "7bit"},
		{"LF line ends", "Hello\nBob\n", "7bit"},
		{"CR line ends", "Hello\rBob", "7bit"},
		{"dot lines", "a\n.\nb\n..\n", "7bit"},
		{"long ascii line", strings.Repeat("x", 2000), "quoted-printable"},
		{"line at the limit", strings.Repeat("x", 998) + "\n", "7bit"},
		{"utf-8", "Grüße aus Köln 👋\n", "quoted-printable"},
		{"NUL", "a\x00b", "quoted-printable"},
		{"trailing spaces", "Grüße   \nnext\t\n", "quoted-printable"},
		{"equals", "a=b ünd =3D\n", "quoted-printable"},
		{"no final newline", "ünd", "quoted-printable"},
		{"long utf-8 line", strings.Repeat("ü", 3000), "quoted-printable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, html := range []bool{false, true} {
				d := draft(func(d *Draft) { d.Text = tc.text })
				if html {
					d.HTML = "<p>x</p>" // multipart: the part holds the text exactly
				}
				m, p := build(t, d)
				text := p
				if html {
					text = p.parts[0]
				}
				if cte := text.header.Get("Content-Transfer-Encoding"); cte != tc.cte {
					t.Fatalf("Content-Transfer-Encoding %q, want %q", cte, tc.cte)
				}
				if text.params["charset"] != "utf-8" {
					t.Fatalf("charset %q", text.params["charset"])
				}
				want := crlf(tc.text)
				got := string(text.body)
				if !html && tc.cte == "7bit" && !strings.HasSuffix(want, "\r\n") {
					want += "\r\n" // a message ends in CRLF
				}
				if got != want {
					t.Fatalf("decoded %q, want %q\n%s", got, want, m.Body)
				}
			}
		})
	}
}

func TestBuildHeaders(t *testing.T) {
	m, p := build(t, Draft{
		From:    "Alice Smith <alice@example.com>",
		To:      []string{"Bob <bob@example.net>", "carol@example.org"},
		Cc:      []string{"dave@example.com"},
		Bcc:     []string{"eve@example.com"},
		ReplyTo: "help@example.com",
		Subject: "Quarterly report",
		Text:    "see attached",
		Headers: map[string]string{"X-Campaign": "welcome", "List-Unsubscribe": "<mailto:u@example.com>"},
	})
	h := p.header
	for _, tc := range []struct{ name, want string }{
		{"Date", "Wed, 04 Mar 2026 05:06:07 +0100"},
		{"From", "Alice Smith <alice@example.com>"},
		{"To", "Bob <bob@example.net>, carol@example.org"},
		{"Cc", "dave@example.com"},
		{"Reply-To", "help@example.com"},
		{"Subject", "Quarterly report"},
		{"Message-Id", "<id1@relay.example.com>"},
		{"Mime-Version", "1.0"},
		{"X-Campaign", "welcome"},
		{"List-Unsubscribe", "<mailto:u@example.com>"},
		{"Bcc", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := h.Get(tc.name); got != tc.want {
				t.Fatalf("%s: %q, want %q", tc.name, got, tc.want)
			}
		})
	}
	t.Run("no Bcc anywhere", func(t *testing.T) {
		if bytes.Contains(m.Body, []byte("eve@")) {
			t.Fatalf("the Bcc address is in the message:\n%s", m.Body)
		}
	})
	t.Run("envelope", func(t *testing.T) {
		want := []string{"bob@example.net", "carol@example.org", "dave@example.com", "eve@example.com"}
		if !slices.Equal(m.Recipients, want) {
			t.Fatalf("Recipients %v, want %v", m.Recipients, want)
		}
		if m.Sender != "alice@example.com" || len(m.From) != 1 || m.From[0].Name != "Alice Smith" {
			t.Fatalf("Sender %q From %+v", m.Sender, m.From)
		}
		if m.MessageID != "id1@relay.example.com" || m.Subject != "Quarterly report" {
			t.Fatalf("MessageID %q Subject %q", m.MessageID, m.Subject)
		}
		if m.Needs8Bit || m.NeedsUTF8 {
			t.Fatalf("Needs8Bit %v NeedsUTF8 %v", m.Needs8Bit, m.NeedsUTF8)
		}
	})
	t.Run("order", func(t *testing.T) {
		head, _, _ := bytes.Cut(m.Body, []byte("\r\n\r\n"))
		var names []string
		for _, l := range strings.Split(string(head), "\r\n") {
			if n, _, ok := strings.Cut(l, ":"); ok && !isWSP(l[0]) {
				names = append(names, n)
			}
		}
		want := "Date From To Cc Reply-To Subject Message-ID MIME-Version Content-Type Content-Transfer-Encoding List-Unsubscribe X-Campaign"
		if got := strings.Join(names, " "); got != want {
			t.Fatalf("fields %s\nwant   %s", got, want)
		}
	})
}

func TestBuildEncodedHeaders(t *testing.T) {
	long := strings.Repeat("Quarterly report for the board ", 8)
	for _, tc := range []struct{ name, subject string }{
		{"ascii", "Hello"},
		{"empty", ""},
		{"utf-8", "Grüße aus Köln – 👋"},
		{"long ascii folds", strings.TrimSpace(long)},
		{"long utf-8", strings.Repeat("Grüße ", 40) + "end"},
		{"long word", strings.Repeat("x", 1500)},
		{"looks encoded", "=?utf-8?q?not_really?="},
		{"edge spaces", "  padded  "},
		{"double spaces", "a  b\tc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, p := build(t, draft(func(d *Draft) { d.Subject = tc.subject }))
			raw, ok := unfoldHeader(m.Body, "Subject")
			if !ok {
				t.Fatal("no Subject field")
			}
			dec := new(mime.WordDecoder)
			got, err := dec.DecodeHeader(strings.TrimPrefix(raw, " "))
			if err != nil || got != tc.subject {
				t.Fatalf("Subject decodes to %q, %v; want %q\n%s", got, err, tc.subject, m.Body)
			}
			if got, _ := p.header.Text("Subject"); got != tc.subject && !strings.ContainsAny(tc.subject, "\t") && !strings.Contains(tc.subject, "  ") {
				t.Fatalf("go-message reads Subject %q, want %q", got, tc.subject)
			}
			if m.Subject != tc.subject {
				t.Fatalf("Message.Subject %q", m.Subject)
			}
			head, _, _ := bytes.Cut(m.Body, []byte("\r\n\r\n"))
			for _, l := range strings.Split(string(head), "\r\n") {
				if len(l) > softLineLen {
					t.Fatalf("header line of %d octets: %q", len(l), l)
				}
			}
		})
	}
	t.Run("addresses", func(t *testing.T) {
		var to []string
		for i := range 30 {
			to = append(to, fmt.Sprintf("Empfänger Nummer %d <user%d@example.net>", i, i))
		}
		m, p := build(t, draft(func(d *Draft) { d.From, d.To = "Jörg Müller <jörg@example.de>", to }))
		list, err := (&gomail.Header{Header: p.header}).AddressList("To")
		if err != nil || len(list) != 30 || list[29].Name != "Empfänger Nummer 29" || list[29].Address != "user29@example.net" {
			t.Fatalf("To reads as %v, %v", list, err)
		}
		from, err := (&gomail.Header{Header: p.header}).AddressList("From")
		if err != nil || from[0].Name != "Jörg Müller" || from[0].Address != "jörg@example.de" {
			t.Fatalf("From reads as %v, %v", from, err)
		}
		if !m.NeedsUTF8 || !m.Needs8Bit {
			t.Fatalf("a UTF-8 local part: NeedsUTF8 %v Needs8Bit %v", m.NeedsUTF8, m.Needs8Bit)
		}
		head, _, _ := bytes.Cut(m.Body, []byte("\r\n\r\n"))
		for _, l := range strings.Split(string(head), "\r\n") {
			if len(l) > softLineLen {
				t.Fatalf("header line of %d octets: %q", len(l), l)
			}
		}
	})
	t.Run("custom", func(t *testing.T) {
		value := strings.Repeat("wert ", 300) + "Größe"
		_, p := build(t, draft(func(d *Draft) {
			d.Headers = map[string]string{"X-Long": strings.Repeat("token ", 300) + "end", "X-Utf8": value, "X-Empty": ""}
		}))
		if got, _ := p.header.Text("X-Utf8"); got != value {
			t.Fatalf("X-Utf8 reads as %q", got)
		}
		if got := p.header.Get("X-Long"); got != strings.Repeat("token ", 300)+"end" {
			t.Fatalf("X-Long reads as %q", got)
		}
		if !p.header.Has("X-Empty") {
			t.Fatal("X-Empty missing")
		}
	})
}

func TestBuildAttachments(t *testing.T) {
	binary := make([]byte, 10000)
	for i := range binary {
		binary[i] = byte(i * 7)
	}
	for _, tc := range []struct {
		name       string
		att        Attachment
		mediaType  string
		params     map[string]string
		filename   string
		data       []byte
		dispositon string
	}{
		{"pdf", Attachment{Filename: "report.pdf", Content: b64("pdf")}, "application/pdf", nil, "report.pdf", []byte("pdf"), "attachment"},
		{"binary", Attachment{Filename: "blob.bin", ContentType: "application/x-thing", Content: base64.StdEncoding.EncodeToString(binary)},
			"application/x-thing", nil, "blob.bin", binary, "attachment"},
		{"wrapped base64", Attachment{Filename: "a.txt", Content: " aGVs\r\nbG8g\td29y\nbGQ= "}, "text/plain", nil, "a.txt", []byte("hello world"), "attachment"},
		{"no padding", Attachment{Filename: "a.txt", Content: "aGVsbG8"}, "text/plain", nil, "a.txt", []byte("hello"), "attachment"},
		{"empty", Attachment{Filename: "empty.txt"}, "text/plain", nil, "empty.txt", nil, "attachment"},
		{"unknown extension", Attachment{Filename: "x.unknownext", Content: b64("x")}, "application/octet-stream", nil, "x.unknownext", []byte("x"), "attachment"},
		{"no filename", Attachment{Content: b64("x")}, "application/octet-stream", nil, "", []byte("x"), "attachment"},
		{"params kept", Attachment{Filename: "a.csv", ContentType: "Text/CSV; Charset=ISO-8859-1; header=present", Content: b64("a;b")},
			"text/csv", map[string]string{"charset": "ISO-8859-1", "header": "present"}, "a.csv", []byte("a;b"), "attachment"},
		{"utf-8 filename", Attachment{Filename: "Prüfbericht März.pdf", Content: b64("x")}, "application/pdf", nil, "Prüfbericht März.pdf", []byte("x"), "attachment"},
		{"long utf-8 filename", Attachment{Filename: strings.Repeat("ä", 120) + ".pdf", Content: b64("x")}, "application/pdf", nil,
			strings.Repeat("ä", 120) + ".pdf", []byte("x"), "attachment"},
		{"long ascii filename", Attachment{Filename: strings.Repeat("report ", 30) + ".pdf", Content: b64("x")}, "application/pdf", nil,
			strings.Repeat("report ", 30) + ".pdf", []byte("x"), "attachment"},
		{"quotes in filename", Attachment{Filename: `a "b" \c.txt`, Content: b64("x")}, "text/plain", nil, `a "b" \c.txt`, []byte("x"), "attachment"},
		{"inline", Attachment{Filename: "logo.png", Content: b64("png"), ContentID: "<logo>"}, "image/png", nil, "logo.png", []byte("png"), "inline"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, p := build(t, draft(func(d *Draft) { d.HTML = "<p>x</p>"; d.Attachments = []Attachment{tc.att} }))
			a := p.parts[len(p.parts)-1]
			if tc.dispositon == "inline" {
				a = p.parts[1]
			}
			if a.mediaType != tc.mediaType {
				t.Fatalf("media type %q, want %q", a.mediaType, tc.mediaType)
			}
			for k, v := range tc.params {
				if a.params[k] != v {
					t.Fatalf("param %s=%q, want %q", k, a.params[k], v)
				}
			}
			if a.params["name"] != tc.filename {
				t.Fatalf("name=%q, want %q", a.params["name"], tc.filename)
			}
			disp, params, err := mime.ParseMediaType(a.header.Get("Content-Disposition"))
			if err != nil || disp != tc.dispositon || params["filename"] != tc.filename {
				t.Fatalf("Content-Disposition %q %v %v; want %s filename %q", disp, params, err, tc.dispositon, tc.filename)
			}
			if !bytes.Equal(a.body, tc.data) {
				t.Fatalf("content %q, want %q", a.body, tc.data)
			}
			if cte := a.header.Get("Content-Transfer-Encoding"); cte != "base64" {
				t.Fatalf("Content-Transfer-Encoding %q", cte)
			}
			// RFC 2045 6.8: base64 lines of at most 76 characters.
			_, body, _ := bytes.Cut(m.Body, []byte("Content-Transfer-Encoding: base64\r\n"))
			for _, l := range bytes.Split(body, []byte("\r\n")) {
				if bytes.HasPrefix(l, []byte("--")) {
					break
				}
				if len(l) > 76 {
					t.Fatalf("base64 line of %d", len(l))
				}
			}
			if tc.dispositon == "inline" && a.header.Get("Content-ID") != "<logo>" {
				t.Fatalf("Content-ID %q", a.header.Get("Content-ID"))
			}
		})
	}
}

func TestBuildFieldErrors(t *testing.T) {
	crlfValue := "Bob\r\nBcc: x@evil.test"
	for _, tc := range []struct {
		name   string
		edit   func(*Draft)
		fields []string
		detail string
	}{
		{"no from", func(d *Draft) { d.From = "" }, []string{"from"}, "required"},
		{"bad from", func(d *Draft) { d.From = "alice" }, []string{"from"}, "@domain"},
		{"no recipient", func(d *Draft) { d.To = nil }, []string{"to"}, "at least one recipient"},
		{"no body", func(d *Draft) { d.Text = "" }, []string{"text"}, "text, html or an attachment"},
		{"bad to", func(d *Draft) { d.To = []string{"ok@example.com", "nope"} }, []string{"to[1]"}, "@domain"},
		{"bad cc", func(d *Draft) { d.Cc = []string{"a@b@c"} }, []string{"cc[0]"}, ""},
		{"bad bcc", func(d *Draft) { d.Bcc = []string{"x@[10.0.0.1]"} }, []string{"bcc[0]"}, "literal"},
		{"reply_to list", func(d *Draft) { d.ReplyTo = "a@example.com, b@example.com" }, []string{"reply_to"}, "one address"},
		{"from CRLF", func(d *Draft) { d.From = "alice@example.com\r\nBcc: x@evil.test" }, []string{"from"}, "CR, LF or NUL"},
		{"to CRLF", func(d *Draft) { d.To = []string{crlfValue} }, []string{"to[0]"}, "CR, LF or NUL"},
		{"cc LF", func(d *Draft) { d.Cc = []string{"a@example.com\nBcc: x@evil.test"} }, []string{"cc[0]"}, "CR, LF or NUL"},
		{"bcc CR", func(d *Draft) { d.Bcc = []string{"a@example.com\rX: y"} }, []string{"bcc[0]"}, "CR, LF or NUL"},
		{"reply_to CRLF", func(d *Draft) { d.ReplyTo = crlfValue }, []string{"reply_to"}, "CR, LF or NUL"},
		{"subject CRLF", func(d *Draft) { d.Subject = "Hi\r\nBcc: x@evil.test" }, []string{"subject"}, "CR, LF or NUL"},
		{"subject LF", func(d *Draft) { d.Subject = "Hi\nX: y" }, []string{"subject"}, "CR, LF or NUL"},
		{"subject NUL", func(d *Draft) { d.Subject = "Hi\x00" }, []string{"subject"}, "CR, LF or NUL"},
		{"subject controls", func(d *Draft) { d.Subject = "bell\x07 esc\x1b" }, []string{"subject"}, "control characters other than tab (0x07 at octet 4)"},
		{"subject DEL", func(d *Draft) { d.Subject = "del\x7f" }, []string{"subject"}, "control characters"},
		{"display name control", func(d *Draft) { d.From = "=?utf-8?q?Al=1Bice?= <alice@example.com>" }, []string{"from"}, "the display name must not contain control characters"},
		{"display name bad UTF-8", func(d *Draft) { d.From = "=?utf-8?q?Al=FFice?= <alice@example.com>" }, []string{"from"}, "the display name is not valid UTF-8"},
		{"header value control", func(d *Draft) { d.Headers = map[string]string{"X-A": "a\x1bb"} }, []string{"headers.X-A"}, "control characters"},
		{"subject bad UTF-8", func(d *Draft) { d.Subject = "Hi\xff" }, []string{"subject"}, "UTF-8"},
		{"text bad UTF-8", func(d *Draft) { d.Text = "Hi\xff" }, []string{"text"}, "UTF-8"},
		{"html bad UTF-8", func(d *Draft) { d.HTML = "Hi\xc3" }, []string{"html"}, "UTF-8"},
		{"header value CRLF", func(d *Draft) { d.Headers = map[string]string{"X-A": crlfValue} }, []string{"headers.X-A"}, "CR, LF or NUL"},
		{"header name CRLF", func(d *Draft) { d.Headers = map[string]string{"X-A\r\nBcc": "x"} }, []string{"headers.X-A\r\nBcc"}, "printable ASCII"},
		{"header name space", func(d *Draft) { d.Headers = map[string]string{"X A": "x"} }, []string{"headers.X A"}, "RFC 5322 2.2"},
		{"header name colon", func(d *Draft) { d.Headers = map[string]string{"X:A": "x"} }, []string{"headers.X:A"}, "RFC 5322 2.2"},
		{"header name non-ASCII", func(d *Draft) { d.Headers = map[string]string{"X-Ä": "x"} }, []string{"headers.X-Ä"}, "RFC 5322 2.2"},
		{"header name empty", func(d *Draft) { d.Headers = map[string]string{"": "x"} }, []string{"headers."}, "empty"},
		{"header name long", func(d *Draft) { d.Headers = map[string]string{"X-" + strings.Repeat("a", 80): "x"} }, []string{"headers.X-" + strings.Repeat("a", 80)}, "limit"},
		{"header value long", func(d *Draft) { d.Headers = map[string]string{"X-A": strings.Repeat("a", 2001)} }, []string{"headers.X-A"}, "2001 octets"},
		{"too many headers", func(d *Draft) {
			d.Headers = map[string]string{}
			for i := range 101 {
				d.Headers[fmt.Sprintf("X-H%d", i)] = "v"
			}
		}, []string{"headers"}, "too many headers: 101 > 100"},
		{"filename CRLF", func(d *Draft) { d.Attachments = []Attachment{{Filename: "a\r\nb.txt", Content: b64("x")}} }, []string{"attachments[0].filename"}, "CR, LF or NUL"},
		{"filename long", func(d *Draft) { d.Attachments = []Attachment{{Filename: strings.Repeat("a", 256), Content: b64("x")}} }, []string{"attachments[0].filename"}, "limit"},
		{"content_type CRLF", func(d *Draft) { d.Attachments = []Attachment{{ContentType: "text/plain\r\nBcc: x", Content: b64("x")}} }, []string{"attachments[0].content_type"}, "CR, LF or NUL"},
		{"content_type bad", func(d *Draft) { d.Attachments = []Attachment{{ContentType: "nonsense", Content: b64("x")}} }, []string{"attachments[0].content_type"}, "not a media type"},
		{"content_type multipart", func(d *Draft) { d.Attachments = []Attachment{{ContentType: "multipart/mixed", Content: b64("x")}} }, []string{"attachments[0].content_type"}, "cannot be attached"},
		{"content_type message", func(d *Draft) { d.Attachments = []Attachment{{ContentType: "message/rfc822", Content: b64("x")}} }, []string{"attachments[0].content_type"}, "cannot be attached"},
		{"content_id CRLF", func(d *Draft) { d.Attachments = []Attachment{{ContentID: "a\r\nb", Content: b64("x")}} }, []string{"attachments[0].content_id"}, "CR, LF or NUL"},
		{"content_id space", func(d *Draft) { d.Attachments = []Attachment{{ContentID: "a b", Content: b64("x")}} }, []string{"attachments[0].content_id"}, "RFC 2045 7"},
		{"content_id twice", func(d *Draft) {
			d.HTML = "<p>x</p>"
			d.Attachments = []Attachment{{ContentID: "a", Content: b64("x")}, {ContentID: "<a>", Content: b64("y")}}
		}, []string{"attachments[1].content_id"}, "another attachment"},
		{"bad base64", func(d *Draft) {
			d.Attachments = []Attachment{{Filename: "a.txt", Content: b64("x")}, {Filename: "b.txt", Content: "not base64!"}}
		},
			[]string{"attachments[1].content"}, "not valid base64: "},
		{"url-safe base64", func(d *Draft) { d.Attachments = []Attachment{{Filename: "a.txt", Content: "-_-_"}} }, []string{"attachments[0].content"}, "not valid base64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := draft(tc.edit)
			m, err := Build(d, testOpts())
			if err == nil {
				t.Fatalf("Build succeeded:\n%s", m.Body)
			}
			var fe FieldErrors
			if !errors.As(err, &fe) {
				t.Fatalf("error %T %v is not FieldErrors", err, err)
			}
			var fields []string
			for _, f := range fe {
				fields = append(fields, f.Field)
			}
			if !slices.Equal(fields, tc.fields) {
				t.Fatalf("fields %q, want %q (%v)", fields, tc.fields, err)
			}
			if !strings.Contains(fe[0].Detail, tc.detail) {
				t.Fatalf("detail %q, want it to say %q", fe[0].Detail, tc.detail)
			}
		})
	}
}

func TestBuildReservedHeaders(t *testing.T) {
	for _, name := range []string{
		"From", "to", "CC", "Bcc", "Sender", "Subject", "Reply-To", "Date", "Message-ID", "message-id",
		"MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "Content-ID",
		"Return-Path", "Received", "DKIM-Signature", "dkim-signature", "Resent-From", "ARC-Seal",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Build(draft(func(d *Draft) { d.Headers = map[string]string{name: "x@example.com"} }), testOpts())
			var fe FieldErrors
			if !errors.As(err, &fe) || len(fe) != 1 || fe[0].Field != "headers."+name {
				t.Fatalf("Build: %v; want one error for headers.%s", err, name)
			}
		})
	}
	for _, name := range []string{"X-Campaign", "List-Unsubscribe", "In-Reply-To", "References", "Auto-Submitted", "x-weird_NAME!~"} {
		t.Run(name, func(t *testing.T) {
			m, p := build(t, draft(func(d *Draft) { d.Headers = map[string]string{name: "v"} }))
			if p.header.Get(name) != "v" {
				t.Fatalf("%s missing:\n%s", name, m.Body)
			}
		})
	}
}

func TestBuildCollectsEveryError(t *testing.T) {
	_, err := Build(Draft{
		From:        "nope",
		To:          []string{"a@example.com", "bad", "Bob\r\nBcc: x@evil.test"},
		Cc:          []string{"alsobad"},
		ReplyTo:     "x@localhost",
		Subject:     "a\nb",
		Headers:     map[string]string{"Bcc": "x@evil.test", "X-Ok": "fine", "X-Bad": "\r\n"},
		Attachments: []Attachment{{Filename: "a.txt", Content: "!!"}},
	}, testOpts())
	var fe FieldErrors
	if !errors.As(err, &fe) {
		t.Fatalf("Build: %v", err)
	}
	var got []string
	for _, f := range fe {
		got = append(got, f.Field)
	}
	want := []string{"from", "to[1]", "to[2]", "cc[0]", "reply_to", "subject", "headers.Bcc", "headers.X-Bad", "attachments[0].content"}
	if !slices.Equal(got, want) {
		t.Fatalf("fields %q\nwant   %q", got, want)
	}
	if !strings.Contains(err.Error(), "from: invalid address") || !strings.Contains(err.Error(), "; to[1]: ") {
		t.Fatalf("Error() = %q", err.Error())
	}
}

func TestBuildRecipients(t *testing.T) {
	t.Run("de-duplicated on the domain's case, order kept", func(t *testing.T) {
		m, _ := build(t, draft(func(d *Draft) {
			d.To = []string{"Bob <bob@Example.NET>", "carol@example.org"}
			d.Cc = []string{"bob@example.net", "Bob@example.net"}
			d.Bcc = []string{"carol@EXAMPLE.org", "dave@bücher.de", "dave@xn--bcher-kva.de"}
		}))
		want := []string{"bob@example.net", "carol@example.org", "Bob@example.net", "dave@xn--bcher-kva.de"}
		if !slices.Equal(m.Recipients, want) {
			t.Fatalf("Recipients %q, want %q", m.Recipients, want)
		}
	})
	t.Run("bcc only", func(t *testing.T) {
		m, p := build(t, draft(func(d *Draft) { d.To, d.Bcc = nil, []string{"hidden@example.com"} }))
		if got := p.header.Get("To"); got != "undisclosed-recipients:;" {
			t.Fatalf("To %q", got)
		}
		if bytes.Contains(m.Body, []byte("hidden@")) || !slices.Equal(m.Recipients, []string{"hidden@example.com"}) {
			t.Fatalf("Recipients %v\n%s", m.Recipients, m.Body)
		}
	})
	t.Run("limit", func(t *testing.T) {
		opts := testOpts()
		opts.MaxRecipients = 3
		d := draft(func(d *Draft) {
			d.To = []string{"a@example.com", "b@example.com"}
			d.Cc = []string{"a@example.com", "c@example.com"}
		})
		if _, err := Build(d, opts); err != nil {
			t.Fatalf("3 distinct recipients: %v", err)
		}
		d.Bcc = []string{"d@example.com"}
		_, err := Build(d, opts)
		var fe FieldErrors
		if !errors.As(err, &fe) || len(fe) != 1 || fe[0] != (FieldError{Field: "to", Detail: "too many recipients: 4 > 3"}) {
			t.Fatalf("Build: %v", err)
		}
	})
	t.Run("default limit", func(t *testing.T) {
		var to []string
		for i := range 1001 {
			to = append(to, fmt.Sprintf("u%d@example.com", i))
		}
		_, err := Build(draft(func(d *Draft) { d.To = to }), testOpts())
		if err == nil || err.Error() != "to: too many recipients: 1001 > 1000" {
			t.Fatalf("Build: %v", err)
		}
	})
	t.Run("many bad entries", func(t *testing.T) {
		to := make([]string, 500)
		for i := range to {
			to[i] = "bad"
		}
		_, err := Build(draft(func(d *Draft) { d.To = to }), testOpts())
		var fe FieldErrors
		if !errors.As(err, &fe) || len(fe) != maxErrorsPerList+1 || fe[len(fe)-1].Detail != "480 more invalid addresses" {
			t.Fatalf("Build: %d errors, last %v", len(fe), fe[len(fe)-1])
		}
	})
}

func TestBuildOptions(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		m, err := Build(draft(nil), BuildOptions{})
		if err != nil {
			t.Fatal(err)
		}
		id, host, _ := strings.Cut(m.MessageID, "@")
		if host != "example.com" || len(id) != 36 || id[14] != '7' {
			t.Fatalf("MessageID %q: want a UUIDv7 at the From domain", m.MessageID)
		}
		p := parseMessage(t, m.Body)
		if _, err := (&gomail.Header{Header: p.header}).Date(); err != nil {
			t.Fatalf("Date: %v", err)
		}
	})
	t.Run("IDN hostname", func(t *testing.T) {
		opts := testOpts()
		opts.Hostname = "Relay.Bücher.de"
		m, err := Build(draft(nil), opts)
		if err != nil || m.MessageID != "id1@relay.xn--bcher-kva.de" {
			t.Fatalf("MessageID %v, %v", m, err)
		}
	})
	for _, tc := range []struct {
		name string
		edit func(*BuildOptions)
	}{
		{"bad hostname", func(o *BuildOptions) { o.Hostname = "not a host" }},
		{"bad id", func(o *BuildOptions) { o.NewID = func() string { return "a b" } }},
		{"id with @", func(o *BuildOptions) { o.NewID = func() string { return "a@b" } }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOpts()
			tc.edit(&opts)
			_, err := Build(draft(nil), opts)
			var fe FieldErrors
			if err == nil || errors.As(err, &fe) {
				t.Fatalf("Build: %v; want an error that is not the client's", err)
			}
		})
	}
}

func TestSenderDomains(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    Message
		want []string
	}{
		{"built", Message{From: []Address{{"", "a@example.com"}}, Sender: "a@example.com"}, []string{"example.com"}},
		{"all differ", Message{From: []Address{{"", "a@one.example"}, {"", "b@Two.example"}}, SenderHeader: "s@three.example", Sender: "bounce@four.example"},
			[]string{"one.example", "two.example", "three.example", "four.example"}},
		{"repeats", Message{From: []Address{{"", "a@x.example"}, {"", "b@x.example"}}, SenderHeader: "s@x.example", Sender: "s@X.example"}, []string{"x.example"}},
		{"resent", Message{From: []Address{{"", "a@one.example"}}, Resent: []string{"r@Two.example", "s@one.example", "t@three.example"}, Sender: "a@one.example"},
			[]string{"one.example", "two.example", "three.example"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.m.SenderDomains(); !slices.Equal(got, tc.want) {
				t.Fatalf("SenderDomains() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestTypeByFilename(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"a.PDF", "application/pdf"},
		{"report.final.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"},
		{"data.csv", "text/csv"},
		{"invite.ics", "text/calendar"},
		{"photo.JPEG", "image/jpeg"},
		{"archive.zip", "application/zip"},
		{"noext", "application/octet-stream"},
		{"", "application/octet-stream"},
		{"weird.zzzunknown", "application/octet-stream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := typeByFilename(tc.name); got != tc.want {
				t.Fatalf("typeByFilename(%q) = %q, want %q", tc.name, got, tc.want)
			}
		})
	}
	if got := (FieldError{Field: "to[0]", Detail: "not an address"}).Error(); got != "to[0]: not an address" {
		t.Fatalf("FieldError.Error() = %q", got)
	}
}
