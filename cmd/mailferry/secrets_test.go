package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/internal/testlog"
	"github.com/mailferry/mailferry/internal/testmx"
)

// TestSecretsNeverShown runs Mailferry through the binary the way an
// operator and an application would — migrate, dkim keygen, keys create,
// serve, POST, delivery through MX and through an authenticating
// smarthost, GET, refused keys, bad configurations — with every log at
// debug level, and keeps everything any of it printed or answered. None of
// it may hold an API secret, a DKIM private key, MAILFERRY_SECRET_KEY, the
// database password or the smarthost password, in any encoding the scan
// knows. The one place a secret belongs, the stdout of `keys create`, is
// left out of the transcript (and used to prove the scan finds it).
func TestSecretsNeverShown(t *testing.T) {
	dbPassword := "pw" + randomText(t, 24)
	role := "mf_" + strings.ToLower(randomText(t, 10))
	createRole(t, role, dbPassword) // before newCLI: dropped after its database
	c := newCLI(t)
	dbURL := ownDatabase(t, c, role, dbPassword)
	secretKey := randomText(t, 48)
	smarthostPassword := "sh" + randomText(t, 24)

	dns := testmx.StartDNS(t)
	port, lns := testmx.Listen(t, "127.0.0.2")
	mx := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
	dns.MX("example.net", 10, "mx.example.net")
	dns.A("mx.example.net", "127.0.0.2")
	c.setEnv(
		"MAILFERRY_DATABASE_URL="+dbURL,
		"MAILFERRY_DNS_SERVER="+dns.Addr(),
		fmt.Sprintf("MAILFERRY_SMTP_PORT=%d", port),
		"MAILFERRY_ALLOW_PRIVATE_DESTINATIONS=true",
		"MAILFERRY_SECRET_KEY="+secretKey,
		"MAILFERRY_LOG_LEVEL=debug",
		"MAILFERRY_RETRY_SCHEDULE=1s",
	)

	var tr transcript
	run := func(args ...string) (string, string) {
		t.Helper()
		stdout, stderr, err := c.run(args...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, stderr)
		}
		tr.add(strings.Join(args, " ")+" stdout", stdout)
		tr.add(strings.Join(args, " ")+" stderr", stderr)
		return stdout, stderr
	}
	run("migrate")
	for _, alg := range []string{"rsa2048", "ed25519"} {
		out, _ := run("dkim", "keygen", "--domain", "example.com", "--algorithm", alg, "--json")
		var rec map[string]string
		if err := json.Unmarshal([]byte(out), &rec); err != nil {
			t.Fatalf("keygen --json printed %q: %v", out, err)
		}
		dns.TXT(rec["dns_name"], splitTXT(rec["dns_value"])...)
	}
	run("dkim", "keygen", "--domain", "example.com", "--selector", "plain", "--algorithm", "ed25519")
	run("dkim", "list")
	run("dkim", "list", "--json")

	// The secrets of keys: one that works, one revoked, and two that never
	// worked: an unknown id, and a known id with the wrong secret.
	createKey := func() (secret, id string) {
		t.Helper()
		stdout, stderr, err := c.run("keys", "create", "--tenant", "acme", "--domain", "example.com")
		if err != nil {
			t.Fatalf("keys create: %v %s", err, stderr)
		}
		tr.add("keys create stderr", stderr)
		secret = strings.TrimSpace(stdout)
		id = strings.TrimPrefix(secret, "mf_")[:13]
		if !strings.Contains(stderr, id) {
			t.Fatalf("keys create stderr %q does not name key %s", stderr, id)
		}
		return secret, id
	}
	secret, keyID := createKey()
	revoked, revokedID := createKey()
	run("keys", "revoke", revokedID)
	run("keys", "list")
	unknown := "mf_kaaaaaaaaaaaa_" + base64.RawURLEncoding.EncodeToString(randomBytes(t, 32))
	wrong := "mf_" + keyID + "_" + base64.RawURLEncoding.EncodeToString(randomBytes(t, 32))

	// Phase 1: delivery through the MX, with every kind of answer.
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	base := "http://" + addr
	srv := startCapturing(t, c, addr)
	msg := `{"from":"Alice <alice@example.com>","to":["bob@example.net"],"subject":"Hi","text":"Hello Bob"}`
	call := func(method, path, key, body string) (int, []byte) {
		t.Helper()
		status, header, b := requestFull(t, method, base+path, key, body)
		tr.add(fmt.Sprintf("%s %s %d", method, path, status), header+"\n"+string(b))
		return status, b
	}
	status, answer := call("POST", "/v1/messages", secret, msg)
	if status != http.StatusAccepted {
		t.Fatalf("POST: %d %s", status, answer)
	}
	var sent struct{ ID string }
	json.Unmarshal(answer, &sent)
	for name, key := range map[string]string{"revoked": revoked, "unknown": unknown, "wrong secret": wrong, "malformed": secret + "x"} {
		if status, b := call("POST", "/v1/messages", key, msg); status != http.StatusUnauthorized {
			t.Errorf("%s key: %d %s", name, status, b)
		}
		if status, b := call("GET", "/v1/messages/"+sent.ID, key, ""); status != http.StatusUnauthorized {
			t.Errorf("%s key, GET: %d %s", name, status, b)
		}
	}
	call("POST", "/v1/messages", secret, `{"from":"mallory@evil.test","to":["bob@example.net"],"text":"x"}`)
	call("POST", "/v1/messages", secret, `{"from":`)
	waitStatus(t, call, sent.ID, secret, "delivered", srv)
	call("GET", "/metrics", "", "")
	call("GET", "/readyz", "", "")
	if n := len(mx.Messages()); n != 1 {
		t.Fatalf("the MX received %d messages, want 1", n)
	}
	tr.add("serve (MX) logs", srv.stop(t))

	// Phase 2: through a smarthost that wants AUTH; first with a wrong
	// password (the failure is logged), then the right one.
	shPort, shLns := testmx.Listen(t, "127.0.0.3")
	cert := testmx.SelfSigned(t, "127.0.0.3")
	sh := testmx.StartSMTP(t, shLns[0], testmx.SMTPOptions{Cert: &cert, Users: map[string]string{"relay": smarthostPassword}})
	// The smarthost's certificate must verify before the relay sends AUTH;
	// the binary trusts it through SSL_CERT_FILE.
	caFile := filepath.Join(t.TempDir(), "smarthost.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	wrongPassword := "wrong" + randomText(t, 20)
	c.setEnv("SSL_CERT_FILE="+caFile, fmt.Sprintf("MAILFERRY_SMARTHOST=smtp://relay:%s@127.0.0.3:%d", wrongPassword, shPort))
	srv = startCapturing(t, c, addr)
	status, answer = call("POST", "/v1/messages", secret, msg)
	if status != http.StatusAccepted {
		t.Fatalf("POST: %d %s", status, answer)
	}
	json.Unmarshal(answer, &sent)
	waitStatus(t, call, sent.ID, secret, "deferred", srv)
	tr.add("serve (smarthost, wrong password) logs", srv.stop(t))

	c.setEnv(fmt.Sprintf("MAILFERRY_SMARTHOST=smtp://relay:%s@127.0.0.3:%d", smarthostPassword, shPort))
	srv = startCapturing(t, c, addr)
	waitStatus(t, call, sent.ID, secret, "delivered", srv)
	if got := sh.Messages(); len(got) != 1 || got[0].User != "relay" || !got[0].TLS {
		t.Fatalf("smarthost received %+v, want one message from user relay over TLS", got)
	}
	tr.add("serve (smarthost) logs", srv.stop(t))

	// Phase 3: configurations that fail, each naming what is wrong
	// without the value.
	shortSecret := randomText(t, 20)
	for _, tc := range []struct {
		name string
		env  []string
		args []string
	}{
		{"unreachable database", []string{fmt.Sprintf("MAILFERRY_DATABASE_URL=postgres://%s:%s@127.0.0.1:%d/x?connect_timeout=2", role, dbPassword, freePort(t))}, []string{"migrate"}},
		{"database URL that does not parse", []string{"MAILFERRY_DATABASE_URL=postgres://" + role + ":" + dbPassword + "@[::1/x"}, []string{"keys", "list"}},
		{"database URL of another scheme", []string{"MAILFERRY_DATABASE_URL=mysql://" + role + ":" + dbPassword + "@127.0.0.1/x"}, []string{"serve"}},
		{"short secret key", []string{"MAILFERRY_SECRET_KEY=" + shortSecret}, []string{"serve"}},
		{"smarthost of another scheme", []string{"MAILFERRY_SMARTHOST=ftp://relay:" + smarthostPassword + "@127.0.0.3:25"}, []string{"serve"}},
	} {
		cc := &cli{t: t, bin: c.bin, env: append([]string(nil), c.env...)}
		cc.setEnv(tc.env...)
		stdout, stderr, err := cc.run(tc.args...)
		if err == nil {
			t.Errorf("%s: %v succeeded", tc.name, tc.args)
		}
		tr.add(tc.name+" stdout", stdout)
		tr.add(tc.name+" stderr", stderr)
	}

	// What must never show, in every encoding the scan knows.
	var needles []needle
	for name, s := range map[string]string{"API secret": secret, "revoked API secret": revoked, "unknown API secret": unknown, "wrong API secret": wrong} {
		needles = append(needles, needle{name, s}, needle{name + " (random part)", s[len(s)-43:]})
	}
	needles = append(needles, encodings("MAILFERRY_SECRET_KEY", []byte(secretKey))...)
	needles = append(needles, needle{"a too short MAILFERRY_SECRET_KEY", shortSecret})
	needles = append(needles, needle{"database password", dbPassword}, needle{"database password (URL-escaped)", url.QueryEscape(dbPassword)})
	for name, pw := range map[string]string{"smarthost password": smarthostPassword, "wrong smarthost password": wrongPassword} {
		needles = append(needles, needle{name, pw})
		needles = append(needles, encodings(name+" in AUTH PLAIN", []byte("\x00relay\x00"+pw))...)
	}
	keys := dkimPrivateKeys(t, dbURL, secretKey)
	if len(keys) != 3 {
		t.Fatalf("%d DKIM keys in the ledger, want 3", len(keys))
	}
	for i, der := range keys {
		needles = append(needles, privateKeyNeedles(t, fmt.Sprintf("DKIM key %d", i), der)...)
	}

	// The scan must be able to fail: it finds each kind of secret where
	// it is meant to be.
	for _, control := range []struct{ name, text, want string }{
		{"keys create stdout", secret + "\n", "API secret"},
		{"a PEM dump of a DKIM key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keys[0]})), "DKIM key 0"},
		{"a %v of a DKIM key", fmt.Sprintf("%v", mustParseKey(t, keys[0])), "DKIM key 0"},
		{"the DSN", dbURL, "database password"},
	} {
		if found := scan(control.text, needles); !strings.Contains(strings.Join(found, ","), control.want) {
			t.Errorf("the scan does not find the %s in %s (found %v)", control.want, control.name, found)
		}
	}
	for _, part := range tr.parts {
		for _, n := range scan(part.text, needles) {
			t.Errorf("%s shows the %s", part.name, n)
		}
	}
	// And the transcript is the real thing: the flow ran, the smarthost
	// refused the wrong password, and mail was delivered.
	all := tr.String()
	for _, want := range []string{sent.ID, "535", "127.0.0.3", `"status":"delivered"`, "revoked", "unauthorized"} {
		if !strings.Contains(all, want) {
			t.Errorf("the transcript lacks %q: the flow did not run as meant", want)
		}
	}
}

type needle struct{ name, text string }

// scan returns the names of the needles in text. Hex needles match in
// either case.
func scan(text string, needles []needle) []string {
	lower := strings.ToLower(text)
	var found []string
	for _, n := range needles {
		if len(n.text) < 16 {
			continue // too short to mean anything; encodings() keeps long ones
		}
		if strings.Contains(text, n.text) || strings.Contains(lower, strings.ToLower(n.text)) && isHex(n.text) {
			found = append(found, n.name)
		}
	}
	return found
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

// encodings are the ways a secret of bytes gets printed: as it is, hex,
// base64 (standard and URL, padded or not), and Go's %v of a []byte.
func encodings(name string, b []byte) []needle {
	out := []needle{
		{name, string(b)},
		{name + " (hex)", hex.EncodeToString(b)},
		{name + " (base64)", strings.TrimRight(base64.StdEncoding.EncodeToString(b), "=")},
		{name + " (base64url)", base64.RawURLEncoding.EncodeToString(b)},
	}
	if list := fmt.Sprint(b); len(list) > 2 {
		out = append(out, needle{name + " (%v)", strings.TrimSuffix(list, "]")})
	}
	return out
}

// privateKeyNeedles covers a PKCS#8 key: the whole DER in each encoding,
// each PEM line that holds private bytes (the lines before it hold only
// the header and, for RSA, the public modulus, which the DNS record
// publishes anyway), and the private numbers themselves, as Go prints them.
func privateKeyNeedles(t *testing.T, name string, der []byte) []needle {
	t.Helper()
	out := encodings(name, der)
	var private [][]byte
	switch k := mustParseKey(t, der).(type) {
	case *rsa.PrivateKey:
		for _, n := range append([]*big.Int{k.D, k.Precomputed.Dp, k.Precomputed.Dq, k.Precomputed.Qinv}, k.Primes...) {
			private = append(private, n.Bytes())
			out = append(out, needle{name + " (decimal)", n.String()[:40]})
		}
	case ed25519.PrivateKey:
		private = append(private, k.Seed())
	default:
		t.Fatalf("%s: unexpected key type %T", name, k)
	}
	first := len(der)
	for _, p := range private {
		out = append(out, encodings(name+" (private number)", p)...)
		if i := bytes.Index(der, p); i >= 0 && i < first {
			first = i
		}
	}
	b64 := base64.StdEncoding.EncodeToString(der)
	for i := 0; i < len(b64); i += 64 {
		// PEM line i/64 covers DER bytes [i/4*3, (i+64)/4*3).
		if (i+64)/4*3 > first {
			out = append(out, needle{fmt.Sprintf("%s (PEM line %d)", name, i/64+1), b64[i:min(i+64, len(b64))]})
		}
	}
	return out
}

func mustParseKey(t *testing.T, der []byte) any {
	t.Helper()
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		t.Fatalf("parse PKCS#8: %v", err)
	}
	return k
}

// dkimPrivateKeys reads the sealed keys from the ledger and opens them.
func dkimPrivateKeys(t *testing.T, dbURL, secretKey string) [][]byte {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, _ := conn.Query(ctx, "SELECT private_key FROM dkim_keys ORDER BY algorithm, selector")
	blobs, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		t.Fatal(err)
	}
	sealer, err := dkim.NewSealer([]byte(secretKey))
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, b := range blobs {
		if !dkim.IsSealed(b) {
			t.Errorf("a DKIM key is stored unsealed")
		}
		der, err := sealer.Open(b)
		if err != nil {
			t.Fatalf("open sealed key: %v", err)
		}
		out = append(out, der)
	}
	return out
}

