package api

import (
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"
)

// rateLimit refuses a key's request with 429 once its budget is spent. It
// runs after authenticate, so it counts keys, and before the handler reads
// the body, so a refusal costs next to nothing. The budget is shared with
// SMTP submission when both are given the same limiter.
func (s *server) rateLimit(next http.Handler) http.Handler {
	if s.limiter == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := principal(r.Context())
		res, err := s.limiter.Allow(r.Context(), key.ID)
		if err != nil {
			// A limiter that cannot answer must not stop the mail it
			// protects: let the request through and say so.
			s.opts.Logger.LogAttrs(r.Context(), slog.LevelWarn, "rate limiter unavailable; request let through",
				slog.String("api_key_id", key.ID), slog.Any("error", err))
		}
		if err != nil || res.Allowed {
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
