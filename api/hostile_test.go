package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// This file holds the API's tests for issue 18 (hostile input): answers
// that must not grow with the request, addresses that must be refused
// rather than accepted and bounced, and Idempotency-Key misuse.

// unknownKeysBody is basic() plus n unknown top-level keys "u0000000"…,
// each with a value, written out by hand: a map of a million entries
// would cost the test more than the server.
func unknownKeysBody(n int, value string) []byte {
	var b bytes.Buffer
	b.WriteString(`{"from":"alice@example.com","to":["bob@example.net"],"subject":"Hi","text":"Hello"`)
	for i := range n {
		fmt.Fprintf(&b, `,"u%07d":%s`, i, value)
	}
	b.WriteString("}")
	return b.Bytes()
}

// TestUnknownFieldsBounded: a body of many unknown keys, or of one very
// long one, gets a 400 of a few kilobytes that names the first 20 in sort
// order and says how many more there are (issue 18 item 10: 32 MB of
// unknown keys once drew a 150 MB answer).
func TestUnknownFieldsBounded(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{maxMessageBytes: 26 << 20})
	longName := strings.Repeat("\x01", 1<<20) // %q and JSON escaping each multiply it
	tests := []struct {
		name      string
		body      []byte
		wantNames []string // the fields named, in order
		wantMore  string   // text the detail must hold ("" for none)
	}{
		{"one", unknownKeysBody(1, "1"), []string{"u0000000"}, ""},
		{"twenty", unknownKeysBody(20, "1"), names(0, 20), ""},
		{"twenty-one", unknownKeysBody(21, "1"), names(0, 20), "and 1 more unknown fields"},
		{"a million in 32 MB", unknownKeysBody(1_000_000, `[1,{"a":"b"},"ccc"]`), names(0, 20), "and 999980 more unknown fields"},
		{"reverse order", []byte(`{"zz":1,"yy":2,"u0000001":3,"u0000000":4,"from":"a@example.com"}`), []string{"u0000000", "u0000001", "yy", "zz"}, ""},
		{"repeated key", []byte(`{"tos":1,"tos":2,"tos":3}`), []string{"tos"}, ""},
		{"one key of 1 MiB", []byte(`{"` + jsonEscape(longName) + `":1}`), nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := h.post(tt.body, nil)
			if r.status != http.StatusBadRequest {
				t.Fatalf("status %d, want 400; body %.500s", r.status, r.body)
			}
			if len(r.body) > 8<<10 {
				t.Fatalf("answer of %d bytes to a body of %d bytes; want at most 8 KiB", len(r.body), len(tt.body))
			}
			t.Logf("%d-byte answer to a %d-byte body", len(r.body), len(tt.body))
			p := r.problem(t)
			if p.Type != "/problems/unknown-fields" {
				t.Errorf("type %q", p.Type)
			}
			got := p.fields()
			if tt.wantNames == nil { // the long name: one field, cut short
				if len(got) != 1 || len(got[0]) > 80 || !strings.HasSuffix(got[0], "…") {
					t.Errorf("fields %q, want one name cut short", got)
				}
			} else if !slices.Equal(got, tt.wantNames) {
				t.Fatalf("fields %q, want %q", got, tt.wantNames)
			}
			for _, n := range got {
				if !strings.Contains(p.Detail, fmt.Sprintf("%q", n)) {
					t.Errorf("detail %q does not name %q", p.Detail, n)
				}
			}
			if tt.wantMore != "" && !strings.Contains(p.Detail, tt.wantMore) {
				t.Errorf("detail %q, want it to say %q", p.Detail, tt.wantMore)
			}
			if tt.wantMore == "" && strings.Contains(p.Detail, "more") {
				t.Errorf("detail %q counts more fields than there are", p.Detail)
			}
		})
	}
}

func names(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("u%07d", i))
	}
	return out
}

