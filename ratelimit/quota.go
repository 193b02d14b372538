package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Quota is the daily message quota per tenant
// (MAILFERRY_TENANT_DAILY_QUOTA), counted in Redis for the whole fleet.
// The day is the UTC day: the count starts again at midnight UTC, which
// is when a refused tenant is told to come back.
type Quota struct {
	rdb    redis.UniversalClient
	perDay int64
	prefix string
	now    func() time.Time
}

// QuotaResult is one decision of a Quota.
type QuotaResult struct {
	Allowed bool
	Used    int64 // messages counted today, this one included
	PerDay  int64
	// RetryAfter is the time to midnight UTC when refused.
	RetryAfter time.Duration
}

// RetrySeconds is RetryAfter in whole seconds, at least 1 (RFC 9110 10.2.3).
func (r QuotaResult) RetrySeconds() int64 {
	return int64(max(1, (r.RetryAfter+time.Second-1)/time.Second))
}

// QuotaOptions configures NewQuota.
type QuotaOptions struct {
	PerDay int64            // messages a tenant may send a UTC day; > 0
	Prefix string           // "" means "mailferry"
	Now    func() time.Time // nil: time.Now; only picks the day
}

// NewQuota returns a Quota on rdb.
func NewQuota(rdb redis.UniversalClient, opts QuotaOptions) (*Quota, error) {
	if rdb == nil || opts.PerDay <= 0 {
		return nil, errors.New("ratelimit: a quota needs a Redis client and a positive PerDay")
	}
	if opts.Prefix == "" {
		opts.Prefix = "mailferry"
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Quota{rdb: rdb, perDay: opts.PerDay, prefix: opts.Prefix, now: opts.Now}, nil
}

// takeQuota counts n messages on a day's key, which expires an hour after
// that day ends (ARGV[2], Unix seconds), and returns the new count. A
// refused take is given back, so a tenant over quota does not push its
// count further for nothing.
var takeQuota = redis.NewScript(`
local used = redis.call("INCRBY", KEYS[1], ARGV[1])
if used == tonumber(ARGV[1]) then
  redis.call("EXPIREAT", KEYS[1], ARGV[2])
end
if used > tonumber(ARGV[3]) then
  redis.call("DECRBY", KEYS[1], ARGV[1])
end
return used
`)

// Key is the Redis key of tenant's count on day (hash-tagged by tenant).
func (q *Quota) Key(tenant string, day time.Time) string {
	return q.prefix + ":{quota:" + tenant + "}:" + day.UTC().Format("20060102")
}

// Take counts n messages of tenant against today's quota. An error means
// Redis did not answer; callers let the message through.
func (q *Quota) Take(ctx context.Context, tenant string, n int64) (QuotaResult, error) {
	now := q.now().UTC()
	midnight := time.Date(now.Year(), now.Month(), now.Day()+1, 0, 0, 0, 0, time.UTC)
	used, err := takeQuota.Run(ctx, q.rdb, []string{q.Key(tenant, now)}, n, midnight.Add(time.Hour).Unix(), q.perDay).Int64()
	if err != nil {
		return QuotaResult{PerDay: q.perDay}, fmt.Errorf("tenant quota: %w", err)
	}
	res := QuotaResult{Allowed: used <= q.perDay, Used: used, PerDay: q.perDay}
	if !res.Allowed {
		res.RetryAfter = midnight.Sub(now)
	}
	return res, nil
}
