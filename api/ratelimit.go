package api

import (
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/mailferry/mailferry/ratelimit"
)

// rateLimit refuses a key's request with 429 once its budget is spent. It
// runs after authenticate, so it counts keys, and before the handler reads
// the body, so a refusal costs next to nothing. The budget is shared with
// SMTP submission when both are given the same limiter.
func (s *server) rateLimit(next http.Handler) http.Handler {
	if s.limiter == nil && s.opts.Quota == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := principal(r.Context())
		res, err := ratelimit.Result{Allowed: true}, error(nil)
		if s.limiter != nil {
			res, err = s.limiter.Allow(r.Context(), key.ID)
		}
		if err != nil {
			// A limiter that cannot answer must not stop the mail it
			// protects: let the request through and say so.
			s.opts.Logger.LogAttrs(r.Context(), slog.LevelWarn, "rate limiter unavailable; request let through",
				slog.String("api_key_id", key.ID), slog.Any("error", err))
		}
		if err != nil || res.Allowed {
			if s.overQuota(w, r, key.TenantID) {
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		rate, burst := formatRate(res.Limit.Rate), strconv.Itoa(res.Limit.Burst)
		p := newProblem(kindRateLimited, fmt.Sprintf("this API key may make %s requests a second (bursts of %s), over the API and SMTP together; try again later",
			rate, burst),
			FieldProblem{Field: "MAILFERRY_RATE_LIMIT", Detail: rate + " requests a second per API key"})
		p.retryAfter = time.Duration(res.RetrySeconds()) * time.Second
		writeProblem(w, p)
	})
}

func formatRate(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// overQuota counts a message submission against the tenant's daily quota
// and answers 429 when it is spent, with Retry-After at midnight UTC. Only
// POST /v1/messages counts: reads never spend the quota.
func (s *server) overQuota(w http.ResponseWriter, r *http.Request, tenant string) bool {
	if s.opts.Quota == nil || r.Method != http.MethodPost || r.URL.Path != "/v1/messages" {
		return false
	}
	return s.takeQuota(w, r, tenant, 1)
}

// takeQuota counts n messages against the tenant's daily quota and, when
// they do not fit, answers 429 and reports true. A batch counts each of its
// messages (sendBatch), all or none.
func (s *server) takeQuota(w http.ResponseWriter, r *http.Request, tenant string, n int) bool {
	if s.opts.Quota == nil || n <= 0 {
		return false
	}
	res, err := s.opts.Quota.Take(r.Context(), tenant, int64(n))
	if err != nil {
		s.opts.Logger.LogAttrs(r.Context(), slog.LevelWarn, "tenant quota unavailable; message let through",
			slog.String("tenant", tenant), slog.Any("error", err))
		return false
	}
	if res.Allowed {
		return false
	}
	perDay := strconv.FormatInt(res.PerDay, 10)
	p := newProblem(kindRateLimited, "this tenant may send "+perDay+" messages a day (UTC); the quota renews at midnight UTC",
		FieldProblem{Field: "MAILFERRY_TENANT_DAILY_QUOTA", Detail: perDay + " messages a UTC day per tenant"})
	p.retryAfter = time.Duration(res.RetrySeconds()) * time.Second
	writeProblem(w, p)
	return true
}