// jsonEscape writes control characters as JSON \u escapes.
func jsonEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r < 0x20 {
			fmt.Fprintf(&b, `\u%04x`, r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// TestQuotedLocalPartsRefused: a local part the relay would not send is
// refused with 422 naming the field, rather than accepted with 202 and
// bounced as bad syntax (issue 18 item 11); one it sends is accepted.
func TestQuotedLocalPartsRefused(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	tests := []struct {
		name  string
		body  any
		field string // "" for a 202
	}{
		{"to with <", with("to", []string{`"a<b"@example.com`}), "to[0]"},
		{"cc with >", with("cc", []string{"carol@example.net", `"x>y"@example.net`}), "cc[1]"},
		{"bcc with an address inside", with("bcc", []string{`"<bob@evil.test>"@example.net`}), "bcc[0]"},
		{"from with <", with("from", `Alice <"a<b"@example.com>`), "from"},
		{"reply_to with >", with("reply_to", `"x>y"@example.com`), "reply_to"},
		{"raw To with <", map[string]any{"raw": b64("From: alice@example.com\r\nTo: \"a<b\"@example.com\r\n\r\nhi\r\n")}, "raw"},
		{"raw envelope with >", map[string]any{"raw": b64("From: alice@example.com\r\nTo: bob@example.net\r\n\r\nhi\r\n"), "to": []string{`"x>y"@example.net`}}, "to[0]"},
		{"quoted with a space", with("to", []string{`"a b"@example.net`}), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := h.post(tt.body, nil)
			if tt.field == "" {
				if r.status != http.StatusAccepted {
					t.Fatalf("status %d, want 202; body %s", r.status, r.body)
				}
				return
			}
			if r.status != http.StatusUnprocessableEntity {
				t.Fatalf("status %d, want 422 naming %s; body %s", r.status, tt.field, r.body)
			}
			p := r.problem(t)
			if !slices.ContainsFunc(p.fields(), func(f string) bool { return f == tt.field || strings.HasPrefix(f, tt.field+".") }) {
				t.Errorf("422 names %q, want %q; body %s", p.fields(), tt.field, r.body)
			}
			if !strings.Contains(string(r.body), `\"\u003c\" or \"\u003e\"`) {
				t.Errorf("the problem does not say what is wrong with the address: %s", r.body)
			}
		})
	}
	if n := h.messageCount(); n != 1 {
		t.Errorf("%d messages stored, want only the one accepted", n)
	}
}

// TestIdempotencyKeyMisuse: a key reused with a different body is a 409
// (issue 18 item 13; it was a 422), and a key that is blank, given twice,
// too long or not ASCII is a 400 naming the header; without the header
// the request is simply not idempotent.
func TestIdempotencyKeyMisuse(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	first := h.post(basic(), map[string]string{"Idempotency-Key": "order-7"})
	if first.status != http.StatusAccepted {
		t.Fatalf("first: %d %s", first.status, first.body)
	}
	reused := h.post(with("subject", "another"), map[string]string{"Idempotency-Key": "order-7"})
	if reused.status != http.StatusConflict {
		t.Fatalf("key reused with another body: %d, want 409; body %s", reused.status, reused.body)
	}
	if p := reused.problem(t); p.Type != "/problems/idempotency-key-reused" || !slices.Contains(p.fields(), "Idempotency-Key") {
		t.Errorf("409 of type %q naming %q, want idempotency-key-reused naming Idempotency-Key", p.Type, p.fields())
	}
	for _, tt := range []struct {
		name   string
		values []string // the header's values, each sent as its own line
		detail string
	}{
		{"empty", []string{""}, "blank"},
		{"spaces", []string{"    "}, "blank"},
		{"tab", []string{"\t"}, "blank"},
		{"twice", []string{"order-8", "order-9"}, "given 2 times"},
		{"256 octets", []string{strings.Repeat("k", 256)}, "the limit is 255"},
		{"not ASCII", []string{"clé"}, "printable ASCII"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := h.postHeader(basic(), http.Header{"Idempotency-Key": tt.values})
			if r.status != http.StatusBadRequest {
				t.Fatalf("status %d, want 400; body %s", r.status, r.body)
			}
			p := r.problem(t)
			if !slices.Contains(p.fields(), "Idempotency-Key") || !strings.Contains(string(r.body), tt.detail) {
				t.Errorf("400 names %q, want Idempotency-Key and %q: %s", p.fields(), tt.detail, r.body)
			}
		})
	}
	if n := h.messageCount(); n != 1 {
		t.Errorf("%d messages stored, want only the first", n)
	}
	for i := range 2 { // no header: two sends, two messages
		if r := h.post(basic(), nil); r.status != http.StatusAccepted {
			t.Fatalf("send %d without a key: %d %s", i, r.status, r.body)
		}
	}
	if n := h.messageCount(); n != 3 {
		t.Errorf("%d messages stored, want 3", n)
	}
}

// postHeader posts body with header as given: several values of one
// field are sent as several lines, which post's map cannot say.
func (h *harness) postHeader(body any, header http.Header) response {
	h.t.Helper()
	j, err := json.Marshal(body)
	if err != nil {
		h.t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, h.srv.URL+"/v1/messages", bytes.NewReader(j))
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header = header.Clone()
	req.Header.Set("Authorization", "Bearer "+h.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := h.srv.Client().Do(req)
	if err != nil {
		h.t.Fatalf("POST /v1/messages: %v", err)
	}
	b := readBody(h.t, resp)
	h.spec.validate(h.t, http.MethodPost, "/v1/messages", resp, b)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}
