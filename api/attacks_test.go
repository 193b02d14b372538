package api_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// This file holds the API's half of the attack suite (docs/reliability-
// attacks.md): open relay, header injection, SMTP smuggling, address
// literals and the limits a request must keep.

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// storedBody reads a message's RFC 5322 bytes from PostgreSQL: what the
// relay will send, whatever the API answered.
func (h *harness) storedBody(id string) []byte {
	h.t.Helper()
	var body []byte
	if err := h.db.QueryRow(context.Background(), "SELECT body FROM messages WHERE id = $1", id).Scan(&body); err != nil {
		h.t.Fatalf("read body of %s: %v", id, err)
	}
	return body
}

// wireProblems lists what would let a receiver read b differently from
// us: a CR or LF that is not part of CRLF, a line starting with an
// injected field name, a Bcc field in the header section.
func wireProblems(b []byte, injected string) []string {
	var out []string
	for i, c := range b {
		switch {
		case c == '\r' && (i+1 == len(b) || b[i+1] != '\n'):
			out = append(out, fmt.Sprintf("bare CR at %d", i))
		case c == '\n' && (i == 0 || b[i-1] != '\r'):
			out = append(out, fmt.Sprintf("bare LF at %d", i))
		}
	}
	inHeader := true
	for _, line := range strings.Split(string(b), "\r\n") {
		lower := strings.ToLower(line)
		if injected != "" && strings.HasPrefix(lower, strings.ToLower(injected)) {
			out = append(out, fmt.Sprintf("injected line %q", line))
		}
		if inHeader && (strings.HasPrefix(lower, "bcc:") || strings.HasPrefix(lower, "bcc :")) {
			out = append(out, fmt.Sprintf("Bcc field %q", line))
		}
		if line == "" {
			inHeader = false
		}
	}
	return out
}

