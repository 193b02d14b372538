package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/devstack"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// binary builds mailferry once per test.
func binary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "mailferry")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

type cli struct {
	t   *testing.T
	bin string
	env []string
}

// newCLI runs the binary against this test's own database and a DNS
// server on loopback, so no test ever asks a resolver outside.
func newCLI(t *testing.T) *cli {
	return &cli{t: t, bin: binary(t), env: []string{
		"PATH=" + os.Getenv("PATH"),
		"MAILFERRY_DATABASE_URL=" + testenv.Database(t),
		"MAILFERRY_REDIS_URL=" + testenv.RedisURL(t),
		"MAILFERRY_HOSTNAME=relay.test",
		"MAILFERRY_DNS_SERVER=" + testmx.StartDNS(t).Addr(),
		"MAILFERRY_SUBMISSION_ADDR=",
		"MAILFERRY_SUBMISSIONS_ADDR=",
	}}
}

func (c *cli) run(args ...string) (stdout, stderr string, err error) {
	c.t.Helper()
	cmd := exec.Command(c.bin, args...)
	cmd.Env = c.env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

func TestCommandLine(t *testing.T) {
	c := newCLI(t)
	if _, stderr, err := c.run("migrate"); err != nil {
		t.Fatalf("migrate: %v %s", err, stderr)
	}
	if _, stderr, err := c.run("migrate"); err != nil || !strings.Contains(stderr, "up to date") {
		t.Fatalf("second migrate: %v %s", err, stderr)
	}
	stdout, stderr, err := c.run("keys", "create", "--tenant", "acme", "--domain", "example.com", "--domain", "Example.ORG")
	if err != nil {
		t.Fatalf("keys create: %v %s", err, stderr)
	}
	// The secret alone on stdout, so `KEY=$(mailferry keys create …)` works.
	secret := strings.TrimSpace(stdout)
	if strings.Count(stdout, "\n") != 1 || strings.ContainsAny(secret, " \t") || len(secret) < 40 {
		t.Fatalf("keys create stdout %q is not the secret alone", stdout)
	}
	list, _, err := c.run("keys", "list")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(list, secret) || !strings.Contains(list, "example.org") {
		t.Errorf("keys list:\n%s", list)
	}
	id := regexp.MustCompile(`created key (\S+)`).FindStringSubmatch(stderr)
	if id == nil {
		t.Fatalf("keys create did not report the key id: %s", stderr)
	}

	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	// No worker: this test reads the message back while it is queued.
	srv := c.start(t, addr, "--roles", "api,scheduler")
	base := "http://" + addr
	body := `{"from":"Alice <alice@example.com>","to":["bob@example.net"],"subject":"Hi","text":"Hello"}`
	status, answer := request(t, "POST", base+"/v1/messages", secret, body)
	if status != http.StatusAccepted {
		t.Fatalf("POST: %d %s", status, answer)
	}
	var sent struct{ ID string }
	if err := json.Unmarshal(answer, &sent); err != nil {
		t.Fatal(err)
	}
	if status, b := request(t, "GET", base+"/v1/messages/"+sent.ID, secret, ""); status != http.StatusOK || !strings.Contains(string(b), `"status":"queued"`) {
		t.Errorf("GET: %d %s", status, b)
	}
	if _, stderr, err := c.run("keys", "revoke", id[1]); err != nil {
		t.Fatalf("revoke: %v %s", err, stderr)
	}
	// The revocation reaches the server's key cache by NOTIFY, within
	// milliseconds; two seconds is room for a loaded machine.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		status, b := request(t, "GET", base+"/v1/messages/"+sent.ID, secret, "")
		if status == http.StatusUnauthorized {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("revoked key still answered after 2s: %d %s", status, b)
			break
		}
	}
	if _, stderr, err := c.run("keys", "revoke", "knosuchkey"); err == nil || !strings.Contains(stderr, "no key") {
		t.Errorf("revoke unknown key: %v %s", err, stderr)
	}
	// An operator key manages tenants and keys over HTTP.
	admin, stderr, err := c.run("keys", "create", "--admin")
	if err != nil || !strings.Contains(stderr, "created operator key") {
		t.Fatalf("keys create --admin: %v %s", err, stderr)
	}
	admin = strings.TrimSpace(admin)
	if status, b := request(t, "POST", base+"/v1/tenants", admin, `{"id":"globex"}`); status != http.StatusCreated {
		t.Errorf("POST /v1/tenants: %d %s", status, b)
	}
	if status, b := request(t, "POST", base+"/v1/keys", admin, `{"tenant":"globex","domains":["globex.example"]}`); status != http.StatusCreated || !strings.Contains(string(b), `"secret":"mf_`) {
		t.Errorf("POST /v1/keys: %d %s", status, b)
	}
	if status, b := request(t, "POST", base+"/v1/messages", admin, body); status != http.StatusForbidden {
		t.Errorf("operator key without send POSTs a message: %d %s, want 403", status, b)
	}
	if list, _, err := c.run("keys", "list"); err != nil || !strings.Contains(list, "read,manage,admin") || !strings.Contains(list, "LAST USED") {
		t.Errorf("keys list: %v\n%s", err, list)
	}
	logs := srv.stop(t)
	if !strings.Contains(logs, sent.ID) {
		t.Errorf("logs do not carry the message id %s", sent.ID)
	}
	if strings.Contains(logs, secret) {
		t.Errorf("the API key appears in the logs")
	}
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		if !json.Valid([]byte(line)) {
			t.Errorf("log line is not JSON: %s", line)
		}
	}
}