// transcript is everything the run printed and answered, by source.
type transcript struct {
	parts []struct{ name, text string }
}

func (tr *transcript) add(name, text string) {
	tr.parts = append(tr.parts, struct{ name, text string }{name, text})
}

func (tr *transcript) String() string {
	var b strings.Builder
	for _, p := range tr.parts {
		b.WriteString(p.text)
		b.WriteByte('\n')
	}
	return b.String()
}

// createRole makes a PostgreSQL login role with a password; it is dropped
// when the test ends, after any database the test creates later.
func createRole(t *testing.T, role, password string) {
	t.Helper()
	ctx := context.Background()
	admin := adminConn(t)
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", role, password)); err != nil {
		t.Fatalf("create role: %v", err)
	}
	t.Cleanup(func() {
		admin := adminConn(t)
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, "DROP ROLE IF EXISTS "+role); err != nil {
			t.Errorf("drop role %s: %v", role, err)
		}
	})
}

// ownDatabase gives the cli's database to role and returns its URL with
// the role's password in it.
func ownDatabase(t *testing.T, c *cli, role, password string) string {
	t.Helper()
	var current string
	for _, kv := range c.env {
		if v, ok := strings.CutPrefix(kv, "MAILFERRY_DATABASE_URL="); ok {
			current = v
		}
	}
	u, err := url.Parse(current)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	admin := adminConn(t)
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+strings.TrimPrefix(u.Path, "/")+" OWNER TO "+role); err != nil {
		t.Fatalf("alter database owner: %v", err)
	}
	u.User = url.UserPassword(role, password)
	return u.String()
}

