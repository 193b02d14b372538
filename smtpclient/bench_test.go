package smtpclient

import (
	"context"
	"fmt"
	"testing"

	"github.com/mailferry/mailferry/internal/testmx"
)

// BenchmarkDeliver reports round trips per message to a server with and
// without PIPELINING, over a reused connection. Without PIPELINING the
// client sends what the go-smtp based client before it sent, one command at
// a time: that is the "before".
func BenchmarkDeliver(b *testing.B) {
	for _, rcpts := range []int{1, 10} {
		for _, tc := range []struct {
			name string
			exts []string
		}{
			{"one-at-a-time", nil},
			{"pipelined", []string{"PIPELINING"}},
		} {
			b.Run(fmt.Sprintf("%s/rcpts=%d", tc.name, rcpts), func(b *testing.B) {
				port, lns := testmx.Listen(b, "127.0.0.2")
				testmx.RunPeer(b, lns[0], plainPeer(tc.exts...))
				c, err := New(Options{Hostname: ehloName, Port: port, AllowPrivate: true, Timeouts: fastTimeouts()})
				if err != nil {
					b.Fatal(err)
				}
				defer c.CloseIdle()
				var to []string
				for i := range rcpts {
					to = append(to, fmt.Sprintf("r%d@example.net", i))
				}
				env := envelope(to...)
				hosts := []Host{host("mx1.example.net", "127.0.0.2")}
				trips := 0
				b.ResetTimer()
				for b.Loop() {
					a := c.Deliver(context.Background(), hosts, env)
					if verdict(a.Results[0]) != delivered {
						b.Fatalf("%+v", a.Results[0])
					}
					trips += a.RoundTrips
				}
				b.ReportMetric(float64(trips)/float64(b.N), "roundtrips/msg")
			})
		}
	}
}
