package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailferry/mailferry/store"
)

type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailferry_http_requests_total",
			Help: "HTTP requests by route pattern and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mailferry_http_request_duration_seconds",
			Help:    "HTTP request latency by route pattern.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"route"}),
	}
	reg.MustRegister(m.requests, m.duration)
	return m
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// measure counts requests by route pattern, read after the router matched,
// so ids in paths never become label values.
func (s *server) measure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		route := "unmatched"
		if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
			route = rc.RoutePattern()
		}
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		s.metrics.requests.WithLabelValues(route, strconv.Itoa(sw.status)).Inc()
		s.metrics.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

// recoverer turns a panic into a 500 that shows no internals.
func (s *server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.opts.Logger.LogAttrs(r.Context(), slog.LevelError, "handler panic", slog.Any("panic", v), slog.String("route", r.URL.Path))
				writeProblem(w, newProblem(kindInternal, "the server failed; the error was logged"))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

type contextKey struct{ name string }

// principalKey is never reassigned; a pointer key cannot collide with
// another package's.
var principalKey = &contextKey{"principal"}

// principal is the authenticated API key, the only thing the request
// context carries.
func principal(ctx context.Context) store.APIKey {
	k, _ := ctx.Value(principalKey).(store.APIKey)
	return k
}

func (s *server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Get("Authorization")
		scheme, secret, ok := strings.Cut(h, " ")
		// RFC 6750 2.1; the scheme is case-insensitive (RFC 9110 11.1).
		if h == "" || !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(secret) == "" {
			detail := "send the API key as `Authorization: Bearer <key>`"
			writeProblem(w, newProblem(kindUnauthorized, detail))
			return
		}
		key, err := s.opts.Auth.Authenticate(r.Context(), strings.TrimSpace(secret))
		switch {
		case errors.Is(err, store.ErrUnauthorized):
			writeProblem(w, newProblem(kindUnauthorized, "the API key is unknown or revoked"))
			return
		case err != nil:
			s.opts.Logger.LogAttrs(r.Context(), slog.LevelError, "authenticate", slog.Any("error", err))
			p := newProblem(kindUnavailable, "the ledger is unavailable; nothing was accepted")
			p.retryAfter = 5 * time.Second
			writeProblem(w, p)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey, key)))
	})
}