func adminConn(t *testing.T) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), os.Getenv("MAILFERRY_TEST_DATABASE_URL"))
	if err != nil {
		t.Fatalf("connect to the test server as its superuser: %v", err)
	}
	return conn
}

// setEnv sets variables, replacing earlier values of the same names.
func (c *cli) setEnv(kvs ...string) {
	for _, kv := range kvs {
		name, _, _ := strings.Cut(kv, "=")
		c.env = append(filterEnv(c.env, name), kv)
	}
}

func filterEnv(env []string, name string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// captured is a running `mailferry serve` whose stdout and stderr both
// go into logs.
type captured struct {
	cmd  *exec.Cmd
	logs *testlog.Buffer
	done chan error
}

// startCapturing is cli.start with stdout kept too: everything serve
// prints goes into the logs the test scans.
func startCapturing(t *testing.T, c *cli, addr string) *captured {
	t.Helper()
	cmd := exec.Command(c.bin, "serve")
	cmd.Env = append(c.env, "MAILFERRY_HTTP_ADDR="+addr)
	s := &captured{cmd: cmd, logs: &testlog.Buffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = s.logs, s.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve not ready: %v\n%s", err, s.logs)
		}
		select {
		case err := <-s.done:
			t.Fatalf("serve exited: %v\n%s", err, s.logs)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM, expects a clean exit and returns the logs.
func (s *captured) stop(t *testing.T) string {
	t.Helper()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("serve exit after SIGTERM: %v\n%s", err, s.logs)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not stop after SIGTERM")
	}
	return s.logs.String()
}

// waitStatus polls GET until a recipient has status.
func waitStatus(t *testing.T, call func(method, path, key, body string) (int, []byte), id, key, status string, srv *captured) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, b := call("GET", "/v1/messages/"+id, key, "")
		var m struct{ Recipients []struct{ Status string } }
		json.Unmarshal(b, &m)
		if len(m.Recipients) > 0 && m.Recipients[0].Status == status {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("recipient never %s: %s\n%s", status, b, srv.logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// requestFull is request that also returns the response header, as text.
func requestFull(t *testing.T, method, url, key, body string) (int, string, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var h strings.Builder
	resp.Header.Write(&h)
	return resp.StatusCode, h.String(), b
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// randomText is n random letters and digits.
func randomText(t *testing.T, n int) string {
	const alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
	b := randomBytes(t, n)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}
