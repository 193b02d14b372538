package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"
	miekgdns "github.com/miekg/dns"

	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/wait"
)

// dkimpyVerify is the independent verifier: Debian's python3-dkim
// (dkimpy), asking the test DNS server through dnspython. It prints the
// selector of each signature that verifies.
const dkimpyVerify = `import sys, dkim, dns.resolver
host, port = sys.argv[1].rsplit(':', 1)
r = dns.resolver.Resolver(configure=False)
r.nameservers = [host]
r.port = int(port)
def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    try:
        ans = r.resolve(name, 'TXT', lifetime=timeout)
    except Exception:
        return None
    for rr in ans:
        return b''.join(rr.strings)
    return None
msg = open(sys.argv[2], 'rb').read()
d = dkim.DKIM(msg)
n = sum(1 for h in d.headers if h[0].lower() == b'dkim-signature')
for i in range(n):
    ok = d.verify(idx=i, dnsfunc=dnsfunc)
    print(('ok ' if ok else 'FAIL ') + d.selector.decode())
`

// TestDKIMRotationThroughBinary onboards a domain with delegated DKIM and
// rotates its keys: mail signed before the rotation, during it (new key
// not yet in DNS) and after the switch verifies with go-msgauth and with
// dkimpy, once the switch is done and both generations are published.
func TestDKIMRotationThroughBinary(t *testing.T) {
	const zone = "dkim.relay.test"
	c := newCLI(t)
	zoneAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	dns := testmx.StartDNS(t)
	port, lns := testmx.Listen(t, "127.0.0.2")
	mx := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
	dns.MX("example.net", 10, "mx.example.net")
	dns.A("mx.example.net", "127.0.0.2")
	c.env = append(c.env,
		"MAILFERRY_DNS_SERVER="+dns.Addr(),
		fmt.Sprintf("MAILFERRY_SMTP_PORT=%d", port),
		"MAILFERRY_ALLOW_PRIVATE_DESTINATIONS=true",
		"MAILFERRY_SECRET_KEY="+strings.Repeat("k", 40),
		"MAILFERRY_DKIM_ZONE="+zone,
		"MAILFERRY_SPF_INCLUDE=spf.relay.test",
		"MAILFERRY_REQUIRE_VERIFIED_DOMAIN=true",
		"MAILFERRY_DKIM_ZONE_ADDR="+zoneAddr,
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
	srv := c.start(t, addr)
	base := "http://" + addr

	status, body := request(t, "POST", base+"/v1/domains", secret, `{"name":"example.com"}`)
	if status != http.StatusCreated {
		t.Fatalf("POST /v1/domains: %d %s", status, body)
	}
	var dom struct {
		Status  string
		Records []struct{ Type, Name, Value, Purpose, Status string }
	}
	json.Unmarshal(body, &dom)
	// The tenant publishes the CNAMEs, once; the operator its zone.
	for _, r := range dom.Records {
		if r.Purpose == "dkim" {
			dns.CNAME(r.Name, r.Value)
		}
	}
	publishZone(t, c, dns)
	if s := domainStatus(t, base, secret); s != "verified" {
		t.Fatalf("domain %s after publishing, want verified", s)
	}

	send := func(subject string) string {
		t.Helper()
		status, answer := request(t, "POST", base+"/v1/messages", secret,
			`{"from":"Alice <alice@example.com>","to":["bob@example.net"],"subject":"`+subject+`","text":"Hello Bob"}`)
		if status != http.StatusAccepted {
			t.Fatalf("POST %s: %d %s", subject, status, answer)
		}
		var sent struct{ ID string }
		json.Unmarshal(answer, &sent)
		waitDelivered(t, base, secret, sent.ID)
		return subject
	}
	send("before")

	// Rotation starts: the new keys are not in the zone yet, so the old
	// ones keep signing.
	out, stderr, err := c.run("dkim", "rotate", "--domain", "example.com")
	if err != nil || !strings.Contains(out, "mf2-rsa._domainkey.example.com") {
		t.Fatalf("dkim rotate: %v %s\n%s", err, stderr, out)
	}
	if s := domainStatus(t, base, secret); s != "verified" {
		t.Fatalf("domain %s during rotation, want verified", s)
	}
	// serve's own server for the zone (MAILFERRY_DKIM_ZONE_ADDR) has the
	// new key already; the test DNS server, standing in for resolvers
	// that have not seen it yet, does not.
	q := new(miekgdns.Msg)
	q.SetQuestion("mf2-rsa.example.com."+zone+".", miekgdns.TypeTXT)
	q.SetEdns0(4096, false)
	if resp, err := miekgdns.Exchange(q, zoneAddr); err != nil || len(resp.Answer) != 1 || !resp.Authoritative {
		t.Fatalf("zone server: %v %v", resp, err)
	}
	send("during")

	// The operator's zone serves the new keys; the next check switches
	// signing. The tenant changed nothing.
	publishZone(t, c, dns)
	domainStatus(t, base, secret)
	if list, _, err := c.run("dkim", "list"); err != nil || strings.Count(list, "retiring") != 2 || strings.Count(list, " active ") != 2 {
		t.Errorf("dkim list after the switch: %v\n%s", err, list)
	}
	// A running worker keeps opened keys for a minute (relay's key cache),
	// which the old key's published life covers; a fresh process shows
	// the switch at once.
	srv.stop(t)
	srv = c.start(t, addr)
	send("after")
	srv.stop(t)

	want := map[string][]string{
		"before": {"mf1-ed25519", "mf1-rsa"},
		"during": {"mf1-ed25519", "mf1-rsa"},
		"after":  {"mf2-ed25519", "mf2-rsa"},
	}
	msgs := mx.Messages()
	if len(msgs) != 3 {
		t.Fatalf("mailbox holds %d messages, want 3", len(msgs))
	}
	script := filepath.Join(t.TempDir(), "verify.py")
	if err := os.WriteFile(script, []byte(dkimpyVerify), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		subject := regexp.MustCompile(`(?m)^Subject: (\w+)`).FindSubmatch(m.Data)
		if subject == nil {
			t.Fatalf("no subject in %q", m.Data[:200])
		}
		name := string(subject[1])
		vs, err := msgauth.VerifyWithOptions(bytes.NewReader(m.Data), &msgauth.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
			res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, dns.Addr())
			}}
			return res.LookupTXT(context.Background(), name)
		}})
		if err != nil {
			t.Fatalf("%s: verify: %v", name, err)
		}
		sels := selectors(m.Data)
		if len(vs) != len(sels) {
			t.Fatalf("%s: %d verifications of %d signatures", name, len(vs), len(sels))
		}
		for _, v := range vs {
			if v.Err != nil || v.Domain != "example.com" {
				t.Errorf("%s: go-msgauth: signature of d=%s does not verify: %v", name, v.Domain, v.Err)
			}
		}
		if strings.Join(sels, ",") != strings.Join(want[name], ",") {
			t.Errorf("%s: signed by %v, want %v", name, sels, want[name])
		}
		// dkimpy, an independent implementation.
		file := filepath.Join(t.TempDir(), name+".eml")
		if err := os.WriteFile(file, m.Data, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("/usr/bin/python3", script, dns.Addr(), file)
		cmd.Dir = t.TempDir() // not the repository: its dkim/ would shadow the module
		res, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: dkimpy: %v\n%s (scripts/install-deps.sh installs python3-dkim)", name, err, res)
		}
		lines := strings.Fields(strings.ReplaceAll(string(res), "\n", " "))
		got := []string{}
		for i := 0; i+1 < len(lines); i += 2 {
			if lines[i] != "ok" {
				t.Errorf("%s: dkimpy: selector %s does not verify", name, lines[i+1])
			}
			got = append(got, lines[i+1])
		}
		sort.Strings(got)
		if strings.Join(got, ",") != strings.Join(want[name], ",") {
			t.Errorf("%s: dkimpy verified %v, want %v\n%s", name, got, want[name], res)
		}
	}
}

