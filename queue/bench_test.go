package queue

import (
	"context"
	"fmt"
	"testing"
)

// benchJob looks like a real job: a UUID message id and a short domain,
// so bytes per job are close to production.
func benchJob(i int) Job {
	return Job{MessageID: fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i), Domain: "example.net"}
}

// BenchmarkEnqueue measures Enqueue of ready jobs, one per call (as the API
// does per message) and in batches (as requeue does), and reports the Redis
// memory each queued job takes.
func BenchmarkEnqueue(b *testing.B) {
	for _, batch := range []int{1, 100} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			rdb, prefix := shared(b)
			q := newQueue(b, rdb, Options{Prefix: prefix})
			ctx := context.Background()
			items := make([]Item, batch)
			n := 0
			for b.Loop() {
				for k := range items {
					items[k] = Item{Job: benchJob(n)}
					n++
				}
				if err := q.Enqueue(ctx, items...); err != nil {
					b.Fatalf("enqueue: %v", err)
				}
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "jobs/s")
			mem, err := rdb.MemoryUsage(ctx, q.shards[0].stream, 0).Result()
			if err != nil {
				b.Fatalf("memory usage: %v", err)
			}
			b.ReportMetric(float64(mem)/float64(n), "redis-B/job")
		})
	}
}

// BenchmarkClaimAck measures the worker's round: Claim a batch, Ack it.
// One op is one job.
func BenchmarkClaimAck(b *testing.B) {
	for _, batch := range []int{1, 50} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			rdb, prefix := shared(b)
			q := newQueue(b, rdb, Options{Prefix: prefix, Consumer: "bench"})
			ctx := context.Background()
			items := make([]Item, 0, 1000)
			for i := range b.N {
				items = append(items, Item{Job: benchJob(i)})
				if len(items) == cap(items) || i == b.N-1 {
					if err := q.Enqueue(ctx, items...); err != nil {
						b.Fatalf("enqueue: %v", err)
					}
					items = items[:0]
				}
			}
			b.ResetTimer()
			for done := 0; done < b.N; {
				cs, err := q.Claim(ctx, batch, 0)
				if err != nil {
					b.Fatalf("claim: %v", err)
				}
				if len(cs) == 0 {
					b.Fatalf("queue empty after %d of %d jobs", done, b.N)
				}
				if err := q.Ack(ctx, cs...); err != nil {
					b.Fatalf("ack: %v", err)
				}
				done += len(cs)
			}
		})
	}
}