// TestOpenRelay: a key for example.com cannot make mail claim another
// sender domain through any field a receiver reads as the sender.
func TestOpenRelay(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	raw := func(header string) map[string]any {
		return map[string]any{"raw": b64(header + "To: bob@example.net\r\nSubject: x\r\n\r\nhi\r\n")}
	}
	refused := []struct {
		name   string
		body   any
		domain string // the domain the problem must name
		field  string // the field it must name
		where  string // and, for raw, the header
	}{
		{"From another domain", with("from", "mallory@evil.test"), "evil.test", "from", ""},
		{"From a subdomain", with("from", "alice@mail.example.com"), "mail.example.com", "from", ""},
		{"From a look-alike suffix", with("from", "alice@example.com.evil.test"), "example.com.evil.test", "from", ""},
		{"From a homograph (Cyrillic a)", with("from", "alice@exаmple.com"), "xn--exmple-4nf.com", "from", ""},
		{"display name that is an address", with("from", `"alice@example.com" <mallory@evil.test>`), "evil.test", "from", ""},
		{"comment that is an address", with("from", "mallory@evil.test (alice@example.com)"), "evil.test", "from", ""},
		{"raw From", raw("From: mallory@evil.test\r\n"), "evil.test", "raw", "From header"},
		{"raw From, second mailbox", raw("From: alice@example.com, mallory@evil.test\r\nSender: alice@example.com\r\n"), "evil.test", "raw", "From header"},
		{"raw Sender", raw("From: alice@example.com\r\nSender: mallory@evil.test\r\n"), "evil.test", "raw", "Sender header"},
		{"raw Resent-From", raw("From: alice@example.com\r\nResent-From: Mallory <mallory@evil.test>\r\n"), "evil.test", "raw", "Resent-From or Resent-Sender header"},
		{"raw Resent-Sender", raw("From: alice@example.com\r\nResent-From: alice@example.com\r\nResent-Sender: mallory@evil.test\r\n"), "evil.test", "raw", "Resent-From or Resent-Sender header"},
		{"raw lower-case resent-from, folded", raw("From: alice@example.com\r\nresent-from:\r\n mallory@evil.test\r\n"), "evil.test", "raw", "Resent-From or Resent-Sender header"},
		{"raw From with the envelope given", map[string]any{"raw": b64("From: mallory@evil.test\r\n\r\nhi\r\n"), "to": []string{"bob@example.net"}}, "evil.test", "raw", "From header"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			r := h.post(tt.body, nil)
			if r.status != http.StatusForbidden {
				t.Fatalf("status %d, want 403; body %s", r.status, r.body)
			}
			p := r.problem(t)
			if p.Type != "/problems/sender-not-allowed" || !strings.Contains(p.Detail, "example.com") || !slices.Equal(p.fields(), []string{tt.field}) {
				t.Errorf("problem does not name the field %s and the key's domain: %s", tt.field, r.body)
			}
			if d := p.Errors[0].Detail; !strings.Contains(d, tt.domain) || !strings.Contains(d, tt.where) {
				t.Errorf("detail %q does not name %s and %q", d, tt.domain, tt.where)
			}
		})
	}
	// The sender fields cannot be set through custom headers either.
	for _, name := range []string{"Sender", "Resent-From", "Resent-Sender", "Return-Path", "rEsEnT-fRoM", "From"} {
		t.Run("headers."+name, func(t *testing.T) {
			r := h.post(with("headers", map[string]string{name: "mallory@evil.test"}), nil)
			if r.status != http.StatusUnprocessableEntity || !slices.Contains(r.problem(t).fields(), "headers."+name) {
				t.Fatalf("status %d, want 422 naming headers.%s; body %s", r.status, name, r.body)
			}
		})
	}
	if n := h.messageCount(); n != 0 {
		t.Fatalf("%d messages stored by refused requests", n)
	}

	// What stays allowed: the key's domain in any case, a Reply-To
	// elsewhere (it names where answers go, not who sent), and a raw
	// Return-Path, which is dropped: the receiving server writes its own
	// from our envelope (RFC 5321 4.4).
	for _, tt := range []struct {
		name string
		body any
	}{
		{"upper-case domain", with("from", "Alice <alice@EXAMPLE.COM>")},
		{"Reply-To elsewhere", with("reply_to", "help@desk.example.org")},
		{"raw Reply-To elsewhere", raw("From: alice@example.com\r\nReply-To: help@desk.example.org\r\n")},
		{"raw Return-Path dropped", raw("Return-Path: <mallory@evil.test>\r\nFrom: alice@example.com\r\n")},
		{"raw Resent-From of the key's domain", raw("From: alice@example.com\r\nResent-From: bob@Example.com\r\n")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := h.post(tt.body, nil)
			if r.status != http.StatusAccepted {
				t.Fatalf("status %d, want 202; body %s", r.status, r.body)
			}
			var sent sendAnswer
			r.json(t, &sent)
			if body := h.storedBody(sent.ID); bytes.Contains(bytes.ToLower(body), []byte("evil.test")) {
				t.Errorf("stored message names evil.test:\n%s", body)
			}
		})
	}
}

