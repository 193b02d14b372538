// Package api is Mailferry's HTTP interface: POST /v1/messages to send,
// GET /v1/messages/{id} for what became of each recipient, plus /healthz,
// /readyz and /metrics. Handlers decode and check input, hand mail to the
// intake and read the ledger; every refusal is an RFC 9457 problem that
// names what was wrong.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mailferry/mailferry/budget"
	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/ratelimit"
	"github.com/mailferry/mailferry/store"
)

// Authenticator resolves a bearer secret to its key.
type Authenticator interface {
	Authenticate(ctx context.Context, secret string) (store.APIKey, error)
}

// Reader reads messages from the ledger: one with its history, or the log.
type Reader interface {
	GetMessage(ctx context.Context, tenantID string, id uuid.UUID) (*store.MessageView, error)
	ListMessages(ctx context.Context, tenantID string, f store.MessageFilter) ([]store.MessageSummary, error)
}

// Intake accepts messages.
type Intake interface {
	NewReceipt(s intake.Submission) (intake.Receipt, error)
	Accept(ctx context.Context, r intake.Receipt, s intake.Submission) ([]intake.Suppression, error)
	SubmitIdempotent(ctx context.Context, r intake.Receipt, s intake.Submission, key store.Idempotency,
		answer func(suppressed []intake.Suppression) ([]byte, error)) (*store.Idempotency, error)
	AcceptAll(ctx context.Context, rs []intake.Receipt, ss []intake.Submission) ([][]intake.Suppression, []error)
	SubmitAllIdempotent(ctx context.Context, rs []intake.Receipt, ss []intake.Submission, key store.Idempotency,
		answer func(suppressed [][]intake.Suppression) ([]byte, error)) (*store.Idempotency, error)
}

// Check is one readiness probe (Redis, PostgreSQL).
type Check struct {
	Name string
	Ping func(ctx context.Context) error
}

// Options configures the HTTP handler.
type Options struct {
	Auth   Authenticator
	Reader Reader
	Intake Intake
	// Suppressions serves /v1/suppressions; nil: those routes are 404.
	Suppressions Suppressions
	Ready        []Check
	Logger       *slog.Logger
	Registry     *prometheus.Registry // /metrics serves it; the HTTP metrics register in it

	Hostname        string // Message-ID domain
	MaxMessageBytes int64
	MaxRecipients   int
	// MaxScheduleAhead bounds send_at; default 30 days.
	MaxScheduleAhead time.Duration
	// Warn returns warnings for an accepted message (such as "no DKIM key
	// for example.com: sent unsigned"); optional.
	Warn func(ctx context.Context, fromDomain string) []string
	// Draining reports that the process is shutting down: /readyz then
	// answers 503 so load balancers stop sending before the listener
	// closes. Optional.
	Draining func() bool
	// RateLimit is the requests a second each API key may make to /v1
	// (MAILFERRY_RATE_LIMIT), in bursts of up to RateBurst (0: twice the
	// rate, at least 1); beyond it the answer is 429 with Retry-After.
	// 0 turns the limit off. That limit is per process (ratelimit.Local).
	// Limiter, when set, is used instead: serve passes the fleet-wide
	// ratelimit.Redis it shares with SMTP submission.
	RateLimit float64
	RateBurst int
	Limiter   ratelimit.Limiter
	// Quota, when set, counts each POST /v1/messages against its tenant's
	// daily quota (MAILFERRY_TENANT_DAILY_QUOTA); past it the answer is
	// 429 with Retry-After at midnight UTC.
	Quota Quota
	Now   func() time.Time
	// Webhooks serves /v1/webhooks and /v1/events; nil leaves those
	// routes out.
	Webhooks Webhooks
	// AllowPrivateDestinations lets webhook URLs be http and name private
	// addresses (MAILFERRY_ALLOW_PRIVATE_DESTINATIONS, tests only).
	AllowPrivateDestinations bool
	// Domains serves /v1/domains; nil leaves those routes out.
	Domains Domains
	// RequireVerifiedDomain refuses mail whose From domain is not a
	// verified sending domain of the key's tenant
	// (MAILFERRY_REQUIRE_VERIFIED_DOMAIN); it needs Domains.
	RequireVerifiedDomain bool
	// Budget caps the message bytes in flight, shared with SMTP
	// submission (MAILFERRY_MAX_BYTES_IN_FLIGHT); past it a POST gets 503
	// with Retry-After. Nil: no cap.
	Budget *budget.Budget
	// Keys serves /v1/tenants and /v1/keys; nil leaves them out.
	Keys KeyManager
	// Cancel serves DELETE /v1/messages/{id}; nil leaves it out.
	Cancel Canceler
	// MaxBatch caps the messages of POST /v1/messages/batch
	// (MAILFERRY_MAX_BATCH); 0: DefaultMaxBatch.
	MaxBatch int
}

