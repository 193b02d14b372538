package api_test

import (
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/api"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/ratelimit"
)

// ownRedis is a Redis client of its own, as another process has.
func ownRedis(t *testing.T) redis.UniversalClient {
	t.Helper()
	o, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRateLimitFleetWide: two API servers, each with its own Redis
// connection (two processes), serve one key; MAILFERRY_RATE_LIMIT holds
// for the pair, burst + rate × elapsed within ±10%, and every refusal is
// a 429 with Retry-After.
func TestRateLimitFleetWide(t *testing.T) {
	prefix := testenv.KeyPrefix(t)
	limit := ratelimit.Limit{Rate: 40, Burst: 10}
	newLimiter := func() ratelimit.Limiter {
		l, err := ratelimit.NewRedis(ownRedis(t), ratelimit.RedisOptions{Limit: limit, Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	h := newHarness(t, harnessOptions{limiter: newLimiter()})
	opts := h.opts
	opts.Limiter = newLimiter()
	opts.Registry = prometheus.NewRegistry()
	second, err := api.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv2 := httptest.NewServer(second)
	defer srv2.Close()
	bases := []string{h.srv.URL, srv2.URL}

	var ok, limited atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(1500 * time.Millisecond)
	for i := range 4 {
		base := bases[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				req, _ := http.NewRequest(http.MethodGet, base+"/v1/messages/0190c4c4-0000-7000-8000-000000000000", nil)
				req.Header.Set("Authorization", "Bearer "+h.key)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusNotFound:
					ok.Add(1)
				case http.StatusTooManyRequests:
					limited.Add(1)
					if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 {
						t.Errorf("429 with Retry-After %q", resp.Header.Get("Retry-After"))
						return
					}
				default:
					t.Errorf("status %d", resp.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	want := float64(limit.Burst) + limit.Rate*elapsed
	got := float64(ok.Load())
	t.Logf("two API servers: %.0f served, %d refused in %.2fs; budget %.0f", got, limited.Load(), elapsed, want)
	if limited.Load() == 0 {
		t.Fatal("nothing refused: the load did not reach the limit")
	}
	if math.Abs(got-want) > 0.1*want {
		t.Fatalf("served %.0f, want %.0f ±10%%", got, want)
	}
}

// TestTenantDailyQuota: past MAILFERRY_TENANT_DAILY_QUOTA a tenant's POST
// is 429 with Retry-After at midnight UTC, naming the variable; reads
// still pass; the next UTC day sends again.
func TestTenantDailyQuota(t *testing.T) {
	y, m, d := time.Now().UTC().Date()
	now := time.Date(y, m, d, 22, 30, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	q, err := ratelimit.NewQuota(ownRedis(t), ratelimit.QuotaOptions{PerDay: 2, Prefix: testenv.KeyPrefix(t), Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, harnessOptions{quota: q})
	var sent sendAnswer
	for i := range 2 {
		r := h.post(basic(), nil)
		if r.status != http.StatusAccepted {
			t.Fatalf("message %d: %d %s", i+1, r.status, r.body)
		}
		r.json(t, &sent)
	}
	r := h.post(basic(), nil)
	if r.status != http.StatusTooManyRequests {
		t.Fatalf("third message: %d %s, want 429", r.status, r.body)
	}
	if ra := r.header.Get("Retry-After"); ra != "5400" {
		t.Errorf("Retry-After %q, want 5400 (midnight UTC)", ra)
	}
	p := r.problem(t)
	if !slices.Contains(p.fields(), "MAILFERRY_TENANT_DAILY_QUOTA") || !strings.Contains(p.Detail, "2 messages a day") {
		t.Errorf("problem does not name the quota: %s", r.body)
	}
	if g := h.get(sent.ID, h.key); g.status != http.StatusOK {
		t.Errorf("GET over quota: %d", g.status)
	}
	mu.Lock()
	now = now.Add(90 * time.Minute)
	mu.Unlock()
	if r := h.post(basic(), nil); r.status != http.StatusAccepted {
		t.Errorf("next day: %d %s", r.status, r.body)
	}
}

// A batch spends the quota by its valid messages, all or none.
func TestTenantDailyQuotaBatch(t *testing.T) {
	q, err := ratelimit.NewQuota(ownRedis(t), ratelimit.QuotaOptions{PerDay: 3, Prefix: testenv.KeyPrefix(t)})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, harnessOptions{quota: q})
	batch := func(valid, invalid int) response {
		var msgs []map[string]any
		for i := range valid {
			msgs = append(msgs, with("to", []string{fmt.Sprintf("r%d@example.net", i)}))
		}
		for range invalid {
			msgs = append(msgs, with("from", "not an address"))
		}
		return h.do(http.MethodPost, "/v1/messages/batch", h.key, jsonBody(t, map[string]any{"messages": msgs}), nil)
	}
	steps := []struct {
		name           string
		valid, invalid int
		want           int
	}{
		{"two valid and one invalid spend two", 2, 1, http.StatusMultiStatus},
		{"two more do not fit in the one left", 2, 0, http.StatusTooManyRequests},
		{"one fits", 1, 0, http.StatusMultiStatus},
		{"invalid items alone spend nothing", 0, 2, http.StatusMultiStatus},
		{"spent", 1, 0, http.StatusTooManyRequests},
	}
	before := h.messageCount()
	for _, st := range steps {
		if r := batch(st.valid, st.invalid); r.status != st.want {
			t.Fatalf("%s: %d %s, want %d", st.name, r.status, r.body, st.want)
		}
	}
	if got := h.messageCount() - before; got != 3 {
		t.Errorf("%d messages stored, want 3", got)
	}
}
