package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/mailferry/mailferry/internal/testmx"
)

// TestSmugglingThroughBinary: end-of-data look-alikes — bare LF, bare CR,
// "\n.\n", "\r\n.\r\n" — in the text, the html and a raw message, POSTed
// to the binary and delivered to an SMTP server. The server reads exactly
// one message per POST, from the sender, to the recipient, with each
// payload line intact: no receiver sees an early end of data or a
// smuggled command.
func TestSmugglingThroughBinary(t *testing.T) {
	c := newCLI(t)
	dns := testmx.StartDNS(t)
	port, lns := testmx.Listen(t, "127.0.0.2")
	mx := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
	dns.MX("example.net", 10, "mx.example.net")
	dns.A("mx.example.net", "127.0.0.2")
	c.setEnv(
		"MAILFERRY_DNS_SERVER="+dns.Addr(),
		fmt.Sprintf("MAILFERRY_SMTP_PORT=%d", port),
		"MAILFERRY_ALLOW_PRIVATE_DESTINATIONS=true",
	)
	if _, stderr, err := c.run("migrate"); err != nil {
		t.Fatalf("migrate: %v %s", err, stderr)
	}
	secret, stderr, err := c.run("keys", "create", "--tenant", "acme", "--domain", "example.com")
	if err != nil {
		t.Fatalf("keys create: %v %s", err, stderr)
	}
	secret = strings.TrimSpace(secret)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	srv := startCapturing(t, c, addr)

	payload := "one\n.\nMAIL FROM:<x@evil.test>\nRCPT TO:<victim@evil.test>\nDATA\n" +
		"two\r\n.\r\nRSET\r\n" + "three\r.\rQUIT\r" + "four\n.\r\nfive\r\n.\nsix\r\r\n.\r\n" + "..dots\r\n"
	lines := []string{"one", ".", "MAIL FROM:<x@evil.test>", "RCPT TO:<victim@evil.test>", "DATA",
		"two", ".", "RSET", "three", ".", "QUIT", "four", ".", "five", ".", "six", "", ".", "..dots"}
	want := strings.Join(lines, "\r\n") + "\r\n"
	raw := "From: alice@example.com\nTo: bob@example.net\nSubject: raw\n\n" + payload
	bodies := map[string]string{
		"text": mustJSON(t, map[string]any{"from": "alice@example.com", "to": []string{"bob@example.net"}, "subject": "text", "text": payload}),
		"html": mustJSON(t, map[string]any{"from": "alice@example.com", "to": []string{"bob@example.net"}, "subject": "html", "html": payload}),
		"raw":  mustJSON(t, map[string]any{"raw": base64.StdEncoding.EncodeToString([]byte(raw))}),
	}
	ids := map[string]string{}
	for name, body := range bodies {
		status, answer := request(t, "POST", "http://"+addr+"/v1/messages", secret, body)
		if status != http.StatusAccepted {
			t.Fatalf("POST %s: %d %s", name, status, answer)
		}
		var sent struct{ ID string }
		json.Unmarshal(answer, &sent)
		ids[name] = sent.ID
	}
	call := func(method, path, key, body string) (int, []byte) {
		return request(t, method, "http://"+addr+path, key, body)
	}
	for _, id := range ids {
		waitStatus(t, call, id, secret, "delivered", srv)
	}
	srv.stop(t)

	msgs := mx.Messages()
	if len(msgs) != len(bodies) {
		t.Fatalf("the server read %d messages, want %d: one was cut short or smuggled", len(msgs), len(bodies))
	}
	for _, m := range msgs {
		if m.From != "alice@example.com" || !slices.Equal(m.To, []string{"bob@example.net"}) {
			t.Errorf("envelope %s → %v, want alice@example.com → bob@example.net", m.From, m.To)
		}
		if !bytes.Contains(m.Data, []byte(want)) {
			t.Errorf("the payload did not arrive as CRLF lines:\n%q\nwant it to contain\n%q", m.Data, want)
		}
		for i, b := range m.Data {
			if b == '\n' && (i == 0 || m.Data[i-1] != '\r') || b == '\r' && (i+1 == len(m.Data) || m.Data[i+1] != '\n') {
				t.Errorf("bare CR or LF at %d of %q", i, m.Data)
				break
			}
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
