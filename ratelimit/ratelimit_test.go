package ratelimit

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }

func mustLocal(t *testing.T, l Limit, now func() time.Time) *Local {
	t.Helper()
	loc, err := NewLocal(l, now)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// takeN asks n times and returns how many were let through.
func takeN(l *Local, key string, n int) int {
	ok := 0
	for range n {
		if took, _ := l.take(key); took {
			ok++
		}
	}
	return ok
}

func TestLimiterBucket(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	l := mustLocal(t, Limit{Rate: 10}, clk.now) // burst defaults to 2× the rate
	if got := takeN(l, "k1", 25); got != 20 {
		t.Fatalf("a burst let %d requests through, want 20", got)
	}
	ok, wait := l.take("k1")
	if ok || wait != 100*time.Millisecond {
		t.Fatalf("empty bucket: ok %v wait %v, want refused and 100ms", ok, wait)
	}
	clk.add(250 * time.Millisecond)
	if got := takeN(l, "k1", 5); got != 2 {
		t.Errorf("after 250ms at 10/s: %d requests, want 2", got)
	}
	clk.add(time.Hour)
	if got := takeN(l, "k1", 25); got != 20 {
		t.Errorf("after an hour: %d, want the burst of 20 (no more)", got)
	}
	if got := takeN(l, "k2", 25); got != 20 {
		t.Errorf("another key: %d, want its own burst of 20", got)
	}
	// A clock that steps back takes nothing away and gives nothing.
	clk.add(-time.Minute)
	if ok, _ := l.take("k2"); ok {
		t.Error("a clock step back refilled the bucket")
	}
	if l := mustLocal(t, Limit{Rate: 0.25}, clk.now); l.burst != 1 {
		t.Errorf("burst for 0.25/s = %v, want at least 1", l.burst)
	}
}

// TestLimiterEviction: the map never holds more than max keys; buckets
// that have refilled go first, so no key that is being limited is let off.
func TestLimiterEviction(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	l := mustLocal(t, Limit{Rate: 1, Burst: 2}, clk.now)
	l.max = 3
	takeN(l, "busy", 2) // empty
	takeN(l, "idle", 1)
	clk.add(10 * time.Second) // idle has refilled; busy too, but keep it busy:
	takeN(l, "busy", 2)
	takeN(l, "c", 1)
	takeN(l, "d", 1) // full: idle, the one refilled bucket, goes
	if _, ok := l.buckets["idle"]; ok || len(l.buckets) != 3 {
		t.Fatalf("buckets %v: want idle evicted, 3 left", keys(l))
	}
	if ok, _ := l.take("busy"); ok {
		t.Fatal("eviction reset the limited key")
	}
	// Nothing refilled: the one idle longest goes.
	clk.add(100 * time.Millisecond)
	takeN(l, "e", 1)
	if len(l.buckets) != 3 {
		t.Fatalf("%d buckets, want at most 3", len(l.buckets))
	}
	for i := range 1000 {
		takeN(l, fmt.Sprint("k", i), 1)
	}
	if len(l.buckets) > 3 {
		t.Fatalf("%d buckets after 1000 keys, want at most 3", len(l.buckets))
	}
}

func keys(l *Local) []string {
	var out []string
	for k := range l.buckets {
		out = append(out, k)
	}
	return out
}

// TestLimiterConcurrent: under -race, many goroutines on one key get
// exactly the burst.
func TestLimiterConcurrent(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	l := mustLocal(t, Limit{Rate: 100, Burst: 200}, clk.now)
	var mu sync.Mutex
	total := 0
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			n := takeN(l, "k", 50)
			mu.Lock()
			total += n
			mu.Unlock()
		})
	}
	wg.Wait()
	if total != 200 {
		t.Errorf("%d requests let through, want the burst of 200", total)
	}
}

// TestAllow: the interface answer carries the wait and the limit, and the
// wait rounds up to whole seconds for Retry-After and SMTP replies.
func TestAllow(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	l := mustLocal(t, Limit{Rate: 0.4, Burst: 1}, clk.now)
	ctx := context.Background()
	if r, err := l.Allow(ctx, "k"); err != nil || !r.Allowed || r.RetryAfter != 0 {
		t.Fatalf("first: %+v %v, want allowed", r, err)
	}
	r, err := l.Allow(ctx, "k")
	if err != nil || r.Allowed || r.RetryAfter != 2500*time.Millisecond || r.Limit != (Limit{Rate: 0.4, Burst: 1}) {
		t.Fatalf("second: %+v %v, want refused for 2.5s under 0.4/s burst 1", r, err)
	}
	for _, tt := range []struct {
		wait time.Duration
		want int64
	}{{0, 1}, {time.Millisecond, 1}, {time.Second, 1}, {time.Second + 1, 2}, {2500 * time.Millisecond, 3}} {
		if got := (Result{RetryAfter: tt.wait}).RetrySeconds(); got != tt.want {
			t.Errorf("RetrySeconds(%v) = %d, want %d", tt.wait, got, tt.want)
		}
	}
}

func TestNewLocal(t *testing.T) {
	for _, l := range []Limit{{Rate: 0}, {Rate: -1}, {Rate: math.NaN()}, {Rate: math.Inf(1)}, {Rate: 1, Burst: -1}} {
		if _, err := NewLocal(l, nil); err == nil {
			t.Errorf("NewLocal(%+v) took it", l)
		}
	}
}
