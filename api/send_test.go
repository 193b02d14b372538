package api_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func basic() map[string]any {
	return map[string]any{
		"from":    "Alice <alice@example.com>",
		"to":      []string{"bob@example.net"},
		"subject": "Hi",
		"text":    "Hello Bob",
	}
}

func with(kv ...any) map[string]any {
	m := basic()
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(m, kv[i].(string))
			continue
		}
		m[kv[i].(string)] = kv[i+1]
	}
	return m
}

func TestSendAndRead(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	r := h.post(with("to", []string{"bob@example.net", "carol@example.org"}, "cc", []string{"dave@example.net"},
		"tags", []string{"welcome"}, "metadata", map[string]string{"user_id": "42"}), nil)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	var sent sendAnswer
	r.json(t, &sent)
	mustUUID(t, sent.ID)
	if !strings.HasSuffix(sent.MessageID, "@relay.test") {
		t.Errorf("message_id %q not on the relay's host name", sent.MessageID)
	}
	if len(sent.Recipients) != 3 || sent.Warnings == nil {
		t.Fatalf("answer %s", r.body)
	}
	for _, rc := range sent.Recipients {
		if rc.Status != "queued" {
			t.Errorf("recipient %s status %q", rc.Email, rc.Status)
		}
	}
	// Read-your-writes: the GET right after the 202 finds it.
	g := h.get(sent.ID, h.key)
	if g.status != http.StatusOK {
		t.Fatalf("GET: %d %s", g.status, g.body)
	}
	var m messageAnswer
	g.json(t, &m)
	if m.Status != "pending" || len(m.Recipients) != 3 || m.MessageID != sent.MessageID {
		t.Errorf("message %s", g.body)
	}
	if len(m.Events) == 0 || m.Events[0].Type != "accepted" {
		t.Errorf("events %s", g.body)
	}
	// One job per recipient domain: example.net and example.org.
	if d := h.depth(); d.Ready != 2 || d.Scheduled != 0 {
		t.Errorf("queue depth %+v, want 2 ready", d)
	}
	met := h.do(http.MethodGet, "/metrics", "", nil, nil)
	if !strings.Contains(string(met.body), `mailferry_messages_accepted_total{ingress="api"} 1`) {
		t.Errorf("metrics do not count the message:\n%s", grep(string(met.body), "mailferry_messages_accepted_total"))
	}
	if !strings.Contains(string(met.body), `mailferry_http_requests_total{code="202",route="/v1/messages"} 1`) {
		t.Errorf("metrics do not count the request:\n%s", grep(string(met.body), "mailferry_http_requests_total"))
	}
}

func grep(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestSendRaw(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	raw := "From: alice@example.com\r\nTo: bob@example.net\r\nBcc: secret@example.org\r\nSubject: raw\r\n\r\nbody\r\n"
	r := h.post(map[string]any{"raw": base64.StdEncoding.EncodeToString([]byte(raw))}, nil)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST raw: %d %s", r.status, r.body)
	}
	var sent sendAnswer
	r.json(t, &sent)
	var emails []string
	for _, rc := range sent.Recipients {
		emails = append(emails, rc.Email)
	}
	// Envelope defaults to To, Cc and Bcc of the message.
	if !slices.Equal(emails, []string{"bob@example.net", "secret@example.org"}) {
		t.Errorf("recipients %v", emails)
	}
	var body []byte
	if err := h.db.QueryRow(context.Background(), "SELECT body FROM messages WHERE id = $1", sent.ID).Scan(&body); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.ToLower(string(body)), "bcc:") || strings.Contains(string(body), "secret@example.org") {
		t.Errorf("stored body keeps Bcc:\n%s", body)
	}
}

func TestScheduledSend(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	at := time.Now().Add(2 * time.Hour).UTC().Truncate(time.Second)
	r := h.post(with("send_at", at.Format(time.RFC3339)), nil)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	if d := h.depth(); d.Scheduled != 1 || d.Ready != 0 {
		t.Errorf("depth %+v, want 1 scheduled", d)
	}
	var sent sendAnswer
	r.json(t, &sent)
	var m messageAnswer
	h.get(sent.ID, h.key).json(t, &m)
	if m.Recipients[0].NextAttemptAt == nil {
		t.Fatalf("no next_attempt_at for a scheduled message")
	}
	next, err := time.Parse(time.RFC3339, *m.Recipients[0].NextAttemptAt)
	if err != nil || !next.Equal(at) {
		t.Errorf("next_attempt_at %v, want %v", *m.Recipients[0].NextAttemptAt, at)
	}
}

