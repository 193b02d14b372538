//go:build demo

package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"
)

// What the curl command that make run prints (the README's) sends.
const (
	subject   = "Hi"
	sender    = "alice@example.com"
	recipient = "bob@example.net"
	body      = "Hello Bob"
)

// TestMakeRun runs `make run` as a developer would, in a folder and on
// ports of its own so that it leaves a developer's own make run alone.
func TestMakeRun(t *testing.T) {
	s := newStack(t)
	art := t.ArtifactDir()
	t.Logf("artifacts: %s", art)

	t.Log("first make run: installs MailDev, creates the keys")
	run := s.start(t, filepath.Join(art, "make-run-1.log"))
	s.checkJSONLogs(t, run)
	id := s.sendPrintedCurl(t, run)
	s.waitDelivered(t, id)
	mail := s.caught(t)
	s.verifyDKIM(t, mail, filepath.Join(art, "message.eml"))
	s.checkWebUI(t, art, mail)
	s.interrupt(t, run)
	s.checkNothingLeft(t, run)

	t.Log("second make run: reuses MailDev, the keys and the data")
	files := s.keyFiles(t)
	run = s.start(t, filepath.Join(art, "make-run-2.log"))
	if strings.Contains(run.output(), "installing MailDev") {
		t.Error("the second make run installed MailDev again")
	}
	if got := s.keyFiles(t); got != files {
		t.Error("the second make run changed the API, DKIM or secret key files")
	}
	s.waitDelivered(t, id) // PostgreSQL kept the message
	if got := s.caught(t); got.ID != mail.ID {
		t.Errorf("MailDev lost the mail across runs: had %s, now %s", mail.ID, got.ID)
	}

	t.Log("kill -9 of make run, devstack and run.sh, then make stop")
	s.killSupervisors(t, run)
	s.makeStop(t, filepath.Join(art, "make-stop.log"))
	s.checkNothingLeft(t, run)
}

// stack is the folder and ports the test gives make run.
type stack struct {
	root, runDir                string
	env                         []string
	httpPort, smtpPort, webPort int
	client                      *http.Client
}

func newStack(t *testing.T) *stack {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "scripts", "run.sh")); err != nil {
		t.Fatalf("not the repository root: %v", err)
	}
	s := &stack{
		root:   root,
		runDir: filepath.Join(t.TempDir(), "run"),
		// Loopback only, never through a proxy.
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}},
	}
	ports := freePorts(t, 3)
	s.httpPort, s.smtpPort, s.webPort = ports[0], ports[1], ports[2]
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		// The test's own settings only; and this is no sub-make of the
		// make that may have started the test.
		if strings.HasPrefix(k, "MAILFERRY_") || strings.HasPrefix(k, "MAILDEV_") ||
			k == "MAKEFLAGS" || k == "MFLAGS" || k == "MAKELEVEL" {
			continue
		}
		s.env = append(s.env, kv)
	}
	s.env = append(s.env,
		"MAILFERRY_HTTP_ADDR=127.0.0.1:"+strconv.Itoa(s.httpPort),
		"MAILDEV_SMTP_PORT="+strconv.Itoa(s.smtpPort),
		"MAILDEV_WEB_PORT="+strconv.Itoa(s.webPort))
	// Whatever fails, leave nothing running (and t.TempDir removable).
	t.Cleanup(func() {
		if len(leftovers(s.runDir, 0)) > 0 {
			cmd := exec.Command("make", "--no-print-directory", "-C", s.root, "stop", "RUN_DIR="+s.runDir)
			cmd.Env = s.env
			out, err := cmd.CombinedOutput()
			t.Logf("cleanup: make stop: %v\n%s", err, out)
		}
	})
	return s
}

// makeRun is one `make run` in a process group of its own, which stands in
// for the terminal's foreground group that Ctrl-C signals. Its output goes
// to a file, not a pipe, so that waiting for make does not wait for what
// it left running too.
type makeRun struct {
	cmd               *exec.Cmd
	logPath           string
	done              chan struct{}
	waitErr           error
	pgid              int
	redisPort, pgPort int
}

func (r *makeRun) output() string {
	b, _ := os.ReadFile(r.logPath)
	return string(b)
}