// TestHeaderInjection: a line break in any string field of the request is
// refused with 422 naming the field, or — where the value never becomes a
// header — stored where it cannot start a line. Either way the stored
// message has no injected header line and no bare CR or LF.
func TestHeaderInjection(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	const inj = "X-Injected: yes"
	att := func(k, v string) []map[string]string {
		a := map[string]string{"filename": "a.txt", "content": b64("x")}
		a[k] = v
		return []map[string]string{a}
	}
	fields := []struct {
		field string // the field a 422 names; with key set, followed by the value
		key   bool   // the value goes into a map key
		body  func(v string) any
		safe  bool // the value never reaches a header: 202 allowed
	}{
		{field: "from", body: func(v string) any { return with("from", "Alice"+v+" <alice@example.com>") }},
		{field: "from", body: func(v string) any { return with("from", "alice@example.com"+v) }},
		{field: "to[0]", body: func(v string) any { return with("to", []string{"bob@example.net" + v}) }},
		{field: "to[0]", body: func(v string) any { return with("to", []string{"Bob" + v + " <bob@example.net>"}) }},
		{field: "cc[0]", body: func(v string) any { return with("cc", []string{"carol@example.net" + v}) }},
		{field: "bcc[0]", body: func(v string) any { return with("bcc", []string{"dave@example.net" + v}) }},
		{field: "reply_to", body: func(v string) any { return with("reply_to", "help@example.com"+v) }},
		{field: "subject", body: func(v string) any { return with("subject", "Hi"+v) }},
		{field: "headers.X-Campaign", body: func(v string) any { return with("headers", map[string]string{"X-Campaign": "a" + v}) }},
		{field: "headers.X-A", key: true, body: func(v string) any { return with("headers", map[string]string{"X-A" + v: "a"}) }},
		{field: "attachments[0].filename", body: func(v string) any { return with("attachments", att("filename", "a"+v+".txt")) }},
		{field: "attachments[0].content_type", body: func(v string) any { return with("attachments", att("content_type", "text/plain"+v)) }},
		{field: "attachments[0].content_type", body: func(v string) any {
			return with("attachments", att("content_type", `text/plain; name="a`+v+`"`))
		}},
		{field: "attachments[0].content_id", body: func(v string) any {
			return with("html", `<img src="cid:x">`, "attachments", att("content_id", "x"+v))
		}},
		{field: "tags[0]", body: func(v string) any { return with("tags", []string{"t" + v}) }},
		{field: "metadata.k", key: true, body: func(v string) any { return with("metadata", map[string]string{"k" + v: "v"}) }},
		{field: "to[0]", body: func(v string) any {
			return map[string]any{"raw": b64("From: alice@example.com\r\n\r\nhi\r\n"), "to": []string{"bob@example.net" + v}}
		}},
		// Metadata values are stored beside the message, never in it.
		{field: "metadata.k", safe: true, body: func(v string) any { return with("metadata", map[string]string{"k": "v" + v}) }},
	}
	breaks := []struct{ name, v string }{
		{"CRLF", "\r\n" + inj}, {"LF", "\n" + inj}, {"CR", "\r" + inj}, {"CRLF CRLF", "\r\n\r\n" + inj},
		{"NUL", "\x00" + inj},
	}
	for i, f := range fields {
		for _, b := range breaks {
			name := fmt.Sprintf("%d %s/%s", i, f.field, b.name)
			if f.key {
				name = fmt.Sprintf("%d %s key/%s", i, f.field, b.name)
			}
			t.Run(name, func(t *testing.T) {
				r := h.post(f.body(b.v), nil)
				switch {
				case r.status == http.StatusUnprocessableEntity:
					want := f.field
					if f.key {
						want += b.v
					}
					if p := r.problem(t); !slices.Contains(p.fields(), want) {
						t.Errorf("422 names %q, want %q; body %s", p.fields(), want, r.body)
					}
				case r.status == http.StatusAccepted && f.safe:
					var sent sendAnswer
					r.json(t, &sent)
					if ps := wireProblems(h.storedBody(sent.ID), "X-Injected"); len(ps) > 0 {
						t.Errorf("stored message: %v", ps)
					}
				default:
					t.Fatalf("status %d, want 422; body %s", r.status, r.body)
				}
			})
		}
	}

	// Disguised line breaks that must not become one: encoded-words that
	// decode to CRLF, and Unicode separators. Accepted or refused, the
	// stored message has no injected line.
	for _, tt := range []struct {
		name string
		body any
	}{
		{"encoded CRLF in subject", with("subject", "=?utf-8?q?Hi=0D=0AX-Injected:_yes?=")},
		{"encoded CRLF in display name", with("from", "=?utf-8?q?Alice=0D=0AX-Injected:_yes?= <alice@example.com>")},
		{"encoded CRLF in header value", with("headers", map[string]string{"X-Campaign": "=?utf-8?b?YQ0KWC1JbmplY3RlZDogeWVz?="})},
		{"encoded CRLF in filename", with("attachments", att("filename", "=?utf-8?q?a=0D=0AX-Injected:_yes?="))},
		{"RFC 2231 CRLF in filename", with("attachments", att("content_type", "text/plain; name*=utf-8''a%0D%0AX-Injected:%20yes"))},
		{"U+2028 in subject", with("subject", "Hi\u2028X-Injected: yes")},
		{"U+0085 in subject", with("subject", "Hi\u0085X-Injected: yes")},
		{"U+2029 in display name", with("from", "Alice\u2029X-Injected: yes <alice@example.com>")},
		{"fold-like run in subject", with("subject", "Hi \tX-Injected: yes")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := h.post(tt.body, nil)
			switch r.status {
			case http.StatusUnprocessableEntity:
				r.problem(t)
			case http.StatusAccepted:
				var sent sendAnswer
				r.json(t, &sent)
				if ps := wireProblems(h.storedBody(sent.ID), "X-Injected"); len(ps) > 0 {
					t.Errorf("stored message: %v\n%s", ps, h.storedBody(sent.ID))
				}
			default:
				t.Fatalf("status %d: %s", r.status, r.body)
			}
		})
	}
}