// TestBadInput: every refusal names what was wrong and stores nothing.
func TestBadInput(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{maxRecipients: 5})
	many := make([]string, 6)
	for i := range many {
		many[i] = fmt.Sprintf("user%d@example.net", i)
	}
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name   string
		body   any
		status int
		field  string // a field the problem must name ("" for none)
		detail string // text the detail must contain
	}{
		{"malformed JSON", `{"from": "a@example.com",`, 400, "", "JSON"},
		{"not an object", `[1,2,3]`, 400, "", "object"},
		{"empty body", ``, 400, "", ""},
		{"unknown field", with("tos", []string{"x@example.net"}), 400, "tos", "tos"},
		{"two unknown fields", with("tos", 1, "subjcet", "x"), 400, "subjcet", "tos"},
		{"unknown nested field", with("attachments", []map[string]string{{"filename": "a.txt", "content": b64("x"), "size": "1"}}), 400, "size", ""},
		{"wrong type", with("to", "bob@example.net"), 400, "to", "array"},
		{"missing from", with("from", nil), 422, "from", ""},
		{"missing to", with("to", nil), 422, "to", ""},
		{"missing body", with("text", nil), 422, "text", ""},
		{"invalid to", with("to", []string{"not an address"}), 422, "to[0]", ""},
		{"invalid cc", with("cc", []string{"bob@"}), 422, "cc[0]", ""},
		{"invalid from", with("from", "alice"), 422, "from", ""},
		{"CRLF in to", with("to", []string{"Bob\r\nBcc: x@evil.test"}), 422, "to[0]", ""},
		{"CRLF in from", with("from", "Alice\r\nBcc: x@evil.test <alice@example.com>"), 422, "from", ""},
		{"CRLF in subject", with("subject", "Hi\r\nBcc: x@evil.test"), 422, "subject", ""},
		{"LF in subject", with("subject", "Hi\nBcc: x@evil.test"), 422, "subject", ""},
		{"CRLF in reply_to", with("reply_to", "help@example.com\r\nBcc: x@evil.test"), 422, "reply_to", ""},
		{"CRLF in header value", with("headers", map[string]string{"X-Campaign": "a\r\nBcc: x@evil.test"}), 422, "headers.X-Campaign", ""},
		{"bad header name", with("headers", map[string]string{"X Bad:": "a"}), 422, "headers.X Bad:", ""},
		{"structural header", with("headers", map[string]string{"Bcc": "x@evil.test"}), 422, "headers.Bcc", ""},
		{"CRLF in attachment filename", with("attachments", []map[string]string{{"filename": "a\r\nBcc: x@evil.test", "content": b64("x")}}), 422, "attachments[0].filename", ""},
		{"too many recipients", with("to", many), 422, "to", "too many"},
		{"bad attachment base64", with("attachments", []map[string]string{{"filename": "a.txt", "content": "!!!not base64"}}), 422, "attachments[0].content", "base64"},
		{"bad raw base64", map[string]any{"raw": "%%%"}, 422, "raw", "base64"},
		{"raw without From", map[string]any{"raw": b64("To: bob@example.net\r\nSubject: x\r\n\r\nhi\r\n")}, 422, "raw", "From"},
		{"raw with structured fields", map[string]any{"raw": b64("From: alice@example.com\r\nTo: bob@example.net\r\n\r\nhi\r\n"), "subject": "x"}, 422, "subject", "raw"},
		{"send_at too far", with("send_at", time.Now().Add(31*24*time.Hour).UTC().Format(time.RFC3339)), 422, "send_at", "30 days"},
		{"send_at not a time", with("send_at", "tomorrow"), 400, "", ""},
		{"too many tags", with("tags", []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"}), 422, "tags", ""},
		{"deep JSON", with("metadata", deep(100)), 400, "", "nested"},
		{"sender domain not allowed", with("from", "mallory@example.org"), 403, "from", "example.org"},
		{"raw From domain not allowed", map[string]any{"raw": b64("From: mallory@evil.test\r\nTo: bob@example.net\r\n\r\nhi\r\n")}, 403, "", "evil.test"},
		{"raw Sender domain not allowed", map[string]any{"raw": b64("From: alice@example.com\r\nSender: mallory@evil.test\r\nTo: bob@example.net\r\n\r\nhi\r\n")}, 403, "", "evil.test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := h.post(tt.body, nil)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d; body %s", r.status, tt.status, r.body)
			}
			p := r.problem(t)
			if tt.field != "" && !slices.Contains(p.fields(), tt.field) {
				t.Errorf("problem names fields %v, want %q; body %s", p.fields(), tt.field, r.body)
			}
			if !strings.Contains(string(r.body), tt.detail) {
				t.Errorf("problem does not mention %q: %s", tt.detail, r.body)
			}
		})
	}
	if n := h.messageCount(); n != 0 {
		t.Errorf("%d messages stored by refused requests", n)
	}
	if d := h.depth(); d.Ready+d.Scheduled != 0 {
		t.Errorf("refused requests queued jobs: %+v", d)
	}
}

