package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
)

// pprofEnv names the variable that tells a profiling build where to serve
// net/http/pprof.
const pprofEnv = "MFBENCH_PPROF_ADDR"

// pprofSource is added to package main of the profiling build only, through
// `go build -overlay`: the repository's code is not changed, and the
// binary measured for the numbers has no such listener.
const pprofSource = `package main

import (
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
)

func init() {
	addr := os.Getenv("` + pprofEnv + `")
	if addr == "" {
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return
	}
	go http.Serve(ln, http.DefaultServeMux)
}
`

// buildMailferry builds ./cmd/mailferry of src into dir, with the pprof
// listener when pprof is set.
func buildMailferry(ctx context.Context, src, dir string, pprof bool) (string, error) {
	out := filepath.Join(dir, "mailferry")
	args := []string{"build", "-o", out}
	if pprof {
		file := filepath.Join(dir, "zz_mfbench_pprof.go")
		if err := os.WriteFile(file, []byte(pprofSource), 0o644); err != nil {
			return "", err
		}
		abs, err := filepath.Abs(filepath.Join(src, "cmd", "mailferry", "zz_mfbench_pprof.go"))
		if err != nil {
			return "", err
		}
		ov, _ := json.Marshal(map[string]map[string]string{"Replace": {abs: file}})
		ovPath := filepath.Join(dir, "overlay.json")
		if err := os.WriteFile(ovPath, ov, 0o644); err != nil {
			return "", err
		}
		args = append(args, "-overlay", ovPath)
	}
	args = append(args, "./cmd/mailferry")
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = src
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/mailferry in %s: %w\n%s", src, err, b)
	}
	return out, nil
}

func goTool() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}

// findModuleRoot walks up from the working directory to Mailferry's go.mod.
func findModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/mailferry/mailferry\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no Mailferry go.mod above the working directory; give -src")
		}
		dir = parent
	}
}

// buildRevision builds mailferry as it was at rev of the checkout src,
// from a git archive unpacked in dir, and returns the binary and the
// revision's short name.
func buildRevision(ctx context.Context, src, rev, dir string) (bin, name string, err error) {
	tree := filepath.Join(dir, "src")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		return "", "", err
	}
	archive := exec.CommandContext(ctx, "git", "-C", src, "archive", "--format=tar", rev)
	unpack := exec.CommandContext(ctx, "tar", "-x", "-C", tree)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		return "", "", err
	}
	unpack.Stdin = pipe
	var stderr bytes.Buffer
	archive.Stderr = &stderr
	if err := unpack.Start(); err != nil {
		return "", "", fmt.Errorf("tar: %w", err)
	}
	if err := archive.Run(); err != nil {
		return "", "", fmt.Errorf("git archive %s: %w: %s", rev, err, stderr.String())
	}
	if err := unpack.Wait(); err != nil {
		return "", "", fmt.Errorf("tar: %w", err)
	}
	out, err := exec.CommandContext(ctx, "git", "-C", src, "rev-parse", "--short", rev).Output()
	if err != nil {
		return "", "", fmt.Errorf("git rev-parse %s: %w", rev, err)
	}
	if bin, err = buildMailferry(ctx, tree, dir, false); err != nil {
		return "", "", err
	}
	return bin, strings.TrimSpace(string(out)), nil
}

// describe names the source measured: git describe, or "unknown".
func describe(src string) string {
	out, err := exec.Command("git", "-C", src, "describe", "--always", "--dirty").Output()
	if err != nil {
		return "unknown (not a git checkout)"
	}
	return strings.TrimSpace(string(out))
}

// profile takes a CPU profile of p after delay, saves it with a text
// summary under the results' profiles folder and sends the summary's path
// ("" on failure). The caller must receive before stopping p.
func (b *bench) profile(p *mfProc, name string, delay time.Duration) <-chan string {
	ch := make(chan string, 1)
	go func() {
		path, err := b.takeProfile(p, name, delay)
		if err != nil {
			b.progress("profile %s: %v", name, err)
		}
		ch <- path
	}()
	return ch
}

