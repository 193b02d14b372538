package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"github.com/mailferry/mailferry/internal/testmx"
)

// TestSubmissionDeliveryThroughBinary is issue 6's manual check, automated:
// swaks submits over STARTTLS with AUTH PLAIN to `mailferry serve`, the
// message lands in the recipient's MX with a DKIM signature that verifies,
// and the status endpoint shows the id from the 250 reply as delivered.
func TestSubmissionDeliveryThroughBinary(t *testing.T) {
	swaks, err := exec.LookPath("swaks")
	if err != nil {
		t.Fatalf("swaks is not installed (apt-get install -y swaks): %v", err)
	}
	c := newCLI(t)
	dns := testmx.StartDNS(t)
	port, lns := testmx.Listen(t, "127.0.0.2")
	mx := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
	dns.MX("example.net", 10, "mx.example.net")
	dns.A("mx.example.net", "127.0.0.2")
	certFile, keyFile := writeCert(t, t.TempDir(), testmx.SelfSigned(t, "relay.test"))
	submissionAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c.env = append(c.env,
		"MAILFERRY_DNS_SERVER="+dns.Addr(),
		fmt.Sprintf("MAILFERRY_SMTP_PORT=%d", port),
		"MAILFERRY_ALLOW_PRIVATE_DESTINATIONS=true",
		"MAILFERRY_SECRET_KEY="+strings.Repeat("k", 40),
		"MAILFERRY_SUBMISSION_ADDR="+submissionAddr,
		fmt.Sprintf("MAILFERRY_SUBMISSIONS_ADDR=127.0.0.1:%d", freePort(t)),
		"MAILFERRY_TLS_CERT="+certFile, "MAILFERRY_TLS_KEY="+keyFile,
	)
	if _, stderr, err := c.run("migrate"); err != nil {
		t.Fatalf("migrate: %v %s", err, stderr)
	}
	out, stderr, err := c.run("dkim", "keygen", "--domain", "example.com", "--algorithm", "ed25519", "--json")
	if err != nil {
		t.Fatalf("dkim keygen: %v %s", err, stderr)
	}
	var rec map[string]string
	if err := json.Unmarshal([]byte(out), &rec); err != nil {
		t.Fatalf("keygen --json printed %q: %v", out, err)
	}
	dns.TXT(rec["dns_name"], splitTXT(rec["dns_value"])...)
	secret, stderr, err := c.run("keys", "create", "--tenant", "acme", "--domain", "example.com")
	if err != nil {
		t.Fatalf("keys create: %v %s", err, stderr)
	}
	secret = strings.TrimSpace(secret)

	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	srv := c.start(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	transcript, err := exec.CommandContext(ctx, swaks, "--server", submissionAddr, "--tls", "--auth", "PLAIN",
		"--auth-user", "acme", "--auth-password", secret,
		"--from", "alice@example.com", "--to", "bob@example.net", "--helo", "client.test").CombinedOutput()
	if err != nil {
		t.Fatalf("swaks: %v\n%s\n%s", err, transcript, srv.logs.String())
	}
	m := regexp.MustCompile(`250 2\.0\.0 queued as ([0-9a-f-]{36})`).FindSubmatch(transcript)
	if m == nil {
		t.Fatalf("no id in the 250 reply:\n%s", transcript)
	}
	id := string(m[1])

	var msg struct {
		Status     string
		Recipients []struct {
			Status   string
			SMTPCode int `json:"smtp_code"`
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for msg.Status != "delivered" {
		if time.Now().After(deadline) {
			t.Fatalf("not delivered: %+v\n%s", msg, srv.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
		_, b := request(t, "GET", "http://"+addr+"/v1/messages/"+id, secret, "")
		json.Unmarshal(b, &msg)
	}
	got := mx.Messages()
	if len(got) != 1 {
		t.Fatalf("mailbox holds %d messages", len(got))
	}
	vs, err := msgauth.VerifyWithOptions(bytes.NewReader(got[0].Data), &msgauth.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, dns.Addr())
		}}
		return res.LookupTXT(context.Background(), name)
	}})
	if err != nil || len(vs) != 1 || vs[0].Err != nil {
		t.Fatalf("verify: %v %+v", err, vs)
	}
	metrics := get(t, "http://"+addr+"/metrics")
	for _, want := range []string{`mailferry_messages_accepted_total{ingress="smtp"} 1`, `mailferry_smtp_sessions_total{listener="submission"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	srv.stop(t)
}