func (r *makeRun) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// start runs make run and waits until mailferry is ready.
func (s *stack) start(t *testing.T, logPath string) *makeRun {
	t.Helper()
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	r := &makeRun{done: make(chan struct{}), logPath: logPath}
	r.cmd = exec.Command("make", "--no-print-directory", "-C", s.root, "run", "RUN_DIR="+s.runDir)
	r.cmd.Env = s.env
	r.cmd.Stdout, r.cmd.Stderr = logFile, logFile
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("make run: %v", err)
	}
	logFile.Close()
	r.pgid = r.cmd.Process.Pid
	go func() {
		r.waitErr = r.cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		if !r.exited() {
			_ = syscall.Kill(-r.pgid, syscall.SIGINT)
			select {
			case <-r.done:
			case <-time.After(60 * time.Second):
				_ = syscall.Kill(-r.pgid, syscall.SIGKILL)
				<-r.done
			}
		}
	})

	// The first run installs MailDev from npm and creates a PostgreSQL
	// cluster; the binary is already built.
	deadline := time.Now().Add(5 * time.Minute)
	for !s.ready(r) {
		if r.exited() {
			t.Fatalf("make run exited before it was ready: %v\n%s", r.waitErr, tail(r.output(), 40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("make run not ready after %s (log: %s)\n%s", time.Since(start), logPath, tail(r.output(), 40))
		}
		time.Sleep(200 * time.Millisecond)
	}
	m := regexp.MustCompile(`devstack: redis redis://127\.0\.0\.1:(\d+)/\d+, postgres postgres://[^@\s]*@127\.0\.0\.1:(\d+)/`).
		FindStringSubmatch(r.output())
	if m == nil {
		t.Fatalf("make run printed no devstack line with the Redis and PostgreSQL ports")
	}
	r.redisPort, _ = strconv.Atoi(m[1])
	r.pgPort, _ = strconv.Atoi(m[2])
	t.Logf("make run ready in %s", time.Since(start).Round(time.Millisecond))
	return r
}

// ready: make run has printed its instructions, mailferry answers /readyz
// and MailDev its API.
func (s *stack) ready(r *makeRun) bool {
	if !strings.Contains(r.output(), "Send a message:") {
		return false
	}
	for _, u := range []string{s.api("/readyz"), s.maildev("/api/healthz")} {
		resp, err := s.client.Get(u)
		if err != nil {
			return false
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false
		}
	}
	return true
}

func (s *stack) api(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", s.httpPort, path)
}

func (s *stack) maildev(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", s.webPort, path)
}

// checkJSONLogs: with no terminal, mailferry logs JSON.
func (s *stack) checkJSONLogs(t *testing.T, r *makeRun) {
	t.Helper()
	for _, line := range strings.Split(r.output(), "\n") {
		var rec struct{ Msg string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "mailferry started" {
			return
		}
	}
	t.Errorf("no JSON log line \"mailferry started\" in make run's output (log: %s)", r.logPath)
}

// sendPrintedCurl runs the curl command make run printed, as pasted into a
// shell, and returns the id of the accepted message.
func (s *stack) sendPrintedCurl(t *testing.T, r *makeRun) string {
	t.Helper()
	m := regexp.MustCompile(`\n  (curl -s http://127\.0\.0\.1:(\d+)/v1/messages \\\n[^\n]*\\\n    -d '[^'\n]*')\n`).
		FindStringSubmatch(r.output())
	if m == nil {
		t.Fatalf("make run printed no curl command to send a message:\n%s", r.output())
	}
	if m[2] != strconv.Itoa(s.httpPort) {
		t.Fatalf("the printed curl command uses port %s, mailferry listens on %d", m[2], s.httpPort)
	}
	cmd := exec.Command("sh", "-c", m[1])
	cmd.Env = append(os.Environ(), "no_proxy=*")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("the printed curl command failed: %v\n%s\n%s", err, m[1], out)
	}
	var accepted struct {
		ID         string
		Recipients []struct{ Email, Status string }
	}
	if err := json.Unmarshal(out, &accepted); err != nil || accepted.ID == "" {
		t.Fatalf("the printed curl command got %q, want a 202 answer with an id (%v)", out, err)
	}
	if len(accepted.Recipients) != 1 || accepted.Recipients[0].Email != recipient || accepted.Recipients[0].Status != "queued" {
		t.Fatalf("recipients = %+v, want %s queued", accepted.Recipients, recipient)
	}
	t.Logf("accepted message %s", accepted.ID)
	return accepted.ID
}

// waitDelivered polls GET /v1/messages/{id} until the message is delivered.
func (s *stack) waitDelivered(t *testing.T, id string) {
	t.Helper()
	key, err := os.ReadFile(filepath.Join(s.runDir, "dev-api-key"))
	if err != nil {
		t.Fatal(err)
	}
	var msg struct {
		Status     string
		Recipients []struct {
			Email, Status, Response string
			SMTPCode                int `json:"smtp_code"`
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, s.api("/v1/messages/"+id), nil)
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(key)))
		resp, err := s.client.Do(req)
		if err != nil {
			t.Fatalf("GET /v1/messages/%s: %v", id, err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /v1/messages/%s: %s %s", id, resp.Status, raw)
		}
		if err := json.Unmarshal(raw, &msg); err != nil {
			t.Fatalf("GET /v1/messages/%s: %v: %s", id, err, raw)
		}
		switch msg.Status {
		case "delivered":
			if len(msg.Recipients) != 1 || msg.Recipients[0].Status != "delivered" || msg.Recipients[0].SMTPCode != 250 {
				t.Fatalf("message delivered, but its recipients are %s", raw)
			}
			return
		case "pending":
		default:
			t.Fatalf("message %s: %s", msg.Status, raw)
		}
		if time.Now().After(deadline) {
			t.Fatalf("message still pending after a minute: %s", raw)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// caughtMail is the part of MailDev's REST API answer the test reads.
type caughtMail struct {
	ID      string
	Subject string
	From    []struct{ Address string }
	To      []struct{ Address string }
	Source  []byte `json:"-"`
}

// caught returns the one mail MailDev holds, from its REST API, with the
// message as MailDev received it.
func (s *stack) caught(t *testing.T) caughtMail {
	t.Helper()
	var mails []caughtMail
	s.getJSON(t, s.maildev("/api/email"), &mails)
	if len(mails) != 1 {
		t.Fatalf("MailDev holds %d mails, want 1: %+v", len(mails), mails)
	}
	m := mails[0]
	if m.Subject != subject || len(m.From) != 1 || m.From[0].Address != sender || len(m.To) != 1 || m.To[0].Address != recipient {
		t.Fatalf("MailDev holds %+v, want %q from %s to %s", m, subject, sender, recipient)
	}
	resp, err := s.client.Get(s.maildev("/api/email/" + m.ID + "/source"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if m.Source, err = io.ReadAll(resp.Body); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("MailDev source of %s: %s %v", m.ID, resp.Status, err)
	}
	return m
}

func (s *stack) getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := s.client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", url, resp.Status, raw)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatalf("GET %s: %v: %s", url, err, raw)
	}
}

// verifyDKIM checks the mail's DKIM-Signature against the DNS record make
// run saved for example.com (looked up from that file, never from DNS).
func (s *stack) verifyDKIM(t *testing.T, m caughtMail, savePath string) {
	t.Helper()
	if err := os.WriteFile(savePath, m.Source, 0o644); err != nil {
		t.Fatal(err)
	}
	name, value := dkimRecord(t, filepath.Join(s.runDir, "dkim-example.com.txt"))
	lookups := 0
	vs, err := msgauth.VerifyWithOptions(bytes.NewReader(m.Source), &msgauth.VerifyOptions{
		LookupTXT: func(domain string) ([]string, error) {
			lookups++
			if domain != name {
				return nil, fmt.Errorf("no TXT record for %s in the test (want %s)", domain, name)
			}
			return []string{value}, nil
		},
	})
	if err != nil {
		t.Fatalf("DKIM verify: %v", err)
	}
	if len(vs) == 0 {
		t.Fatalf("the mail MailDev caught has no DKIM-Signature:\n%s", m.Source)
	}
	for _, v := range vs {
		if v.Err != nil || v.Domain != "example.com" {
			t.Fatalf("DKIM signature d=%s: %v (saved: %s)", v.Domain, v.Err, savePath)
		}
	}
	if lookups == 0 {
		t.Fatal("DKIM verification looked up no key")
	}
}

// dkimRecord reads the record `mailferry dkim keygen` printed:
// `NAME. IN TXT "part" "part"` (or in parentheses).
func dkimRecord(t *testing.T, path string) (name, value string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("make run saved no DKIM record: %v", err)
	}
	m := regexp.MustCompile(`(?m)^(\S+)\. IN TXT (.+)$`).FindSubmatch(raw)
	if m == nil {
		t.Fatalf("no TXT record in %s:\n%s", path, raw)
	}
	for _, part := range regexp.MustCompile(`"([^"]*)"`).FindAllSubmatch(m[2], -1) {
		value += string(part[1])
	}
	return string(m[1]), value
}

// checkWebUI opens MailDev's web UI in headless Chromium: the inbox lists
// the mail; opened, it shows sender and body; its Source tab shows the
// DKIM-Signature. Screenshots and the DOM are saved as artifacts.
func (s *stack) checkWebUI(t *testing.T, art string, m caughtMail) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b := startBrowser(t, filepath.Join(art, "chromium.log"))
	if err := b.navigate(ctx, s.maildev("/")); err != nil {
		t.Fatal(err)
	}
	// leaf finds an element showing exactly this text and nothing else.
	leaf := func(text string) string {
		return `[...document.body.querySelectorAll("*")].find(e => e.childElementCount === 0 && e.textContent.trim() === ` + jsString(text) + `)`
	}
	shows := func(text string) string {
		return `document.body.innerText.includes(` + jsString(text) + `)`
	}
	step := func(what, cond string) {
		t.Helper()
		if err := b.waitFor(ctx, what, cond); err != nil {
			s.saveDOM(t, ctx, b, filepath.Join(art, "failed.html"))
			t.Fatalf("MailDev web UI: %v (DOM saved as failed.html)", err)
		}
	}
	step("the inbox to list the mail", `!!`+leaf(subject)+` && `+shows(recipient)+` && `+shows(body))
	s.savePNG(t, ctx, b, filepath.Join(art, "inbox.png"))

	step("the mail to open", `(() => { const e = `+leaf(subject)+`; if (e) e.click(); return !!e; })()`)
	step("the open mail to show sender and body", shows("from Alice <"+sender+">")+` && `+shows(body))
	step("the Source tab", `(() => {
		const tab = [...document.querySelectorAll("button, [role=tab]")].find(e => e.textContent.trim() === "Source");
		if (tab) tab.click();
		return !!tab; })()`)
	step("the source to show the DKIM-Signature", shows("DKIM-Signature: v=1;")+` && `+shows("d=example.com;"))
	s.savePNG(t, ctx, b, filepath.Join(art, "message-source.png"))

	dom := s.saveDOM(t, ctx, b, filepath.Join(art, "dom.html"))
	for _, want := range []string{">" + subject + "<", sender, "DKIM-Signature: v=1;", "d=example.com;"} {
		if !strings.Contains(dom, want) {
			t.Errorf("MailDev's DOM lacks %q (saved as dom.html)", want)
		}
	}
}