func deep(n int) any {
	var v any = "x"
	for i := 0; i < n; i++ {
		v = map[string]any{"k": v}
	}
	return v
}

func TestTooLarge(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{maxMessageBytes: 64 << 10})
	t.Run("message over the limit", func(t *testing.T) {
		r := h.post(with("text", strings.Repeat("a", 80<<10)), nil)
		if r.status != http.StatusRequestEntityTooLarge {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
		if p := r.problem(t); !strings.Contains(p.Detail, "limit") {
			t.Errorf("detail %q", p.Detail)
		}
	})
	t.Run("announced body refused before reading", func(t *testing.T) {
		// Announce 50 MB, send 4 KB, and wait: the answer must come without
		// the server waiting for (or reading) the rest.
		conn, err := net.Dial("tcp", h.srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", h.key, 50<<20)
		conn.Write([]byte(`{"from":"a@example.com","text":"` + strings.Repeat("a", 4096)))
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("no answer before the body was sent: %v", err)
		}
		b := readBody(t, resp)
		h.spec.validate(t, http.MethodPost, "/v1/messages", resp, b)
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
	})
	t.Run("chunked body over the limit", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			pw.Write([]byte(`{"from":"a@example.com","to":["b@example.net"],"text":"`))
			chunk := strings.Repeat("a", 32<<10)
			for i := 0; i < 200; i++ {
				if _, err := pw.Write([]byte(chunk)); err != nil {
					return
				}
			}
			pw.Write([]byte(`"}`))
			pw.Close()
		}()
		r := h.do(http.MethodPost, "/v1/messages", h.key, pr, nil)
		pr.Close()
		if r.status != http.StatusRequestEntityTooLarge {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
	})
	if n := h.messageCount(); n != 0 {
		t.Errorf("%d messages stored", n)
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	revokedKey, revokedSecret, err := h.store.CreateAPIKey(context.Background(), "acme", []string{"example.com"})
	if err != nil {
		t.Fatal(err)
	}
	// Works before the revocation (twice: the second answer comes from
	// the key cache), refused after it as soon as PostgreSQL's NOTIFY has
	// flushed the cache: within milliseconds, polled for up to 2 s.
	for range 2 {
		if r := h.do(http.MethodPost, "/v1/messages", revokedSecret, strings.NewReader(`{}`), nil); r.status == http.StatusUnauthorized {
			t.Fatalf("fresh key refused: %s", r.body)
		}
	}
	if err := h.store.RevokeAPIKey(context.Background(), revokedKey.ID); err != nil {
		t.Fatal(err)
	}
	revokedAt := time.Now()
	for {
		r := h.do(http.MethodPost, "/v1/messages", revokedSecret, strings.NewReader(`{}`), nil)
		if r.status == http.StatusUnauthorized {
			t.Logf("revoked key refused after %s", time.Since(revokedAt))
			break
		}
		if time.Since(revokedAt) > 2*time.Second {
			t.Fatalf("revoked key still accepted 2 s after the revocation: %d %s", r.status, r.body)
		}
		time.Sleep(2 * time.Millisecond)
	}
	tests := []struct{ name, header string }{
		{"no key", ""},
		{"not bearer", "Basic " + base64.StdEncoding.EncodeToString([]byte("acme:"+h.key))},
		{"empty bearer", "Bearer "},
		{"wrong key", "Bearer mf_kaaaaaaaaaaaa_" + strings.Repeat("A", 43)},
		{"garbage", "Bearer hello"},
		{"revoked key", "Bearer " + revokedSecret},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, path := range []string{"/v1/messages", "/v1/messages/0190c4c4-0000-7000-8000-000000000000"} {
				method := http.MethodPost
				if strings.Count(path, "/") == 3 {
					method = http.MethodGet
				}
				var hdr map[string]string
				if tt.header != "" {
					hdr = map[string]string{"Authorization": tt.header}
				}
				r := h.do(method, path, "", strings.NewReader(`{}`), hdr)
				if r.status != http.StatusUnauthorized {
					t.Fatalf("%s %s: status %d: %s", method, path, r.status, r.body)
				}
				r.problem(t)
				if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("no WWW-Authenticate: Bearer header")
				}
			}
		})
	}
}

