package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"syscall"
	"time"

	"golang.org/x/net/netutil"
)

// httpOptions shapes the HTTP server on MAILFERRY_HTTP_ADDR.
type httpOptions struct {
	// ReadHeaderTimeout closes a connection that has not sent a whole
	// request header in time, a silent one included; IdleTimeout closes a
	// keep-alive connection that has no next request. Together they bound
	// how long a connection that does nothing holds a slot.
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	Logger            *slog.Logger
}

// newHTTPServer is the API's http.Server. Its Serve backs off on a
// temporary accept error (EMFILE, ENFILE) instead of spinning.
func newHTTPServer(handler http.Handler, o httpOptions) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		ReadTimeout:       2 * time.Minute,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       o.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(o.Logger.Handler(), slog.LevelWarn),
	}
}

// limitListener holds ln to max open connections
// (MAILFERRY_HTTP_MAX_CONNECTIONS): beyond it new ones wait in the kernel's
// accept queue, which costs no file descriptor, until one closes; the
// server's timeouts make sure one does. netutil.LimitListener
// passes accept errors through unchanged, so http.Server still sees a
// temporary one as temporary.
func limitListener(ln net.Listener, max int) net.Listener {
	return netutil.LimitListener(ln, max)
}

// raiseFileLimit raises the soft limit on open files to the hard limit
// and returns it. Every connection, HTTP or SMTP, in or out, is a file
// descriptor; at the limit accept fails with EMFILE on every listener at
// once. The Go runtime raises the limit too (to one below the hard
// limit); doing it here makes it certain and puts the figure in the log.
func raiseFileLimit(log *slog.Logger) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("read RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur < lim.Max {
		raised := lim
		raised.Cur = raised.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
			log.Warn("could not raise the open-file limit", "soft", lim.Cur, "hard", lim.Max, "error", err)
			return lim.Cur, nil
		}
		lim = raised
	}
	log.Info("open-file limit", "soft", lim.Cur, "hard", lim.Max)
	return lim.Cur, nil
}

// httpConnectionCap is MAILFERRY_HTTP_MAX_CONNECTIONS held to half the
// open-file limit, so that idle HTTP connections cannot take the
// descriptors SMTP submission, delivery and the database pools need.
func httpConnectionCap(configured int, fileLimit uint64, log *slog.Logger) int {
	if half := fileLimit / 2; fileLimit > 0 && uint64(configured) > half {
		log.Warn("MAILFERRY_HTTP_MAX_CONNECTIONS is above half the open-file limit; using half",
			"configured", configured, "open_file_limit", fileLimit, "using", half)
		return int(max(half, 1))
	}
	return configured
}