// Quota is a tenant's daily message quota (ratelimit.Quota).
type Quota interface {
	Take(ctx context.Context, tenant string, n int64) (ratelimit.QuotaResult, error)
}

type server struct {
	opts    Options
	metrics *httpMetrics
	limiter ratelimit.Limiter // nil: no rate limit
	bodies  sync.Pool         // *bytes.Buffer for request bodies; see bodyBuffer
}

// New checks opts and returns the HTTP handler.
func New(opts Options) (http.Handler, error) {
	if opts.Auth == nil || opts.Reader == nil || opts.Intake == nil || opts.Registry == nil {
		return nil, errors.New("api: Auth, Reader, Intake and Registry are required")
	}
	if opts.MaxMessageBytes <= 0 || opts.MaxRecipients <= 0 || opts.Hostname == "" {
		return nil, errors.New("api: MaxMessageBytes, MaxRecipients and Hostname are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxScheduleAhead <= 0 {
		opts.MaxScheduleAhead = 30 * 24 * time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.RequireVerifiedDomain && opts.Domains == nil {
		return nil, errors.New("api: RequireVerifiedDomain needs Domains")
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	if opts.RateLimit < 0 || opts.RateBurst < 0 || math.IsNaN(opts.RateLimit) || math.IsInf(opts.RateLimit, 0) {
		return nil, errors.New("api: RateLimit and RateBurst must be finite and not negative")
	}
	s := &server{opts: opts, metrics: newHTTPMetrics(opts.Registry)}
	switch {
	case opts.Limiter != nil:
		s.limiter = opts.Limiter
	case opts.RateLimit > 0:
		l, err := ratelimit.NewLocal(ratelimit.Limit{Rate: opts.RateLimit, Burst: opts.RateBurst}, opts.Now)
		if err != nil {
			return nil, fmt.Errorf("api: %w", err)
		}
		s.limiter = l
	}

	r := chi.NewRouter()
	r.Use(s.recoverer, s.measure)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, newProblem(kindNoRoute, r.Method+" "+r.URL.Path+" is not a route of this API"))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, newProblem(kindNoMethod, r.Method+" is not allowed on "+r.URL.Path))
	})
	r.Get("/healthz", s.healthz)
	r.Get("/readyz", s.readyz)
	r.Method(http.MethodGet, "/metrics", promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{Registry: opts.Registry, ErrorHandling: promhttp.ContinueOnError}))
	r.Route("/v1", func(r chi.Router) {
		r.Use(s.authenticate, s.rateLimit)
		s.mountV1(r)
	})
	return r, nil
}

func (s *server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz answers 200 only when every dependency answers: a load balancer
// then sends no mail to an instance that could only refuse it.
func (s *server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.opts.Draining != nil && s.opts.Draining() {
		p := newProblem(kindUnavailable, "shutting down", FieldProblem{Field: "process", Detail: "draining"})
		p.retryAfter = 5 * time.Second
		writeProblem(w, p)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	checks := map[string]string{}
	var failed []FieldProblem
	for _, c := range s.opts.Ready {
		if err := c.Ping(ctx); err != nil {
			checks[c.Name] = "unavailable"
			failed = append(failed, FieldProblem{Field: c.Name, Detail: "unreachable"})
			s.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "readiness check failed", slog.String("check", c.Name), slog.Any("error", err))
			continue
		}
		checks[c.Name] = "ok"
	}
	if len(failed) > 0 {
		p := newProblem(kindUnavailable, "a dependency is unreachable", failed...)
		p.retryAfter = 5 * time.Second
		writeProblem(w, p)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "checks": checks})
}