func (b *bench) takeProfile(p *mfProc, name string, delay time.Duration) (string, error) {
	if p.pprof == "" {
		return "", fmt.Errorf("binary has no pprof listener")
	}
	time.Sleep(delay)
	secs := int(b.cfg.PprofDuration.Seconds())
	c := &http.Client{Timeout: b.cfg.PprofDuration + 30*time.Second}
	resp, err := c.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", p.pprof, secs))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("pprof: HTTP %d", resp.StatusCode)
	}
	dir := filepath.Join(b.cfg.Out, "profiles")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	base := filepath.Join(dir, b.stamp+"-"+name)
	f, err := os.Create(base + ".pprof")
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return "", err
	}
	f.Close()
	var text bytes.Buffer
	fmt.Fprintf(&text, "# CPU profile of `mailferry serve --roles %s` during %s, %ds\n\n", p.roles, name, secs)
	all, err := exec.Command(goTool(), "tool", "pprof", "-top", "-cum", "-nodecount=100000", b.bin, base+".pprof").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go tool pprof: %w: %s", err, all)
	}
	bd := breakdown(name, "serve --roles "+p.roles, string(all), breakdownSpec)
	bd.Path = rel(b.cfg.Out, base+".txt")
	b.addBreakdown(bd)
	text.WriteString(bd.markdown())
	for _, mode := range [][]string{{"-top", "-nodecount=45"}, {"-top", "-cum", "-nodecount=60"}} {
		args := append([]string{"tool", "pprof"}, mode...)
		args = append(args, b.bin, base+".pprof")
		out, err := exec.Command(goTool(), args...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("go tool pprof: %w: %s", err, out)
		}
		fmt.Fprintf(&text, "## go tool pprof %s\n\n```\n%s```\n\n", strings.Join(mode, " "), out)
	}
	if err := os.WriteFile(base+".txt", text.Bytes(), 0o644); err != nil {
		return "", err
	}
	return rel(b.cfg.Out, base+".txt"), nil
}

// addBreakdown records bd; profiles finish on their own goroutines.
func (b *bench) addBreakdown(bd profileBreakdown) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rep.Breakdowns = append(b.rep.Breakdowns, bd)
}

// profileBreakdown is where a profiled process spent its CPU, by the
// functions that matter for issue 7, as shares of its samples (cum%: a
// function and everything it calls).
type profileBreakdown struct {
	Name  string         `json:"name"`
	Roles string         `json:"process"`
	Path  string         `json:"path"`
	Cores float64        `json:"cores"` // samples per second of profile: CPU cores used
	Rows  []breakdownRow `json:"rows"`
}

type breakdownRow struct {
	Label   string  `json:"label"`
	Percent float64 `json:"percent"`
}

// specRow is one row of a breakdown: the largest cum% among funcs.
type specRow struct {
	label string
	funcs []string
}

// breakdownSpec lists the rows for a mailferry process.
var breakdownSpec = []specRow{
	{"HTTP server, all (net/http conn.serve)", []string{"net/http.(*conn).serve"}},
	{"POST /v1/messages handler", []string{"api.(*server).sendMessage"}},
	{"  authenticate: one PostgreSQL query per request", []string{"store.(*Store).Authenticate"}},
	{"  decode JSON (checkDepth, map, Decoder)", []string{"api.(*server).decodeSend"}},
	{"  build the RFC 5322 message", []string{"api.(*server).build"}},
	{"  intake: group commit, wait included", []string{"intake.(*Intake).Submit"}},
	{"    PostgreSQL COPY (AcceptBatch)", []string{"store.(*Store).AcceptBatch"}},
	{"    Redis XADD (Enqueue)", []string{"queue.(*Queue).Enqueue"}},
	{"worker: one job (process)", []string{"relay.(*Worker).process"}},
	{"  SMTP transaction (Client.Deliver)", []string{"relay.(*Client).Deliver"}},
	{"    TLS handshake", []string{"crypto/tls.(*Conn).HandshakeContext"}},
	{"    greeting and EHLO (twice: before and after STARTTLS)", []string{"relay.(*session).hello"}},
	{"    MAIL, RCPT, DATA", []string{"relay.(*session).transaction"}},
	{"    sockets opened (MX connect and DNS)", []string{"net.(*Dialer).DialContext"}},
	{"  MX/A/AAAA lookups (Router.Route)", []string{"relay.(*Router).Route"}},
	{"  PostgreSQL LoadDelivery", []string{"store.(*Store).LoadDelivery"}},
	{"  PostgreSQL MarkAttempting", []string{"store.(*Store).MarkAttempting"}},
	{"  DKIM: keys, sign, save (Worker.signature)", []string{"relay.(*Worker).signature"}},
	{"    PostgreSQL ActiveDKIMKeys", []string{"store.(*Store).ActiveDKIMKeys"}},
	{"    unseal the private key", []string{"dkim.(*Sealer).Open"}},
	{"    sign (dkim.Signer.Sign)", []string{"dkim.(*Signer).Sign"}},
	{"    PostgreSQL SaveSignature", []string{"store.(*Store).SaveSignature"}},
	{"  PostgreSQL RecordOutcomes", []string{"store.(*Store).RecordOutcomes"}},
	{"  Redis Ack/Retry", []string{"queue.(*Queue).Ack", "queue.(*Queue).Retry"}},
	{"  Redis Claim", []string{"queue.(*Queue).Claim"}},
	{"JSON logs (slog)", []string{"log/slog.(*Logger).log", "log/slog.(*Logger).logAttrs", "log/slog.(*Logger).LogAttrs"}},
	{"Prometheus metrics", []string{"prometheus.(*histogram).Observe", "prometheus.(*counter).Inc"}},
	{"garbage collection (background marking)", []string{"runtime.gcBgMarkWorker"}},
	{"memory allocation (mallocgc)", []string{"runtime.mallocgc"}},
	{"system calls (all)", []string{"internal/runtime/syscall/linux.Syscall6"}},
}