// savePNG takes a screenshot, checks that it is a PNG of the window's size
// showing more than a blank page, and saves it.
func (s *stack) savePNG(t *testing.T, ctx context.Context, b *browser, path string) {
	t.Helper()
	data, err := b.screenshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("screenshot %s is no PNG: %v", path, err)
	}
	if got := img.Bounds(); got != image.Rect(0, 0, pageWidth, pageHeight) {
		t.Errorf("screenshot %s is %v, want %dx%d", path, got, pageWidth, pageHeight)
	}
	if n := colours(img, 50); n < 50 {
		t.Errorf("screenshot %s has %d colours: a blank page?", path, n)
	}
}

// colours counts the distinct colours in img, stopping at max.
func colours(img image.Image, max int) int {
	seen := map[[4]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, a := img.At(x, y).RGBA()
			seen[[4]uint32{r, g, bl, a}] = true
			if len(seen) >= max {
				return len(seen)
			}
		}
	}
	return len(seen)
}

func (s *stack) saveDOM(t *testing.T, ctx context.Context, b *browser, path string) string {
	t.Helper()
	dom, err := b.html(ctx)
	if err != nil {
		t.Errorf("DOM: %v", err)
		return ""
	}
	if err := os.WriteFile(path, []byte(dom), 0o644); err != nil {
		t.Error(err)
	}
	return dom
}

