package queue

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/devstack"
)

// TestMemoryPerJob measures what a queued job costs in Redis memory
// (INFO used_memory before and after), ready and scheduled, for the
// sizing in docs/scale-out.md, and holds it to a bound.
func TestMemoryPerJob(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, err := devstack.StartRedis(ctx, devstack.RedisOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("start redis: %v", err)
	}
	t.Cleanup(func() { _ = srv.Stop(context.Background()) })
	rdb := connect(t, srv.URL)
	used := func() int64 {
		info, err := rdb.Info(ctx, "memory").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				return n
			}
		}
		t.Fatal("no used_memory in INFO")
		return 0
	}
	const n = 20000
	for _, tc := range []struct {
		name  string
		at    time.Time
		bound int64
	}{
		{"ready", time.Time{}, 200},
		{"scheduled", time.Now().Add(time.Hour), 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newQueue(t, rdb, Options{Prefix: "mem" + tc.name, Consumer: "c"})
			before := used()
			items := make([]Item, 0, 1000)
			for i := range n {
				// A message id as intake makes them: a UUID.
				id := fmt.Sprintf("01a25201-%04x-7%03x-8%03x-%012x", i>>16, i&0xfff, i%0xfff, i)
				items = append(items, Item{Job: Job{MessageID: id, Domain: "example.com"}, NotBefore: tc.at})
				if len(items) == cap(items) {
					enqueue(t, q, items...)
					items = items[:0]
				}
			}
			per := (used() - before) / n
			t.Logf("%d %s jobs: %d bytes of Redis memory each (MEMORY USAGE of the key: %d bytes)", n, tc.name, per,
				rdb.MemoryUsage(ctx, map[bool]string{true: q.shards[0].stream, false: q.shards[0].scheduled}[tc.at.IsZero()]).Val()/n)
			if per > tc.bound {
				t.Errorf("a %s job costs %d bytes of Redis memory, more than %d", tc.name, per, tc.bound)
			}
			if !tc.at.IsZero() {
				return
			}
			// Claimed, a job also has a pending entry in the group.
			before = used()
			for claimed := 0; claimed < n; {
				cs, err := q.Claim(ctx, 1000, 0)
				if err != nil || len(cs) == 0 {
					t.Fatalf("claim: %d jobs, %v", len(cs), err)
				}
				claimed += len(cs)
			}
			extra := (used() - before) / n
			t.Logf("claimed: %d bytes more each", extra)
			if extra > 150 {
				t.Errorf("a claim costs %d bytes of Redis memory, more than 150", extra)
			}
		})
	}
}
