package ratelimit

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// client is a Redis client of its own, as another process would have.
func client(t *testing.T) redis.UniversalClient {
	t.Helper()
	opts, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRedisFleetWide: two limiters on two connections, standing for two
// API processes, hammer one key; together they get the one budget,
// burst + rate × elapsed, within ±10%.
func TestRedisFleetWide(t *testing.T) {
	prefix := testenv.KeyPrefix(t)
	limit := Limit{Rate: 200, Burst: 20}
	var limiters []*Redis
	for range 2 {
		l, err := NewRedis(client(t), RedisOptions{Limit: limit, Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		limiters = append(limiters, l)
	}
	var allowed, refused atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(1500 * time.Millisecond)
	for i := range 4 {
		l := limiters[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				res, err := l.Allow(context.Background(), "key1")
				if err != nil {
					t.Error(err)
					return
				}
				if res.Allowed {
					allowed.Add(1)
					continue
				}
				refused.Add(1)
				if res.RetryAfter <= 0 || res.RetryAfter > time.Second {
					t.Errorf("refused with RetryAfter %s", res.RetryAfter)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	want := float64(limit.Burst) + limit.Rate*elapsed
	got := float64(allowed.Load())
	t.Logf("%.0f allowed, %d refused in %.2fs over 2 clients; budget %.0f", got, refused.Load(), elapsed, want)
	if refused.Load() == 0 {
		t.Fatal("nothing refused: the load did not reach the limit")
	}
	if math.Abs(got-want) > 0.1*want {
		t.Fatalf("allowed %.0f, want %.0f ±10%%", got, want)
	}
	// Another key has its own budget.
	if res, err := limiters[0].Allow(context.Background(), "key2"); err != nil || !res.Allowed {
		t.Fatalf("another key: %+v %v", res, err)
	}
	if k := limiters[0].Key("key1"); k != prefix+":{ratelimit:key1}" {
		t.Errorf("key %q is not hash-tagged", k)
	}
}

// TestRedisDown: a limiter whose Redis does not answer says so; the
// callers let the request through.
func TestRedisDown(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	l, err := NewRedis(c, RedisOptions{Limit: Limit{Rate: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Allow(context.Background(), "k"); err == nil {
		t.Fatal("no error from a Redis that is not there")
	}
}

func TestGCRALimit(t *testing.T) {
	for _, tc := range []struct {
		rate         float64
		wantRate     int
		wantPeriod   time.Duration
		wantPerSecnd float64
	}{
		{100, 100, time.Second, 100},
		{0.5, 500, 1000 * time.Second, 0.5},
		{2.5, 2500, 1000 * time.Second, 2.5},
	} {
		g := gcraLimit(Limit{Rate: tc.rate, Burst: 1})
		if g.Rate != tc.wantRate || g.Period != tc.wantPeriod {
			t.Errorf("rate %v: %+v", tc.rate, g)
		}
		if got := float64(g.Rate) / g.Period.Seconds(); got != tc.wantPerSecnd {
			t.Errorf("rate %v: %v a second", tc.rate, got)
		}
	}
}

// TestQuota: a tenant's messages count over every process until the
// quota; then refused until midnight UTC, with the wait to it; the next
// UTC day starts again; other tenants are apart.
func TestQuota(t *testing.T) {
	prefix := testenv.KeyPrefix(t)
	// 23:00 UTC today: the counts' expiry (an hour past midnight) is in
	// Redis's future.
	y, m, d := time.Now().UTC().Date()
	now := time.Date(y, m, d, 23, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	var qs []*Quota
	for range 2 {
		q, err := NewQuota(client(t), QuotaOptions{PerDay: 5, Prefix: prefix, Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		qs = append(qs, q)
	}
	ctx := context.Background()
	for i := range 5 {
		res, err := qs[i%2].Take(ctx, "acme", 1)
		if err != nil || !res.Allowed || res.Used != int64(i+1) {
			t.Fatalf("message %d: %+v %v", i+1, res, err)
		}
	}
	for range 2 {
		res, err := qs[1].Take(ctx, "acme", 1)
		if err != nil || res.Allowed {
			t.Fatalf("over quota: %+v %v", res, err)
		}
		if res.RetryAfter != time.Hour || res.RetrySeconds() != 3600 {
			t.Fatalf("RetryAfter %s, want 1h to midnight UTC", res.RetryAfter)
		}
	}
	if res, err := qs[0].Take(ctx, "other", 1); err != nil || !res.Allowed {
		t.Fatalf("another tenant: %+v %v", res, err)
	}
	ttl, err := client(t).TTL(ctx, qs[0].Key("acme", now)).Result()
	if err != nil || ttl <= 0 {
		t.Fatalf("the day's count has no expiry: %s %v", ttl, err)
	}
	now = now.Add(time.Hour) // midnight UTC
	if res, err := qs[0].Take(ctx, "acme", 1); err != nil || !res.Allowed || res.Used != 1 {
		t.Fatalf("next day: %+v %v", res, err)
	}
}

// TestOnCluster: the limiter and the quota run unchanged on a Redis
// Cluster client (go-redis routes each script by its one hash-tagged
// key).
func TestOnCluster(t *testing.T) {
	c := testenv.OneNodeCluster(t)
	l, err := NewRedis(c, RedisOptions{Limit: Limit{Rate: 1, Burst: 2}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var got []bool
	for range 3 {
		res, err := l.Allow(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, res.Allowed)
	}
	if !got[0] || !got[1] || got[2] {
		t.Errorf("allowed %v, want the burst of 2 then a refusal", got)
	}
	q, err := NewQuota(c, QuotaOptions{PerDay: 1})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := q.Take(ctx, "acme", 1); err != nil || !r.Allowed {
		t.Fatalf("quota: %+v %v", r, err)
	}
	if r, err := q.Take(ctx, "acme", 1); err != nil || r.Allowed {
		t.Fatalf("quota past 1: %+v %v", r, err)
	}
}
