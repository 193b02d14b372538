package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// Redis is the fleet-wide Limiter: a GCRA (generic cell rate algorithm)
// per key in Redis, so a key gets the same budget whether one API process
// serves it or ten. Each decision is one EVALSHA of redis_rate's script on
// one key; the script reads Redis's own clock (TIME), so processes whose
// clocks disagree still share one budget.
//
// The key is hash-tagged ("{…}") like every Mailferry key, so under Redis
// Cluster a key's state has one slot and the script one node.
type Redis struct {
	rl     *redis_rate.Limiter
	limit  Limit
	rlimit redis_rate.Limit
	prefix string
}

var _ Limiter = (*Redis)(nil)

// RedisOptions configures NewRedis.
type RedisOptions struct {
	Limit Limit // Burst 0: twice the rate, at least 1
	// Prefix starts every key; "" means "mailferry". Tests set their own.
	Prefix string
}

// NewRedis returns a Redis limiter on rdb: a single node, a cluster or a
// ring (any redis.UniversalClient).
func NewRedis(rdb redis.UniversalClient, opts RedisOptions) (*Redis, error) {
	l := opts.Limit
	if rdb == nil {
		return nil, errors.New("ratelimit: no Redis client")
	}
	if !(l.Rate > 0) || math.IsInf(l.Rate, 0) || l.Burst < 0 {
		return nil, fmt.Errorf("ratelimit: rate %v, burst %d: %w", l.Rate, l.Burst, errBadLimit)
	}
	if l.Burst == 0 {
		l.Burst = max(1, int(math.Ceil(2*l.Rate)))
	}
	if opts.Prefix == "" {
		opts.Prefix = "mailferry"
	}
	return &Redis{rl: redis_rate.NewLimiter(rdb), limit: l, rlimit: gcraLimit(l), prefix: opts.Prefix}, nil
}

// gcraLimit is l as redis_rate wants it: whole events per period. A rate
// below one a second becomes one event per 1/rate seconds.
func gcraLimit(l Limit) redis_rate.Limit {
	if l.Rate >= 1 && l.Rate == math.Trunc(l.Rate) {
		return redis_rate.Limit{Rate: int(l.Rate), Period: time.Second, Burst: l.Burst}
	}
	// Keep three significant decimals of a fractional rate: 2.5/s is
	// 2500 per 1000 s.
	return redis_rate.Limit{Rate: int(math.Round(l.Rate * 1000)), Period: 1000 * time.Second, Burst: l.Burst}
}

// Limit is the limit r applies.
func (r *Redis) Limit() Limit { return r.limit }

// Key is the Redis key of an API key's budget (redis_rate prepends
// "rate:"; the hash tag still decides the slot).
func (r *Redis) Key(key string) string { return r.prefix + ":{ratelimit:" + key + "}" }

// Allow takes one token of key's budget. An error means Redis did not
// answer; the caller lets the request through.
func (r *Redis) Allow(ctx context.Context, key string) (Result, error) {
	res, err := r.rl.Allow(ctx, r.Key(key), r.rlimit)
	if err != nil {
		return Result{Limit: r.limit}, fmt.Errorf("ratelimit: %w", err)
	}
	if res.Allowed > 0 {
		return Result{Allowed: true, Limit: r.limit}, nil
	}
	return Result{RetryAfter: max(res.RetryAfter, 0), Limit: r.limit}, nil
}
