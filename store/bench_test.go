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