// TestSmuggling: end-of-data look-alikes in text, html and raw bodies are
// stored as CRLF lines only, so the SMTP client's dot-stuffing (relay
// TestBodyIntact) makes them plain text at every receiver.
func TestSmuggling(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	payload := "a\n.\nMAIL FROM:<x@evil.test>\n" + "b\r\n.\r\nRCPT TO:<y@evil.test>\r\n" +
		"c\r.\rDATA\r" + "d\n.\r\ne\r\n.\nf\r\r\n.\r\n" + "..double\r\n.\r\n"
	want := "a\r\n.\r\nMAIL FROM:<x@evil.test>\r\n" + "b\r\n.\r\nRCPT TO:<y@evil.test>\r\n" +
		"c\r\n.\r\nDATA\r\n" + "d\r\n.\r\ne\r\n.\r\nf\r\n\r\n.\r\n" + "..double\r\n.\r\n"
	for _, tt := range []struct {
		name string
		body any
	}{
		{"text", with("text", payload)},
		{"html", with("text", nil, "html", payload)},
		{"text and html", with("html", payload, "text", payload)},
		{"raw", map[string]any{"raw": b64("From: alice@example.com\nTo: bob@example.net\nSubject: s\n\n" + payload)}},
		{"raw with bare CR header", map[string]any{"raw": b64("From: alice@example.com\rTo: bob@example.net\r\r" + payload)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := h.messageCount()
			r := h.post(tt.body, nil)
			if r.status != http.StatusAccepted {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			var sent sendAnswer
			r.json(t, &sent)
			if len(sent.Recipients) != 1 || sent.Recipients[0].Email != "bob@example.net" {
				t.Errorf("recipients %+v: the payload added some", sent.Recipients)
			}
			body := h.storedBody(sent.ID)
			if ps := wireProblems(body, ""); len(ps) > 0 {
				t.Errorf("stored message: %v\n%q", ps, body)
			}
			if !bytes.Contains(body, []byte(want)) {
				t.Errorf("stored body does not hold the payload as CRLF lines:\n%q\nwant it to contain\n%q", body, want)
			}
			if n := h.messageCount(); n != before+1 {
				t.Errorf("%d messages stored, want one more than %d", n, before)
			}
		})
	}
}

// TestAddressLiterals: mail addressed to an IP address, in any spelling,
// is refused at the API (422), so it never reaches the relay, whose guard
// would have to judge the address (RFC 5321 4.1.3: we route by MX only).
func TestAddressLiterals(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	literals := []string{
		"user@[127.0.0.1]", "Bob <bob@[127.0.0.1]>", "user@[IPv6:::1]", "user@[IPv6:::ffff:127.0.0.1]",
		"user@[0.0.0.0]", "user@[169.254.169.254]", "user@[100.64.0.1]",
		"user@127.0.0.1", "user@127.1", "user@0177.0.0.1", "user@0x7f.0.0.1", "user@2130706433",
		"user@localhost", "user@169.254.169.254",
	}
	for _, addr := range literals {
		for _, field := range []string{"to", "cc", "bcc"} {
			t.Run(field+"/"+addr, func(t *testing.T) {
				r := h.post(with(field, []string{addr}), nil)
				if r.status != http.StatusUnprocessableEntity || !slices.Contains(r.problem(t).fields(), field+"[0]") {
					t.Fatalf("status %d, want 422 naming %s[0]; body %s", r.status, field, r.body)
				}
			})
		}
	}
	for _, tt := range []struct {
		name, field string
		body        any
	}{
		{"raw To header", "raw", map[string]any{"raw": b64("From: alice@example.com\r\nTo: user@[127.0.0.1]\r\n\r\nhi\r\n")}},
		{"raw Cc header", "raw", map[string]any{"raw": b64("From: alice@example.com\r\nTo: bob@example.net\r\nCc: user@[IPv6:::1]\r\n\r\nhi\r\n")}},
		{"raw Bcc header", "raw", map[string]any{"raw": b64("From: alice@example.com\r\nTo: bob@example.net\r\nBcc: user@[127.0.0.1]\r\n\r\nhi\r\n")}},
		{"raw envelope", "to[1]", map[string]any{"raw": b64("From: alice@example.com\r\n\r\nhi\r\n"), "to": []string{"bob@example.net", "user@[127.0.0.1]"}}},
		{"from", "from", with("from", "alice@[127.0.0.1]")},
		{"reply_to", "reply_to", with("reply_to", "help@[127.0.0.1]")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := h.post(tt.body, nil)
			if r.status != http.StatusUnprocessableEntity || !slices.Contains(r.problem(t).fields(), tt.field) {
				t.Fatalf("status %d, want 422 naming %s; body %s", r.status, tt.field, r.body)
			}
		})
	}
	if n := h.messageCount(); n != 0 {
		t.Errorf("%d messages stored", n)
	}
}