// selectors returns the s= of every DKIM-Signature field of msg, sorted.
func selectors(msg []byte) []string {
	var out []string
	for _, m := range regexp.MustCompile(`(?is)DKIM-Signature:.*?\bs=([a-z0-9-]+)`).FindAllSubmatch(msg, -1) {
		out = append(out, string(m[1]))
	}
	sort.Strings(out)
	return out
}

// publishZone puts `mailferry dkim zone`'s records into the DNS server,
// as the operator would load them into MAILFERRY_DKIM_ZONE.
func publishZone(t *testing.T, c *cli, dns *testmx.DNS) {
	t.Helper()
	out, stderr, err := c.run("dkim", "zone")
	if err != nil {
		t.Fatalf("dkim zone: %v %s", err, stderr)
	}
	quoted := regexp.MustCompile(`"([^"]*)"`)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		name := strings.TrimSuffix(strings.Fields(line)[0], ".")
		var parts []string
		for _, m := range quoted.FindAllStringSubmatch(line, -1) {
			parts = append(parts, m[1])
		}
		dns.Clear(name)
		dns.TXT(name, parts...)
	}
}

func domainStatus(t *testing.T, base, secret string) string {
	t.Helper()
	status, body := request(t, "GET", base+"/v1/domains/example.com", secret, "")
	if status != http.StatusOK {
		t.Fatalf("GET /v1/domains/example.com: %d %s", status, body)
	}
	var d struct{ Status string }
	json.Unmarshal(body, &d)
	return d.Status
}

func waitDelivered(t *testing.T, base, secret, id string) {
	t.Helper()
	wait.Within(t, 30*time.Second, "message "+id+" delivered", func() bool {
		_, b := request(t, "GET", base+"/v1/messages/"+id, secret, "")
		var m struct{ Status string }
		json.Unmarshal(b, &m)
		return m.Status == "delivered"
	})
}