// interrupt is Ctrl-C: SIGINT to make run's whole process group.
func (s *stack) interrupt(t *testing.T, r *makeRun) {
	t.Helper()
	if err := syscall.Kill(-r.pgid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.done:
	case <-time.After(90 * time.Second):
		t.Fatalf("make run still running 90s after Ctrl-C:\n%s", tail(r.output(), 20))
	}
}

// keyFiles returns the files make run creates once, concatenated.
func (s *stack) keyFiles(t *testing.T) string {
	t.Helper()
	var all string
	for _, f := range []string{"dev-api-key", "dkim-example.com.txt", "secret-key"} {
		b, err := os.ReadFile(filepath.Join(s.runDir, f))
		if err != nil || len(b) == 0 {
			t.Fatalf("make run did not create %s: %v", f, err)
		}
		all += string(b)
	}
	return all
}

// killSupervisors is kill -9 of make, devstack and run.sh: mailferry,
// MailDev and PostgreSQL (which waits for mailferry's connections) stay.
func (s *stack) killSupervisors(t *testing.T, r *makeRun) {
	t.Helper()
	for _, p := range processes() {
		if p.pgid == r.pgid && p.comm != "mailferry" {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
	}
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatal("make did not die of SIGKILL")
	}
	left := leftovers(s.runDir, r.pgid)
	var names []string
	for _, p := range left {
		names = append(names, p.comm)
	}
	if !strings.Contains(strings.Join(names, " "), "mailferry") || !strings.Contains(strings.Join(names, " "), "node") {
		t.Fatalf("after kill -9 of the supervisors, want mailferry and MailDev left for make stop; left: %v", names)
	}
}

