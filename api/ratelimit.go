package api

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// maxLimitedKeys bounds the limiter's memory. Only authenticated keys get a
// bucket, so the map holds at most one entry per key in use; the bound
// matters only to a deployment with more live keys than this.
const maxLimitedKeys = 10000

// limiter is a token bucket per API key id: rate tokens a second, up to
// burst; each request takes one.
//
// It is per process: with N API processes a key may make N times the rate
// in all. That is the point of it for now — it protects each process, and
// the ledger behind it, from one runaway client, without a Redis round
// trip on every request and without failing when Redis does (the API then
// answers 503 anyway). Operators who scale out divide MAILFERRY_RATE_LIMIT
// by the number of API processes. A quota that must hold across the fleet
// (plans, billing) needs a shared counter — a GCRA in Redis, one EVALSHA a
// request — behind this same middleware.
type limiter struct {
	rate  float64 // tokens a second
	burst float64
	now   func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
	max     int
}

type bucket struct {
	tokens float64
	last   time.Time // when tokens was computed
}

func newLimiter(rate float64, burst int, now func() time.Time) *limiter {
	if burst < 1 {
		burst = max(1, int(math.Ceil(2*rate)))
	}
	return &limiter{rate: rate, burst: float64(burst), now: now, buckets: map[string]*bucket{}, max: maxLimitedKeys}
}

// take takes a token for key. When none is left it returns how long until
// one is.
func (l *limiter) take(key string) (ok bool, wait time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, found := l.buckets[key]
	if !found {
		if len(l.buckets) >= l.max {
			l.evict(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(l.burst, b.tokens+dt*l.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
}

// evict makes room: first it drops every bucket that has refilled, which
// loses nothing (a new bucket starts full); if none has, the one idle
// longest goes, and its key starts again with a full burst.
func (l *limiter) evict(now time.Time) {
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	var oldest string
	var oldestAt time.Time
	for k, b := range l.buckets {
		if now.Sub(b.last) >= full {
			delete(l.buckets, k)
			continue
		}
		if oldest == "" || b.last.Before(oldestAt) {
			oldest, oldestAt = k, b.last
		}
	}
	if len(l.buckets) >= l.max {
		delete(l.buckets, oldest)
	}
}

// rateLimit refuses a key's request with 429 once its bucket is empty. It
// runs after authenticate, so it counts keys, and before the handler reads
// the body, so a refusal costs next to nothing.
func (s *server) rateLimit(next http.Handler) http.Handler {
	if s.limiter == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := principal(r.Context())
		ok, wait := s.limiter.take(key.ID)
		if ok {
			next.ServeHTTP(w, r)
			return
		}
		p := newProblem(kindRateLimited, fmt.Sprintf("this API key may make %s requests a second (bursts of %s); try again later",
			formatRate(s.limiter.rate), formatRate(s.limiter.burst)),
			FieldProblem{Field: "MAILFERRY_RATE_LIMIT", Detail: formatRate(s.limiter.rate) + " requests a second per API key"})
		// RFC 9110 10.2.3: whole seconds; round up so a client that waits
		// as told finds a token.
		p.retryAfter = max(1, (wait+time.Second-1)/time.Second) * time.Second
		writeProblem(w, p)
	})
}

func formatRate(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