// TestLimits: the limits on a request's parts, each a 4xx naming what was
// too big, and nothing stored. Body size, recipients and JSON depth are in
// TestBadInput and TestTooLarge.
func TestLimits(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{maxMessageBytes: 4 << 20})
	headers := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[fmt.Sprintf("X-H%d", i)] = "v"
		}
		return m
	}
	metadata := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[fmt.Sprintf("k%d", i)] = "v"
		}
		return m
	}
	long := strings.Repeat("b", 999)
	okHeader := "From: alice@example.com\r\nTo: bob@example.net\r\n"
	tests := []struct {
		name   string
		body   any
		status int
		field  string
		detail string
	}{
		{"101 custom headers", with("headers", headers(101)), 422, "headers", "too many headers: 101 > 100"},
		{"header value of 2001 octets", with("headers", map[string]string{"X-Big": strings.Repeat("v", 2001)}), 422, "headers.X-Big", "2001 octets; the limit is 2000"},
		{"header name of 77 octets", with("headers", map[string]string{"X-" + strings.Repeat("n", 75): "v"}), 422, "headers.X-" + strings.Repeat("n", 75), "77 octets; the limit is 76"},
		{"raw with 1001 header fields", map[string]any{"raw": b64(okHeader + strings.Repeat("X-A: b\r\n", 999) + "\r\nhi\r\n")}, 422, "raw", "more than 1000 header fields"},
		{"raw header line of 999 octets", map[string]any{"raw": b64(okHeader + "X-Long: " + long + "\r\n\r\nhi\r\n")}, 422, "raw", "the limit is 998"},
		{"raw body line of 999 octets", map[string]any{"raw": b64(okHeader + "\r\n" + long + "\r\n")}, 422, "raw", "the limit is 998"},
		{"raw header section over 1 MiB", map[string]any{"raw": b64(okHeader + "X-Big: a\r\n" + strings.Repeat(" "+strings.Repeat("b", 900)+"\r\n", 1200) + "\r\nhi\r\n")}, 422, "raw", "larger than 1048576 octets"},
		{"51 metadata keys", with("metadata", metadata(51)), 422, "metadata", "at most 50 keys"},
		{"metadata value of 1025 octets", with("metadata", map[string]string{"k": strings.Repeat("v", 1025)}), 422, "metadata.k", "1024"},
		{"tag of 65 octets", with("tags", []string{strings.Repeat("t", 65)}), 422, "tags[0]", "64"},
		{"Idempotency-Key of 256 octets", basic(), 400, "Idempotency-Key", "255"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdr map[string]string
			if strings.HasPrefix(tt.name, "Idempotency-Key") {
				hdr = map[string]string{"Idempotency-Key": strings.Repeat("k", 256)}
			}
			r := h.post(tt.body, hdr)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d; body %s", r.status, tt.status, r.body)
			}
			p := r.problem(t)
			text := p.Detail
			for _, e := range p.Errors {
				text += "\n" + e.Detail
			}
			if !slices.Contains(p.fields(), tt.field) || !strings.Contains(text, tt.detail) {
				t.Errorf("problem names %q, want %q with %q: %s", p.fields(), tt.field, tt.detail, r.body)
			}
		})
	}
	// At the limits exactly, accepted.
	for _, tt := range []struct {
		name string
		body any
	}{
		{"100 custom headers", with("headers", headers(100))},
		{"header value of 2000 octets", with("headers", map[string]string{"X-Big": strings.Repeat("v", 2000)})},
		{"raw with 1000 header fields", map[string]any{"raw": b64(okHeader + strings.Repeat("X-A: b\r\n", 998) + "\r\nhi\r\n")}},
		{"raw line of 998 octets", map[string]any{"raw": b64(okHeader + "\r\n" + long[1:] + "\r\n")}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if r := h.post(tt.body, nil); r.status != http.StatusAccepted {
				t.Fatalf("status %d, want 202; body %s", r.status, r.body)
			}
		})
	}
	if n := h.messageCount(); n != 4 {
		t.Errorf("%d messages stored, want the 4 at the limits", n)
	}
}

