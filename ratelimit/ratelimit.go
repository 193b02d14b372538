// Package ratelimit is the per-API-key budget that the HTTP API and SMTP
// submission share (MAILFERRY_RATE_LIMIT): one request or one message
// costs one token, whichever door it comes through.
//
// Redis, the one serve uses, is a GCRA per key in Redis shared by the
// fleet (one round trip a request); Local is a token bucket per key in
// this process, for a single process and tests. Quota counts a tenant's
// messages per UTC day (MAILFERRY_TENANT_DAILY_QUOTA).
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// Limiter decides whether key may spend one token now. An error means the
// limiter could not answer (a shared store down); callers then let the
// request through, as a limiter must not stop the mail it protects.
type Limiter interface {
	Allow(ctx context.Context, key string) (Result, error)
}

// Limit is a rate in tokens a second with a bucket of Burst tokens.
type Limit struct {
	Rate  float64
	Burst int
}

// Result is one decision.
type Result struct {
	Allowed bool
	// RetryAfter is how long until a token is free; 0 when Allowed.
	RetryAfter time.Duration
	// Limit is the limit that was applied, for the refusal's text.
	Limit Limit
}

// RetrySeconds is RetryAfter in whole seconds, rounded up and at least 1,
// so that a client that waits as told finds a token (RFC 9110 10.2.3:
// Retry-After is in whole seconds).
func (r Result) RetrySeconds() int64 {
	return int64(max(1, (r.RetryAfter+time.Second-1)/time.Second))
}

// maxKeys bounds a Local's memory. Only authenticated keys get a bucket,
// so the map holds at most one entry per key in use; the bound matters
// only to a deployment with more live keys than this.
const maxKeys = 10000

// Local is a token bucket per key: Rate tokens a second, up to Burst.
//
// It is per process: with N processes a key may make N times the rate in
// all. That protects each process, and the ledger behind it, from one
// runaway client without a Redis round trip on every request and without
// failing when Redis does. serve uses Redis instead, which holds across
// processes.
type Local struct {
	limit Limit
	rate  float64 // tokens a second
	burst float64
	now   func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
	max     int
}

var _ Limiter = (*Local)(nil)

type bucket struct {
	tokens float64
	last   time.Time // when tokens was computed
}

// NewLocal returns a Local for l. A Burst of 0 means twice the rate, at
// least 1. now is the clock; nil means time.Now.
func NewLocal(l Limit, now func() time.Time) (*Local, error) {
	if !(l.Rate > 0) || math.IsInf(l.Rate, 0) || l.Burst < 0 {
		return nil, fmt.Errorf("ratelimit: rate %v, burst %d: %w", l.Rate, l.Burst, errBadLimit)
	}
	if l.Burst == 0 {
		l.Burst = max(1, int(math.Ceil(2*l.Rate)))
	}
	if now == nil {
		now = time.Now
	}
	return &Local{limit: l, rate: l.Rate, burst: float64(l.Burst), now: now, buckets: map[string]*bucket{}, max: maxKeys}, nil
}

var errBadLimit = errors.New("the rate must be positive and finite, the burst not negative")

// Limit is the limit l applies.
func (l *Local) Limit() Limit { return l.limit }

// Allow takes a token for key. It never fails.
func (l *Local) Allow(_ context.Context, key string) (Result, error) {
	ok, wait := l.take(key)
	return Result{Allowed: ok, RetryAfter: wait, Limit: l.limit}, nil
}

// take takes a token for key. When none is left it returns how long until
// one is.
func (l *Local) take(key string) (ok bool, wait time.Duration) {
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
func (l *Local) evict(now time.Time) {
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