func TestTenantIsolation(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	_, other, err := h.store.CreateAPIKey(context.Background(), "globex", []string{"globex.test"})
	if err != nil {
		t.Fatal(err)
	}
	var sent sendAnswer
	h.post(basic(), nil).json(t, &sent)
	if r := h.get(sent.ID, other); r.status != http.StatusNotFound {
		t.Errorf("other tenant reads the message: %d %s", r.status, r.body)
	}
	if r := h.get(sent.ID, h.key); r.status != http.StatusOK {
		t.Errorf("own tenant: %d", r.status)
	}
	if r := h.get("not-a-uuid", h.key); r.status != http.StatusNotFound {
		t.Errorf("bad id: %d", r.status)
	}
	if r := h.get("0190c4c4-0000-7000-8000-000000000000", h.key); r.status != http.StatusNotFound {
		t.Errorf("unknown id: %d", r.status)
	}
}

func TestIdempotency(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	key := map[string]string{"Idempotency-Key": "order-42"}
	first := h.post(basic(), key)
	if first.status != http.StatusAccepted {
		t.Fatalf("first: %d %s", first.status, first.body)
	}
	second := h.post(basic(), key)
	if second.status != http.StatusAccepted || string(second.body) != string(first.body) {
		t.Errorf("repeat answered %d %s, want the first answer %s", second.status, second.body, first.body)
	}
	if n := h.messageCount(); n != 1 {
		t.Errorf("%d messages stored, want 1", n)
	}
	if d := h.depth(); d.Ready != 1 {
		t.Errorf("queue %+v, want 1 job", d)
	}
	reused := h.post(with("subject", "different"), key)
	if reused.status != http.StatusConflict {
		t.Fatalf("key reused with another body: %d %s", reused.status, reused.body)
	}
	if p := reused.problem(t); !slices.Contains(p.fields(), "Idempotency-Key") {
		t.Errorf("problem does not name the header: %s", reused.body)
	}
	// Concurrent repeats still store one message.
	var wg sync.WaitGroup
	answers := make([]response, 8)
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = h.post(basic(), map[string]string{"Idempotency-Key": "burst"})
		}()
	}
	wg.Wait()
	for _, a := range answers {
		if a.status != http.StatusAccepted || string(a.body) != string(answers[0].body) {
			t.Errorf("concurrent repeat: %d %s vs %s", a.status, a.body, answers[0].body)
		}
	}
	if n := h.messageCount(); n != 2 {
		t.Errorf("%d messages stored, want 2", n)
	}
}

// TestGroupCommit sends many messages at once: all are accepted, each once.
func TestGroupCommit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	const n = 200
	var wg sync.WaitGroup
	ids := make([]string, n)
	sem := make(chan struct{}, 32)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			r := h.post(with("to", []string{fmt.Sprintf("u%d@d%d.example.net", i, i%7)}), nil)
			if r.status != http.StatusAccepted {
				t.Errorf("message %d: %d %s", i, r.status, r.body)
				return
			}
			var a sendAnswer
			r.json(t, &a)
			ids[i] = a.ID
		}()
	}
	wg.Wait()
	if got := h.messageCount(); got != n {
		t.Errorf("%d messages stored, want %d", got, n)
	}
	if d := h.depth(); d.Ready != n {
		t.Errorf("queue %+v, want %d ready", d, n)
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Errorf("id %s given twice", id)
		}
		seen[id] = true
	}
}

func TestProbes(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	if r := h.do(http.MethodGet, "/healthz", "", nil, nil); r.status != http.StatusOK {
		t.Errorf("healthz %d", r.status)
	}
	if r := h.do(http.MethodGet, "/readyz", "", nil, nil); r.status != http.StatusOK {
		t.Errorf("readyz %d %s", r.status, r.body)
	}
	if r := h.do(http.MethodGet, "/metrics", "", nil, nil); r.status != http.StatusOK || !strings.Contains(string(r.body), "mailferry_http_requests_total") {
		t.Errorf("metrics %d", r.status)
	}
}

// TestDrainingNotReady: during shutdown /readyz fails first, so load
// balancers stop sending before the listener closes.
func TestDrainingNotReady(t *testing.T) {
	t.Parallel()
	var draining atomic.Bool
	h := newHarness(t, harnessOptions{draining: draining.Load})
	if r := h.do(http.MethodGet, "/readyz", "", nil, nil); r.status != http.StatusOK {
		t.Fatalf("readyz before draining: %d", r.status)
	}
	draining.Store(true)
	r := h.do(http.MethodGet, "/readyz", "", nil, nil)
	if r.status != http.StatusServiceUnavailable || !strings.Contains(string(r.body), "draining") {
		t.Errorf("readyz while draining: %d %s", r.status, r.body)
	}
	if r := h.do(http.MethodGet, "/healthz", "", nil, nil); r.status != http.StatusOK {
		t.Errorf("healthz while draining: %d (the process is still alive)", r.status)
	}
}