func (s *stack) makeStop(t *testing.T, logPath string) {
	t.Helper()
	cmd := exec.Command("make", "--no-print-directory", "-C", s.root, "stop", "RUN_DIR="+s.runDir)
	cmd.Env = s.env
	out, err := cmd.CombinedOutput()
	_ = os.WriteFile(logPath, out, 0o644)
	if err != nil {
		t.Fatalf("make stop: %v\n%s", err, out)
	}
}

// checkNothingLeft: no process of make run's group, none working in or
// naming its folder, and every port it used is free again.
func (s *stack) checkNothingLeft(t *testing.T, r *makeRun) {
	t.Helper()
	for _, p := range leftovers(s.runDir, r.pgid) {
		t.Errorf("still running: pid %d (%s) in %s: %s", p.pid, p.comm, p.cwd, p.cmdline)
	}
	for _, port := range []int{s.httpPort, s.smtpPort, s.webPort, r.redisPort, r.pgPort} {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			t.Errorf("port %d still taken: %v", port, err)
			continue
		}
		l.Close()
	}
}

type process struct {
	pid, pgid          int
	comm, cwd, cmdline string
}

// processes lists the live processes (not zombies) from /proc.
func processes() []process {
	entries, _ := os.ReadDir("/proc")
	var ps []process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		dir := "/proc/" + e.Name()
		stat, err := os.ReadFile(dir + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces and parens.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 3 || f[0] == "Z" {
			continue
		}
		p := process{pid: pid}
		p.pgid, _ = strconv.Atoi(f[2])
		p.comm = string(stat[bytes.IndexByte(stat, '(')+1 : i])
		p.cwd, _ = os.Readlink(dir + "/cwd")
		cl, _ := os.ReadFile(dir + "/cmdline")
		p.cmdline = strings.TrimSpace(string(bytes.ReplaceAll(cl, []byte{0}, []byte{' '})))
		ps = append(ps, p)
	}
	return ps
}

// leftovers lists processes of make run on runDir: in process group pgid
// (0: none), working in runDir (Redis, PostgreSQL) or naming it (MailDev).
func leftovers(runDir string, pgid int) []process {
	var left []process
	for _, p := range processes() {
		if (pgid != 0 && p.pgid == pgid) || p.cwd == runDir || strings.HasPrefix(p.cwd, runDir+"/") ||
			strings.Contains(p.cmdline, runDir) {
			left = append(left, p)
		}
	}
	return left
}

// freePorts returns n distinct free ports below Linux's ephemeral range
// (32768 and up), where devstack's own port picks for Redis and PostgreSQL
// (port 0) cannot land on them before MailDev and mailferry listen.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for port := 20000 + rand.IntN(10000); len(ports) < n && port < 32768; port++ {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		l.Close()
		ports = append(ports, port)
	}
	if len(ports) < n {
		t.Fatal("no free ports in 20000-32767")
	}
	return ports
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
