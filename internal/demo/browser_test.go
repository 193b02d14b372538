//go:build demo

package demo

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// browser is headless Chromium driven over the DevTools protocol on a pipe
// (--remote-debugging-pipe: JSON messages ending in a NUL byte, commands
// on fd 3, answers and events on fd 4), so the test needs no WebSocket
// client and no browser automation package.
type browser struct {
	cmd     *exec.Cmd
	in      io.WriteCloser
	session string // the page's flattened session

	mu      sync.Mutex
	nextID  int
	pending map[int]chan cdpMessage
	closed  chan struct{} // closed when fd 4 ends
}

type cdpMessage struct {
	ID     int             `json:"id"`
	Method string          `json:"method"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// Window size of every page the test looks at.
const pageWidth, pageHeight = 1280, 900

// startBrowser starts Chromium with one blank page attached. Its output goes
// to logPath. Flags keep it off the network: nothing but 127.0.0.1 is
// reachable here, and background services would try other hosts.
func startBrowser(t *testing.T, logPath string) *browser {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not installed (make demo-test installs it): %v", err)
	}
	toChrome, ourEnd, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	fromChrome, chromeEnd, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--no-proxy-server", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
		"--user-data-dir="+t.TempDir(), "--remote-debugging-pipe",
		fmt.Sprintf("--window-size=%d,%d", pageWidth, pageHeight), "about:blank")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.ExtraFiles = []*os.File{toChrome, chromeEnd} // fd 3, fd 4
	// A group of its own, so that the cleanup ends its helper processes too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	toChrome.Close()
	chromeEnd.Close()
	logFile.Close()
	b := &browser{cmd: cmd, in: ourEnd, pending: map[int]chan cdpMessage{}, closed: make(chan struct{})}
	go b.read(fromChrome)
	t.Cleanup(func() { b.close() })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var target struct{ TargetID string }
	if err := b.call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"}, &target); err != nil {
		t.Fatalf("chromium: %v (log: %s)", err, logPath)
	}
	var attached struct{ SessionID string }
	if err := b.call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &attached); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	b.session = attached.SessionID
	if err := b.do(ctx, "Emulation.setDeviceMetricsOverride", map[string]any{
		"width": pageWidth, "height": pageHeight, "deviceScaleFactor": 1, "mobile": false,
	}, nil); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	return b
}

func (b *browser) read(r io.ReadCloser) {
	defer close(b.closed)
	defer r.Close()
	br := bufio.NewReader(r)
	for {
		raw, err := br.ReadBytes(0)
		if err != nil {
			return
		}
		var m cdpMessage
		if json.Unmarshal(raw[:len(raw)-1], &m) != nil || m.ID == 0 {
			continue // an event; the test polls instead of listening
		}
		b.mu.Lock()
		ch := b.pending[m.ID]
		delete(b.pending, m.ID)
		b.mu.Unlock()
		if ch != nil {
			ch <- m
		}
	}
}

// call sends one command, in session (or to the browser when ""), and
// decodes its result into result unless that is nil.
func (b *browser) call(ctx context.Context, session, method string, params, result any) error {
	b.mu.Lock()
	b.nextID++
	id := b.nextID
	ch := make(chan cdpMessage, 1)
	b.pending[id] = ch
	b.mu.Unlock()
	msg := map[string]any{"id": id, "method": method, "params": params}
	if session != "" {
		msg["sessionId"] = session
	}
	raw, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	if _, err := b.in.Write(append(raw, 0)); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	select {
	case m := <-ch:
		if m.Error != nil {
			return fmt.Errorf("%s: %s (%d)", method, m.Error.Message, m.Error.Code)
		}
		if result == nil {
			return nil
		}
		return json.Unmarshal(m.Result, result)
	case <-b.closed:
		return fmt.Errorf("%s: chromium closed the pipe", method)
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", method, ctx.Err())
	}
}

// do is call on the page.
func (b *browser) do(ctx context.Context, method string, params, result any) error {
	return b.call(ctx, b.session, method, params, result)
}

func (b *browser) navigate(ctx context.Context, url string) error {
	return b.do(ctx, "Page.navigate", map[string]any{"url": url}, nil)
}

// eval runs a JavaScript expression in the page (awaiting a promise) and
// decodes its value into v.
func (b *browser) eval(ctx context.Context, expr string, v any) error {
	var res struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	err := b.do(ctx, "Runtime.evaluate", map[string]any{
		"expression": expr, "returnByValue": true, "awaitPromise": true,
	}, &res)
	if err != nil {
		return err
	}
	if e := res.ExceptionDetails; e != nil {
		return fmt.Errorf("javascript: %s %s", e.Text, e.Exception.Description)
	}
	if len(res.Result.Value) == 0 {
		return errors.New("javascript: no value")
	}
	return json.Unmarshal(res.Result.Value, v)
}

// waitFor evaluates a boolean JavaScript expression until it is true.
func (b *browser) waitFor(ctx context.Context, what, expr string) error {
	for {
		var ok bool
		err := b.eval(ctx, expr, &ok)
		if err == nil && ok {
			return b.settle(ctx)
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("waiting for %s: %w (last error: %v)", what, ctx.Err(), err)
			}
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// settle waits, up to a second, for the page's transitions and animations
// (a tab's underline, the loading bar) to finish, then for a paint, so that
// a screenshot shows the page at rest.
func (b *browser) settle(ctx context.Context) error {
	var ok bool
	return b.eval(ctx, `new Promise(resolve => {
		const end = Date.now() + 1000;
		const check = () => {
			const busy = document.getAnimations().some(a => a.playState === "running" && a.effect?.getTiming().iterations !== Infinity);
			if (busy && Date.now() < end) return setTimeout(check, 50);
			requestAnimationFrame(() => requestAnimationFrame(() => resolve(true)));
		};
		check();
	})`, &ok)
}

// screenshot returns a PNG of the page as the window shows it.
func (b *browser) screenshot(ctx context.Context) ([]byte, error) {
	var res struct{ Data string }
	if err := b.do(ctx, "Page.captureScreenshot", map[string]any{"format": "png"}, &res); err != nil {
		return nil, err
	}
	return base64.StdEncoding.DecodeString(res.Data)
}

// html returns the page's DOM as HTML.
func (b *browser) html(ctx context.Context) (string, error) {
	var s string
	err := b.eval(ctx, "document.documentElement.outerHTML", &s)
	return s, err
}

// close ends Chromium and every process it started.
func (b *browser) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = b.call(ctx, "", "Browser.close", map[string]any{}, nil)
	b.in.Close()
	done := make(chan struct{})
	go func() { _ = b.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// jsString quotes s as a JavaScript string literal (encoding/json escapes
// U+2028 and U+2029 too, which JavaScript strings cannot hold raw).
func jsString(s string) string {
	q, _ := json.Marshal(s)
	return string(q)
}
