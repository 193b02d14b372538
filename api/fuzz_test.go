package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/store"
)

// FuzzSend runs a POST /v1/messages body through everything the handler
// does before the ledger: decodeSend, build and the sender check. Whatever
// the body, nothing panics; a refusal is a problem with a 4xx status that
// encodes as JSON and names its fields; an accepted message has CRLF-only
// lines of at most 998 octets, no Bcc or Resent-Bcc field, no Bcc-only
// address in its header, and only the key's domain as sender.
func FuzzSend(f *testing.F) {
	for _, s := range []string{
		`{"from":"Alice <alice@example.com>","to":["bob@example.net"],"subject":"Hi","text":"Hello"}`,
		`{"from":"alice@example.com","to":["b@example.net"],"bcc":["hidden@example.org"],"html":"<p>x</p>","headers":{"X-A":"b"},"attachments":[{"filename":"a.txt","content":"eA=="}],"tags":["t"],"metadata":{"k":"v"}}`,
		`{"raw":"RnJvbTogYWxpY2VAZXhhbXBsZS5jb20NClRvOiBib2JAZXhhbXBsZS5uZXQNCkJjYzogaGlkZGVuQGV4YW1wbGUub3JnDQoNCmhpDQo="}`,
		`{"from":"alice@example.com","to":["bob@example.net"],"subject":"a\r\nBcc: x@evil.test","text":"x"}`,
		`{"from":"alice@example.com","to":["bob@example.net"],"text":"a\n.\nMAIL FROM:<x@evil.test>\r.\r"}`,
		`{"from":"alice@example.com","to":["user@[127.0.0.1]"],"text":"x"}`,
		`{"a":{"b":{"c":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}}`,
		`{"from":"alice@example.com","to":["bob@example.net"],"text":"x","send_at":"2030-01-01T00:00:00Z"}`,
		`{"from":1}`, `[]`, `null`, `{"to":["a@example.net"]} {}`,
	} {
		f.Add([]byte(s))
	}
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	s := &server{opts: Options{
		Hostname: "relay.test", MaxMessageBytes: 1 << 20, MaxRecipients: 50,
		MaxScheduleAhead: 30 * 24 * time.Hour, Now: func() time.Time { return now },
	}}
	key := store.APIKey{ID: "kfuzz", TenantID: "acme", Domains: []string{"example.com"}}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, p := s.decodeSend(body)
		if p != nil {
			checkProblem(t, p, http.StatusBadRequest)
			return
		}
		msg, p := s.build(req)
		if p != nil {
			checkProblem(t, p, http.StatusUnprocessableEntity, http.StatusRequestEntityTooLarge)
			return
		}
		if p := allowedSender(key, msg, req.Raw.set); p != nil {
			checkProblem(t, p, http.StatusForbidden)
			return
		}
		for _, d := range msg.SenderDomains() {
			if d != "example.com" {
				t.Fatalf("accepted a message from %s", d)
			}
		}
		if len(msg.Recipients) == 0 || len(msg.Recipients) > 50 {
			t.Fatalf("%d recipients accepted", len(msg.Recipients))
		}
		head := checkWire(t, msg.Body)
		if req.Raw.set {
			return
		}
		// A Bcc address the request names nowhere else must not be in the
		// header section.
		d := req.Draft
		others := strings.ToLower(strings.Join(append(append([]string{d.From, d.ReplyTo, d.Subject}, d.To...), d.Cc...), "\n"))
		for _, v := range d.Headers {
			others += "\n" + strings.ToLower(v)
		}
		for _, b := range d.Bcc {
			a, err := mail.ParseAddress(b)
			if err != nil || strings.Contains(others, strings.ToLower(a.Addr)) {
				continue
			}
			if bytes.Contains(bytes.ToLower(head), []byte(strings.ToLower(a.Addr))) {
				t.Fatalf("the Bcc address %s is in the header:\n%s", a.Addr, head)
			}
		}
	})
}

