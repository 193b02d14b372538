package queue

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/internal/redisconn"
)

// clusterOnly is the cluster subtest's half of EachRedis: these tests
// ask the cluster where keys live.
func clusterOnly(t *testing.T, f func(t *testing.T, rdb *redis.ClusterClient, prefix string)) {
	t.Helper()
	t.Run("redis="+redisconn.Cluster, func(t *testing.T) {
		rdb, prefix := shared(t)
		cc, ok := rdb.(*redis.ClusterClient)
		if !ok {
			t.Fatalf("client %T, want a cluster client", rdb)
		}
		f(t, cc, prefix)
	})
}

// TestClusterIsReal guards the suite's cluster half: a script over two
// shards' keys must be refused there, or EachRedis's cluster run proves
// nothing about slots.
func TestClusterIsReal(t *testing.T) {
	t.Parallel()
	clusterOnly(t, func(t *testing.T, rdb *redis.ClusterClient, prefix string) {
		ctx := context.Background()
		err := rdb.Eval(ctx, "return 1", []string{prefix + ":{q0}:ready", prefix + ":{q1}:ready"}).Err()
		if err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
			t.Errorf("a script over two shards' keys on the cluster = %v, want CROSSSLOT", err)
		}
		n := 0
		var mu sync.Mutex
		if err := rdb.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			mu.Lock()
			n++
			mu.Unlock()
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if n < 3 {
			t.Errorf("cluster has %d primaries, want 3", n)
		}
	})
}

// TestShardsSpreadOverPrimaries: MAILFERRY_QUEUE_SHARDS puts each shard in
// a slot of its own, and enough shards land on every primary, so the
// queue's load spreads.
func TestShardsSpreadOverPrimaries(t *testing.T) {
	t.Parallel()
	clusterOnly(t, func(t *testing.T, rdb *redis.ClusterClient, prefix string) {
		ctx := context.Background()
		const shards = 16
		q := newQueue(t, rdb, Options{Prefix: prefix, Shards: shards, Consumer: "c"})
		var items []Item
		for i := range 400 {
			items = append(items, ready(job(i))...)
		}
		enqueue(t, q, items...)
		slots := map[int64]bool{}
		for i := range q.shards {
			sh := &q.shards[i]
			a, err := rdb.ClusterKeySlot(ctx, sh.stream).Result()
			if err != nil {
				t.Fatal(err)
			}
			b, err := rdb.ClusterKeySlot(ctx, sh.scheduled).Result()
			if err != nil {
				t.Fatal(err)
			}
			if a != b {
				t.Errorf("shard %d: stream in slot %d, scheduled set in %d", i, a, b)
			}
			slots[a] = true
		}
		if len(slots) != shards {
			t.Errorf("%d shards in %d slots, want one each", shards, len(slots))
		}
		// Count the streams each primary holds.
		var mu sync.Mutex
		per := map[string]int{}
		err := rdb.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			iter := c.Scan(ctx, 0, prefix+":*:ready", 100).Iterator()
			k := 0
			for iter.Next(ctx) {
				k++
			}
			mu.Lock()
			per[c.Options().Addr] = k
			mu.Unlock()
			return iter.Err()
		})
		if err != nil {
			t.Fatal(err)
		}
		for addr, k := range per {
			if k == 0 {
				t.Errorf("primary %s holds no shard of %d: %v", addr, shards, per)
			}
		}
		if d := depth(t, q); d.Ready != 400 {
			t.Errorf("depth = %+v, want 400 ready", d)
		}
	})
}
