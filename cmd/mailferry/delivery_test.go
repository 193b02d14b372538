package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
)

// TestDeliveryThroughBinary is the README's manual check, automated: the
// binary's dkim keygen prints the record, the DNS serves it, a POSTed
// message lands in an SMTP server's mailbox with signatures that verify,
// and GET shows delivered, 250, the MX host and the TLS version. It runs
// with PostgreSQL itself and again behind PgBouncer in transaction pooling
// mode (MAILFERRY_DATABASE_POOLER=pgbouncer, no direct URL: the key cache
// polls).
func TestDeliveryThroughBinary(t *testing.T) {
	for _, pooled := range []bool{false, true} {
		t.Run(map[bool]string{false: "postgres", true: "pgbouncer"}[pooled], func(t *testing.T) {
			testDeliveryThroughBinary(t, pooled)
		})
	}
}

func testDeliveryThroughBinary(t *testing.T, pooled bool) {
	c := newCLI(t)
	if pooled {
		direct := strings.TrimPrefix(c.env[1], "MAILFERRY_DATABASE_URL=")
		// os/exec keeps the last of repeated variables.
		c.env = append(c.env, "MAILFERRY_DATABASE_URL="+testenv.PgBouncer(t, direct), "MAILFERRY_DATABASE_POOLER=pgbouncer")
	}
	dns := testmx.StartDNS(t) // replaces newCLI's empty one below
	port, lns := testmx.Listen(t, "127.0.0.2")
	mx := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
	dns.MX("example.net", 10, "mx.example.net")
	dns.A("mx.example.net", "127.0.0.2")
	c.env = append(c.env,
		"MAILFERRY_DNS_SERVER="+dns.Addr(),
		fmt.Sprintf("MAILFERRY_SMTP_PORT=%d", port),
		"MAILFERRY_ALLOW_PRIVATE_DESTINATIONS=true",
		"MAILFERRY_SECRET_KEY="+strings.Repeat("k", 40),
	)
	if _, stderr, err := c.run("migrate"); err != nil {
		t.Fatalf("migrate: %v %s", err, stderr)
	}
	for _, alg := range []string{"rsa2048", "ed25519"} {
		out, stderr, err := c.run("dkim", "keygen", "--domain", "example.com", "--algorithm", alg, "--json")
		if err != nil {
			t.Fatalf("dkim keygen: %v %s", err, stderr)
		}
		var rec struct{ Domain, Selector, Algorithm, DNSName, DNSValue string }
		var raw map[string]string
		if err := json.Unmarshal([]byte(out), &raw); err != nil {
			t.Fatalf("keygen --json printed %q: %v", out, err)
		}
		rec.Domain, rec.Selector, rec.Algorithm, rec.DNSName, rec.DNSValue = raw["domain"], raw["selector"], raw["algorithm"], raw["dns_name"], raw["dns_value"]
		if rec.Domain != "example.com" || rec.Algorithm != alg || !strings.HasSuffix(rec.DNSName, "._domainkey.example.com") || !strings.HasPrefix(rec.DNSValue, "v=DKIM1;") {
			t.Fatalf("record %+v", raw)
		}
		dns.TXT(rec.DNSName, splitTXT(rec.DNSValue)...)
	}
	if list, _, err := c.run("dkim", "list"); err != nil || strings.Count(list, "._domainkey.example.com") != 2 {
		t.Errorf("dkim list: %v\n%s", err, list)
	}
	secret, stderr, err := c.run("keys", "create", "--tenant", "acme", "--domain", "example.com")
	if err != nil {
		t.Fatalf("keys create: %v %s", err, stderr)
	}
	secret = strings.TrimSpace(secret)

	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	srv := c.start(t, addr)
	base := "http://" + addr
	status, answer := request(t, "POST", base+"/v1/messages", secret,
		`{"from":"Alice <alice@example.com>","to":["bob@example.net"],"subject":"Hi","text":"Hello Bob"}`)
	if status != http.StatusAccepted {
		t.Fatalf("POST: %d %s", status, answer)
	}
	var sent struct {
		ID       string
		Warnings []string
	}
	json.Unmarshal(answer, &sent)
	if len(sent.Warnings) != 0 {
		t.Errorf("warnings for a domain with keys: %v", sent.Warnings)
	}
	var msg struct {
		Status string
		Events []struct {
			Type        string
			Attempt     int    `json:"attempt"`
			MXIP        string `json:"mx_ip"`
			TLSVersion  string `json:"tls_version"`
			TLSCipher   string `json:"tls_cipher"`
			TLSVerified *bool  `json:"tls_verified"`
			DurationMS  *int   `json:"duration_ms"`
		}
		Recipients []struct {
			Status     string
			SMTPCode   int    `json:"smtp_code"`
			MXHost     string `json:"mx_host"`
			TLSVersion string `json:"tls_version"`
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for msg.Status != "delivered" {
		if time.Now().After(deadline) {
			t.Fatalf("not delivered: %+v\n%s", msg, srv.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
		_, b := request(t, "GET", base+"/v1/messages/"+sent.ID, secret, "")
		json.Unmarshal(b, &msg)
	}
	r := msg.Recipients[0]
	if r.SMTPCode != 250 || r.MXHost != "mx.example.net" || !strings.HasPrefix(r.TLSVersion, "TLS1.") {
		t.Errorf("recipient %+v", r)
	}
	// Every attempt is on record with where it went and how.
	last := msg.Events[len(msg.Events)-1]
	if last.Type != "delivered" || last.Attempt != 1 || last.MXIP != "127.0.0.2" || last.TLSCipher == "" ||
		!strings.HasPrefix(last.TLSVersion, "TLS1.") || last.TLSVerified == nil || *last.TLSVerified || last.DurationMS == nil {
		t.Errorf("attempt event %+v", last)
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
	if err != nil || len(vs) != 2 {
		t.Fatalf("verify: %d signatures, %v", len(vs), err)
	}
	for _, v := range vs {
		if v.Err != nil {
			t.Errorf("signature does not verify: %v", v.Err)
		}
	}
	// A domain without a key: accepted with a warning.
	_, stderr, err = c.run("keys", "create", "--tenant", "acme", "--domain", "nokey.example")
	if err != nil {
		t.Fatal(stderr)
	}
	metrics := get(t, base+"/metrics")
	for _, want := range []string{`mailferry_deliveries_total{result="delivered"} 1`, `mailferry_queue_depth{state="ready"}`,
		`mailferry_dependency_up{dependency="redis"} 1`, `mailferry_tls_connections_total{version="TLS1.3"} 1`,
		// greeting, EHLO, STARTTLS, EHLO, MAIL+RCPT+DATA pipelined, end of data
		"mailferry_smtp_round_trips_total 6"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	srv.stop(t)
}

// splitTXT cuts a record value into DNS character-strings of at most 255
// bytes (RFC 1035 3.3.14), as a zone would publish an RSA-2048 key.
func splitTXT(v string) []string {
	var out []string
	for len(v) > 255 {
		out = append(out, v[:255])
		v = v[255:]
	}
	return append(out, v)
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return b.String()
}
