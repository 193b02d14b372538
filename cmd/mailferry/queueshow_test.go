package main

import (
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/queue"
)

// TestQueueShow: `mailferry queue show` lists each destination with the
// jobs waiting for it, the transactions in flight over the fleet, the
// limit it earned and its last error.
func TestQueueShow(t *testing.T) {
	c := newCLI(t)
	ctx := t.Context()
	ro, _ := redis.ParseURL(c.getenv("MAILFERRY_REDIS_URL"))
	rdb := redis.NewClient(ro)
	defer rdb.Close()
	q, err := queue.New(rdb, queue.Options{Consumer: "w1"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := q.Leases(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	lim := queue.DestLimit{Start: 2, Max: 32}
	ids, _, err := l.Acquire(ctx, "mx:mx.busy.example", 2, lim, now)
	if err != nil || len(ids) != 2 {
		t.Fatalf("acquire: %v %v", ids, err)
	}
	if _, _, _, err := l.Release(ctx, "mx:mx.busy.example", ids[0], queue.Unhealthy, "421 4.3.2 shutting down from mx.busy.example", lim, false, now); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Renew(ctx, "mx:mx.busy.example", ids[1:], 7, now); err != nil {
		t.Fatal(err)
	}
	// Not "smarthost": the other tests of the package share this Redis,
	// and a lease held here would count against their smarthost.
	if _, _, err := l.Acquire(ctx, "mx:mx.quiet.example", 1, queue.DestLimit{Start: 2, Max: 50}, now); err != nil {
		t.Fatal(err)
	}
	out, stderr, err := c.run("queue", "show")
	if err != nil {
		t.Fatalf("queue show: %v %s", err, stderr)
	}
	lines := strings.Split(out, "\n")
	var busy, smart string
	for _, l := range lines {
		switch f := strings.Fields(l); {
		case len(f) > 0 && f[0] == "mx:mx.busy.example":
			busy = strings.Join(f, " ")
		case len(f) > 0 && f[0] == "mx:mx.quiet.example":
			smart = strings.Join(f, " ")
		}
	}
	if !strings.HasPrefix(busy, "mx:mx.busy.example 7 1 1/32 ") || !strings.Contains(busy, "421 4.3.2 shutting down") {
		t.Errorf("busy destination line %q in:\n%s", busy, out)
	}
	if smart != "mx:mx.quiet.example 0 1 2/50 -" {
		t.Errorf("quiet destination line %q in:\n%s", smart, out)
	}
	if !strings.HasPrefix(lines[0], "ready ") || !strings.Contains(lines[0], " claimed ") {
		t.Errorf("first line %q: want the depth", lines[0])
	}
}