func TestBadConfiguration(t *testing.T) {
	c := newCLI(t)
	c.env = append(c.env, "MAILFERRY_SMTP_PORT=seventy", "MAILFERRY_MAX_QUEUE_AGE=forever")
	_, stderr, err := c.run("serve")
	if err == nil {
		t.Fatal("serve started with a bad configuration")
	}
	for _, v := range []string{"MAILFERRY_SMTP_PORT", "MAILFERRY_MAX_QUEUE_AGE"} {
		if !strings.Contains(stderr, v) {
			t.Errorf("error does not name %s: %s", v, stderr)
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	c := &cli{t: t, bin: binary(t)}
	for _, args := range [][]string{{"--help"}, {"serve", "--help"}, {"migrate", "--help"}, {"keys", "--help"}, {"keys", "create", "--help"}, {"requeue", "--help"}, {"version"}} {
		stdout, stderr, err := c.run(args...)
		if err != nil || stdout == "" {
			t.Errorf("%v: %v stdout=%q stderr=%q", args, err, stdout, stderr)
		}
	}
	if _, stderr, err := c.run("frobnicate"); err == nil || !strings.Contains(stderr, "unknown command") {
		t.Errorf("unknown command: %v %s", err, stderr)
	}
	if _, _, err := c.run("keys", "create", "--tenant", "x"); err == nil {
		t.Errorf("keys create without --domain succeeded")
	}
}

type server struct {
	cmd  *exec.Cmd
	logs *bytes.Buffer
	done chan error
}

func (c *cli) start(t *testing.T, addr string, args ...string) *server {
	t.Helper()
	cmd := exec.Command(c.bin, append([]string{"serve"}, args...)...)
	cmd.Env = append(c.env, "MAILFERRY_HTTP_ADDR="+addr)
	var logs bytes.Buffer
	cmd.Stderr = &logs
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &server{cmd: cmd, logs: &logs, done: make(chan error, 1)}
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
			t.Fatalf("serve not ready: %v\n%s", err, logs.String())
		}
		select {
		case err := <-s.done:
			t.Fatalf("serve exited: %v\n%s", err, logs.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and expects a clean exit; it returns the logs.
func (s *server) stop(t *testing.T) string {
	t.Helper()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("serve exit after SIGTERM: %v\n%s", err, s.logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not stop after SIGTERM")
	}
	return s.logs.String()
}

func request(t *testing.T, method, url, key, body string) (int, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(bufio.NewReader(resp.Body))
	return resp.StatusCode, b
}

func freePort(t *testing.T) int {
	p, err := devstack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}
