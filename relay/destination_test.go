package relay

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/store"
)

// TestOneDestinationOneLimit: mail for domains that share a next hop
// shares one concurrency cap at that hop, whether the domains share an MX
// host (hosted domains at a mailbox provider) or everything goes through
// a smarthost, and over two workers. A cap per recipient domain would let each domain open its
// own share and multiply the load on the one machine.
func TestOneDestinationOneLimit(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		const limit = 3
		domains := []string{"a.example", "b.example", "c.example", "d.example"}
		for _, tc := range []struct {
			name   string
			mutate func(p *pipeline, s *testmx.SMTP) func(o *WorkerOptions)
		}{
			{"shared MX", func(p *pipeline, s *testmx.SMTP) func(o *WorkerOptions) {
				for _, d := range domains {
					p.dns.MX(d, 10, "mx.provider.example")
				}
				return func(o *WorkerOptions) { o.PerDestination = limit }
			}},
			{"smarthost", func(p *pipeline, s *testmx.SMTP) func(o *WorkerOptions) {
				relayHost := []Host{{Name: "smarthost.example", Addrs: []netip.Addr{s.Addr().Addr()}}}
				return func(o *WorkerOptions) {
					o.Route = func(context.Context, string) ([]Host, error) { return relayHost, nil }
					o.Smarthost, o.SmarthostConnections, o.PerDestination = true, limit, 100
				}
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				p := newPipeline(t)
				s := p.mx("provider.example", "127.0.0.2", testmx.SMTPOptions{DataDelay: 20 * time.Millisecond})
				// Two workers: the cap is the fleet's, not each process's.
				m := tc.mutate(p, s)
				p.start("w1", m)
				p.start("w2", m)
				ids := make([]uuid.UUID, 0, 40)
				for i := range cap(ids) {
					to := fmt.Sprintf("u%d@%s", i, domains[i%len(domains)])
					ids = append(ids, p.send(mail.Draft{From: "alice@example.com", To: []string{to}, Text: "hi"}))
				}
				for _, id := range ids {
					if v := p.wait(id, 30*time.Second); v.Status != store.StatusDelivered {
						t.Fatalf("%s: %s", id, v.Status)
					}
				}
				if n := len(s.Messages()); n != len(ids) {
					t.Errorf("next hop received %d messages, want %d", n, len(ids))
				}
				peak := s.PeakTransactions()
				if peak > limit {
					t.Errorf("%d transactions at once at the next hop of %d domains, want at most %d", peak, len(domains), limit)
				}
				if peak < 2 {
					t.Errorf("peak %d transactions at once: the limit was never reached, the test shows nothing", peak)
				}
			})
		}
	})
}