// benchSpec lists the rows for mfbench itself: the world outside Mailferry.
var benchSpec = []specRow{
	{"sink MX: SMTP connections (go-smtp server)", []string{"emersion/go-smtp.(*Server).handleConn"}},
	{"  TLS handshakes (server side)", []string{"crypto/tls.(*Conn).HandshakeContext"}},
	{"  reading messages (sinkSession.Data)", []string{"main.(*sinkSession).Data"}},
	{"DNS server (miekg/dns, UDP)", []string{"miekg/dns.(*Server).serveUDP"}},
	{"load generator (HTTP client)", []string{"main.runLoad.func2"}},
	{"garbage collection (background marking)", []string{"runtime.gcBgMarkWorker"}},
	{"system calls (all)", []string{"internal/runtime/syscall/linux.Syscall6"}},
}

// breakdown reads `go tool pprof -top -cum` output.
func breakdown(name, what, top string, spec []specRow) profileBreakdown {
	bd := profileBreakdown{Name: name, Roles: what}
	cum := map[string]float64{}
	var total, dur float64
	for _, line := range strings.Split(top, "\n") {
		if i := strings.Index(line, "Total samples = "); i >= 0 {
			v, _, _ := strings.Cut(line[i+len("Total samples = "):], " ")
			if d, err := time.ParseDuration(v); err == nil {
				total = d.Seconds()
			}
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Duration: "); ok {
			v, _, _ = strings.Cut(v, ",")
			if d, err := time.ParseDuration(v); err == nil {
				dur = d.Seconds()
			}
		}
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasSuffix(f[4], "%") {
			continue
		}
		pct, err := strconv.ParseFloat(strings.TrimSuffix(f[4], "%"), 64)
		if err != nil {
			continue
		}
		cum[strings.TrimSuffix(strings.Join(f[5:], " "), " (inline)")] = pct
	}
	bd.Cores = ratio(total, dur)
	for _, row := range spec {
		best, found := 0.0, false
		for fn, pct := range cum {
			for _, want := range row.funcs {
				if fn == want || strings.HasSuffix(fn, "/"+want) {
					found = true
					best = max(best, pct)
				}
			}
		}
		if found {
			bd.Rows = append(bd.Rows, breakdownRow{Label: row.label, Percent: best})
		}
	}
	return bd
}

func (bd profileBreakdown) markdown() string {
	var w strings.Builder
	fmt.Fprintf(&w, "### %s (`%s`, %.2f cores busy while profiled)\n\n| where | share of its CPU |\n|---|---:|\n", bd.Name, bd.Roles, bd.Cores)
	for _, r := range bd.Rows {
		fmt.Fprintf(&w, "| %s | %.1f%% |\n", strings.ReplaceAll(r.Label, "  ", "&nbsp;&nbsp;"), r.Percent)
	}
	w.WriteString("\n")
	return w.String()
}

// profileSelf takes a CPU profile of mfbench itself (sink, DNS, load
// generator) after delay, like profile does for mailferry.
func (b *bench) profileSelf(name string, delay time.Duration) <-chan string {
	ch := make(chan string, 1)
	go func() {
		path, err := b.takeSelfProfile(name, delay)
		if err != nil {
			b.progress("profile %s: %v", name, err)
		}
		ch <- path
	}()
	return ch
}

func (b *bench) takeSelfProfile(name string, delay time.Duration) (string, error) {
	time.Sleep(delay)
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(b.cfg.Out, "profiles")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	base := filepath.Join(dir, b.stamp+"-"+name)
	f, err := os.Create(base + ".pprof")
	if err != nil {
		return "", err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return "", err
	}
	time.Sleep(b.cfg.PprofDuration)
	pprof.StopCPUProfile()
	f.Close()
	all, err := exec.Command(goTool(), "tool", "pprof", "-top", "-cum", "-nodecount=100000", exe, base+".pprof").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go tool pprof: %w: %s", err, all)
	}
	bd := breakdown(name, "mfbench", string(all), benchSpec)
	bd.Path = rel(b.cfg.Out, base+".txt")
	b.addBreakdown(bd)
	lines := strings.SplitAfter(string(all), "\n")
	top := strings.Join(lines[:min(len(lines), 70)], "")
	text := "# CPU profile of mfbench (sink, DNS, load generator) during " + name + "\n\n" + bd.markdown() + "```\n" + top + "```\n"
	if err := os.WriteFile(base+".txt", []byte(text), 0o644); err != nil {
		return "", err
	}
	return rel(b.cfg.Out, base+".txt"), nil
}

// rel names path from the results folder, where the report is.
func rel(dir, path string) string {
	if r, err := filepath.Rel(dir, path); err == nil {
		return r
	}
	return path
}