// checkProblem fails unless p is a complete problem with one of statuses.
func checkProblem(t *testing.T, p *problem, statuses ...int) {
	t.Helper()
	ok := false
	for _, s := range statuses {
		ok = ok || p.Status == s
	}
	if !ok || !strings.HasPrefix(p.Type, "/problems/") || p.Title == "" || p.Detail == "" {
		t.Fatalf("problem %+v, want status in %v with type, title and detail", p, statuses)
	}
	for _, e := range p.Errors {
		// Field may be "": an unknown field can be the JSON key "".
		if e.Detail == "" {
			t.Fatalf("problem %+v: an error without a detail", p)
		}
	}
	b, err := json.Marshal(p)
	if err != nil || !json.Valid(b) || !utf8.Valid(b) {
		t.Fatalf("problem %+v does not encode: %v", p, err)
	}
}

// checkWire fails unless b is CRLF-only, with lines of at most 998 octets,
// a final CRLF and no Bcc, Resent-Bcc or Return-Path field; it returns the
// header section.
func checkWire(t *testing.T, b []byte) []byte {
	t.Helper()
	if !bytes.HasSuffix(b, []byte("\r\n")) {
		t.Fatalf("message does not end in CRLF: %q", b)
	}
	head, _, found := bytes.Cut(b, []byte("\r\n\r\n"))
	if !found {
		t.Fatalf("no end of the header section: %q", b)
	}
	for i, line := range bytes.Split(b[:len(b)-2], []byte("\r\n")) {
		if j := bytes.IndexAny(line, "\r\n"); j >= 0 {
			t.Fatalf("line %d: bare CR or LF: %q", i+1, line)
		}
		if len(line) > 998 {
			t.Fatalf("line %d: %d octets", i+1, len(line))
		}
	}
	for _, line := range bytes.Split(head, []byte("\r\n")) {
		name, _, _ := bytes.Cut(line, []byte(":"))
		switch strings.ToLower(strings.TrimRight(string(name), " \t")) {
		case "bcc", "resent-bcc", "return-path":
			t.Fatalf("header field %q in the message:\n%s", line, head)
		}
	}
	return head
}

// FuzzBatch runs a POST /v1/messages/batch body through decodeBatch and
// each item through batchItem: nothing panics, a refusal of the whole
// body is a 4xx problem, and each item's refusal is one too, its fields
// named under messages[i].
func FuzzBatch(f *testing.F) {
	for _, s := range []string{
		`{"messages":[{"from":"alice@example.com","to":["bob@example.net"],"text":"x"}]}`,
		`{"messages":[{"from":"alice@example.com","to":["bob@example.net"],"text":"x"},{"from":1},{"to":[]},null,[]]}`,
		`{"messages":[]}`, `{"messages":null}`, `{"messages":[{}],"x":1}`, `{"messages":[1,2,3,4]}`, `[]`, `{} {}`,
	} {
		f.Add([]byte(s))
	}
	s := &server{opts: Options{
		Hostname: "relay.test", MaxMessageBytes: 1 << 20, MaxRecipients: 50, MaxBatch: 3,
		MaxScheduleAhead: 30 * 24 * time.Hour, Now: time.Now,
	}}
	key := store.APIKey{ID: "kfuzz", TenantID: "acme", Domains: []string{"example.com"}}
	f.Fuzz(func(t *testing.T, body []byte) {
		items, p := decodeBatch(body, s.opts.MaxBatch)
		if p != nil {
			checkProblem(t, p, http.StatusBadRequest, http.StatusUnprocessableEntity)
			return
		}
		if len(items) == 0 || len(items) > s.opts.MaxBatch {
			t.Fatalf("decodeBatch passed %d items", len(items))
		}
		for i, raw := range items {
			_, resp, p := s.batchItem(t.Context(), key, raw)
			if p == nil {
				if resp == nil {
					t.Fatal("no problem and no answer")
				}
				continue
			}
			q := itemProblem(p, i)
			checkProblem(t, q, http.StatusBadRequest, http.StatusUnprocessableEntity, http.StatusRequestEntityTooLarge, http.StatusForbidden)
			for _, fp := range q.Errors {
				if !strings.HasPrefix(fp.Field, "messages[") {
					t.Fatalf("item field %q not under messages[i]", fp.Field)
				}
			}
		}
	})
}
