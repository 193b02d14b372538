package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/wait"
)

// countingListener counts the connections it has accepted and not yet
// closed, the file descriptors they hold, and remembers the most.
type countingListener struct {
	net.Listener
	mu        sync.Mutex
	open, max int
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.open++
	l.max = max(l.max, l.open)
	l.mu.Unlock()
	return &countedConn{Conn: c, l: l}, nil
}

func (l *countingListener) peak() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.max
}

type countedConn struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.open--
		c.l.mu.Unlock()
	})
	return err
}

func healthz() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, `{"status":"ok"}`) })
	return mux
}

// TestHTTPConnectionCap: with the cap at 2, silent and idle kept-alive
// connections beyond it never hold more than 2 descriptors, and /healthz
// still gets through once the timeouts close them.
func TestHTTPConnectionCap(t *testing.T) {
	t.Parallel()
	const limit = 2
	srv := newHTTPServer(healthz(), httpOptions{ReadHeaderTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	counted := &countingListener{Listener: ln}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(limitListener(counted, limit)) }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	url := "http://" + ln.Addr().String() + "/healthz"

	// One idle kept-alive connection, then silent ones, more than the cap.
	idle := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	get := func(c *http.Client) error {
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	}
	if err := get(idle); err != nil {
		t.Fatalf("first GET: %v", err)
	}
	for range 6 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	probe := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	if err := get(probe); err != nil {
		t.Fatalf("/healthz behind %d idle connections: %v", 7, err)
	}
	if p := counted.peak(); p > limit {
		t.Errorf("%d connections open at once, want at most %d", p, limit)
	}
}

// TestHTTPAcceptBackoff: out of descriptors, the HTTP server backs off
// between accepts, through the connection cap, instead of spinning, and
// serves again once accept works.
func TestHTTPAcceptBackoff(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &testmx.EMFILEListener{Listener: ln, Fails: 4}
	srv := newHTTPServer(healthz(), httpOptions{ReadHeaderTimeout: time.Second, IdleTimeout: time.Second, Logger: slog.New(slog.DiscardHandler)})
	go func() { _ = srv.Serve(limitListener(fl, 16)) }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	wait.For(t, "accept to be retried past the failures", func() bool { return len(fl.Times()) > fl.Fails })
	calls := fl.Times()
	for i := 1; i <= fl.Fails; i++ {
		if gap := calls[i].Sub(calls[i-1]); gap < 4*time.Millisecond {
			t.Errorf("accept %d came %v after a failed one: no back-off", i+1, gap)
		}
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + ln.Addr().String() + "/healthz")
	if err != nil {
		t.Fatalf("after the failures: %v", err)
	}
	resp.Body.Close()
}

// TestHTTPConnectionCapFromFileLimit: the cap never exceeds half the
// open-file limit.
func TestHTTPConnectionCapFromFileLimit(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, tt := range []struct {
		configured int
		limit      uint64
		want       int
	}{{4096, 1 << 20, 4096}, {4096, 1024, 512}, {4096, 0, 4096}, {100, 200, 100}} {
		if got := httpConnectionCap(tt.configured, tt.limit, log); got != tt.want {
			t.Errorf("cap %d under a limit of %d = %d, want %d", tt.configured, tt.limit, got, tt.want)
		}
	}
	limit, err := raiseFileLimit(log)
	var lim syscall.Rlimit
	if err != nil || syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) != nil || limit != lim.Max || lim.Cur != lim.Max {
		t.Errorf("raiseFileLimit = %d, %v; limit now %d of %d, want the hard limit", limit, err, lim.Cur, lim.Max)
	}
}