// clock is a time the test moves by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestRateLimit: past MAILFERRY_RATE_LIMIT a key gets 429 with Retry-After
// and a problem naming the limit, on POST and GET alike; other keys are not
// affected; tokens come back with time.
func TestRateLimit(t *testing.T) {
	t.Parallel()
	clk := &clock{now: time.Now()}
	h := newHarness(t, harnessOptions{rateLimit: 0.5, rateBurst: 2, now: clk.Now})
	first := h.post(basic(), nil)
	if first.status != http.StatusAccepted {
		t.Fatalf("first request: %d %s", first.status, first.body)
	}
	var sent sendAnswer
	first.json(t, &sent)
	if r := h.get(sent.ID, h.key); r.status != http.StatusOK {
		t.Fatalf("second request (GET): %d %s", r.status, r.body)
	}
	limited := func(r response) {
		t.Helper()
		if r.status != http.StatusTooManyRequests {
			t.Fatalf("status %d, want 429; body %s", r.status, r.body)
		}
		p := r.problem(t)
		if p.Type != "/problems/rate-limited" || !strings.Contains(p.Detail, "0.5 requests a second") ||
			!slices.Contains(p.fields(), "MAILFERRY_RATE_LIMIT") {
			t.Errorf("problem does not name the limit: %s", r.body)
		}
		// One token a 2 s: the next one is 2 s away.
		if ra := r.header.Get("Retry-After"); ra != "2" {
			t.Errorf("Retry-After %q, want 2", ra)
		}
	}
	limited(h.post(basic(), nil))
	limited(h.get(sent.ID, h.key))
	if n := h.messageCount(); n != 1 {
		t.Errorf("%d messages stored; the refused POST stored one", n)
	}

	// Another key of the same tenant has its own bucket; no key is 401,
	// not 429: authentication comes first.
	_, other, err := h.store.CreateAPIKey(context.Background(), "acme", []string{"example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if r := h.do(http.MethodPost, "/v1/messages", other, strings.NewReader(`{"from":"a@example.com","to":["b@example.net"],"text":"x"}`), nil); r.status != http.StatusAccepted {
		t.Errorf("another key: %d %s", r.status, r.body)
	}
	if r := h.do(http.MethodGet, "/v1/messages/"+sent.ID, "", nil, nil); r.status != http.StatusUnauthorized {
		t.Errorf("no key: %d, want 401", r.status)
	}

	// Half the wait: still refused, Retry-After counts down.
	clk.add(time.Second)
	r := h.post(basic(), nil)
	if r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") != "1" {
		t.Errorf("after 1 s: %d, Retry-After %q; want 429 and 1", r.status, r.header.Get("Retry-After"))
	}
	clk.add(time.Second)
	if r := h.post(basic(), nil); r.status != http.StatusAccepted {
		t.Errorf("after 2 s: %d %s, want 202", r.status, r.body)
	}
	met := h.do(http.MethodGet, "/metrics", "", nil, nil)
	// Refused before routing, like a 401: counted under the /v1 mount.
	if want := `mailferry_http_requests_total{code="429",route="/v1/*"} 3`; !strings.Contains(string(met.body), want) {
		t.Errorf("metrics lack %s:\n%s", want, grep(string(met.body), "mailferry_http_requests_total"))
	}
}

// TestRateLimitOff: RateLimit 0 (MAILFERRY_RATE_LIMIT=0) never refuses.
func TestRateLimitOff(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	for i := range 30 {
		if r := h.get("0190c4c4-0000-7000-8000-000000000000", h.key); r.status != http.StatusNotFound {
			t.Fatalf("request %d: %d %s", i, r.status, r.body)
		}
	}
}
