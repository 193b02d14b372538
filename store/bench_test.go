package store

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchmarkAcceptBatch measures the accept path as the API drives it:
// group commits of 100 messages of 4 KB to one recipient each, from one
// caller and from four at once (several API instances or flushers). The
// target is 5,000 messages/s on two cores. The test PostgreSQL runs with
// fsync=off, so this measures CPU and protocol cost, not the disk.
func BenchmarkAcceptBatch(b *testing.B) {
	const batch = 100
	body := benchBody(4096)
	for _, callers := range []int{1, 4} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			s := newStore(b)
			k := newTenant(b, s, "bench")
			batches := make([][]NewMessage, callers)
			for c := range batches {
				batches[c] = make([]NewMessage, batch)
			}
			start := time.Now()
			for b.Loop() {
				// b.N counts rounds; each round commits one batch per caller.
				var wg sync.WaitGroup
				for _, msgs := range batches {
					wg.Go(func() {
						for i := range msgs {
							msgs[i] = testMessage(k, 1)
							msgs[i].Body = body
						}
						if err := s.AcceptBatch(b.Context(), msgs); err != nil {
							b.Error(err)
						}
					})
				}
				wg.Wait()
			}
			elapsed := time.Since(start)
			n := float64(b.N * callers * batch)
			b.ReportMetric(n/elapsed.Seconds(), "msgs/s")
			b.ReportMetric(float64(elapsed.Nanoseconds())/n, "ns/msg")
		})
	}
}

// benchBody is a message of n bytes that compresses like real mail: text
// of varied words rather than one repeated line.
func benchBody(n int) []byte {
	words := strings.Fields("the order receipt account password reset your welcome team invoice " +
		"thanks please confirm link below payment shipped tracking number support hello regards")
	r := rand.New(rand.NewPCG(1, 2))
	var sb strings.Builder
	sb.WriteString("From: Shop <shop@example.com>\r\nTo: bob@example.net\r\nSubject: Your receipt\r\n" +
		"Message-ID: <0190f1a2-7b3c-7def-8abc-0123456789ab@mailferry.test>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n\r\n")
	for line := 0; sb.Len() < n; line++ {
		for range 10 {
			sb.WriteString(words[r.IntN(len(words))] + " ")
		}
		fmt.Fprintf(&sb, "%d\r\n", r.IntN(1_000_000))
	}
	return []byte(sb.String()[:n])
}

// BenchmarkLookupSuppressions measures what accept-time suppression adds
// to a group commit: one LookupSuppressions of a batch of 100 recipients,
// against an empty list and lists of 10,000 and 200,000 entries (a few of the batch
// listed). Compare its ns/msg with BenchmarkAcceptBatch's.
func BenchmarkLookupSuppressions(b *testing.B) {
	const batch = 100
	for _, listed := range []int{0, 10000, 200000} {
		b.Run(fmt.Sprintf("listed=%d", listed), func(b *testing.B) {
			s := newStore(b)
			k := newTenant(b, s, "bench")
			if listed > 0 {
				if _, err := s.pool.Exec(b.Context(), `INSERT INTO suppressions (tenant_id, email, reason)
SELECT $1, 'user' || g || '@dest' || (g % 2) || '.example', 'hard_bounce' FROM generate_series(1, $2) g`, k.TenantID, listed); err != nil {
					b.Fatal(err)
				}
				if _, err := s.pool.Exec(b.Context(), `ANALYZE suppressions`); err != nil {
					b.Fatal(err)
				}
			}
			keys := make([]SuppressionKey, batch)
			for i := range keys {
				// Every tenth one listed (when the list is not empty).
				n := i * 97
				if i%10 != 0 {
					n += 1_000_000
				}
				keys[i] = SuppressionKey{TenantID: k.TenantID, Email: fmt.Sprintf("user%d@dest%d.example", n, n%2)}
			}
			start := time.Now()
			for b.Loop() {
				if _, err := s.LookupSuppressions(b.Context(), keys); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N*batch), "ns/msg")
		})
	}
}
