package relay

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/store"
)

// sendMany submits n one-recipient messages, to(i) naming each recipient,
// from a few goroutines.
func (p *pipeline) sendMany(n int, to func(i int) string) []uuid.UUID {
	p.t.Helper()
	ids := make([]uuid.UUID, n)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := g; i < n; i += 8 {
				ids[i] = p.send(mail.Draft{From: "alice@example.com", To: []string{to(i)}, Text: "hi"})
			}
		})
	}
	wg.Wait()
	return ids
}

// waitAll waits until every message is delivered.
func (p *pipeline) waitAll(ids []uuid.UUID, timeout time.Duration) {
	p.t.Helper()
	for _, id := range ids {
		if v := p.wait(id, timeout); v.Status != store.StatusDelivered {
			p.t.Fatalf("%s: %s %+v", id, v.Status, v.Recipients)
		}
	}
}

// retried sums the Retry calls of the workers' queues.
func retried(qs ...*queue.Queue) (n int64) {
	for _, q := range qs {
		n += q.Counts().Retried
	}
	return n
}

// TestDestinationLimitFleetWide: many messages to one destination, two
// worker processes (two Workers, each with its own queue client and
// consumer name), and a third that died holding the destination's two
// starting leases. The receiver never sees more transactions at once than
// the destination's limit, though each worker alone could open its whole
// share; nothing moves until the dead worker's leases expire, and then
// within a heartbeat; every message arrives once; and no job is written
// back to Redis for want of a slot, though most of them waited.
func TestDestinationLimitFleetWide(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		const n, limit = 5000, 6
		p := newPipeline(t)
		s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{DataDelay: 2 * time.Millisecond})
		ids := p.sendMany(n, func(i int) string { return fmt.Sprintf("u%d@example.net", i) })

		// The dead worker: it took the two leases a new destination starts
		// with and was killed; nothing renews them.
		const ttl = time.Second
		dead, err := p.newQueue("dead", time.Minute).Leases(ttl)
		if err != nil {
			t.Fatal(err)
		}
		held, _, err := dead.Acquire(context.Background(), "mx:mx.example.net", 10, queue.DestLimit{Start: 2, Max: limit}, time.Now())
		if err != nil || len(held) != 2 {
			t.Fatalf("dead worker's leases %v, %v: want 2", held, err)
		}
		killed := time.Now()

		var qs []*queue.Queue
		for _, name := range []string{"w1", "w2"} {
			q := p.newQueue(name, time.Minute)
			qs = append(qs, q)
			p.start(name, func(o *WorkerOptions) {
				o.Queue, o.PerDestination, o.Concurrency = q, limit, 64
				o.Heartbeat, o.Lease = 100*time.Millisecond, ttl
			})
		}
		wait.For(t, "the first delivery", func() bool { return len(s.Messages()) > 0 })
		waited := time.Since(killed)
		t.Logf("first delivery %v after the holder of the destination's leases died (TTL %v)", waited.Round(time.Millisecond), ttl)
		if waited < ttl/2 || waited > ttl+2*time.Second {
			// Before the TTL the limit (2, both dead) admits nothing.
			t.Errorf("first delivery %v after the holder died, want after its leases' TTL %v and soon after", waited, ttl)
		}
		p.waitAll(ids, 2*time.Minute)
		if got := len(s.Messages()); got != n {
			t.Errorf("receiver got %d messages, want %d", got, n)
		}
		t.Logf("%d messages, peak %d transactions at once (limit %d), queue counts %+v and %+v", n, s.PeakTransactions(), limit, qs[0].Counts(), qs[1].Counts())
		if peak := s.PeakTransactions(); peak > limit || peak < limit-1 {
			t.Errorf("peak %d transactions at once, want the limit %d (two workers, each allowed %d)", peak, limit, limit)
		}
		if r := retried(qs...); r != 0 {
			t.Errorf("%d jobs written back to Redis; a busy destination must not cause any", r)
		}
		var claimed int64
		for _, q := range qs {
			claimed += q.Counts().Claimed
		}
		if claimed != n {
			t.Errorf("%d claims for %d jobs: a job went round through Redis", claimed, n)
		}
	})
}

// TestBusyDestinationDelaysNoOther: a slow destination's backlog waits in
// the worker without holding its delivery slots, so mail for a quick
// destination, sent after it, is delivered while the slow one is still at
// work; and no job is requeued for a busy destination.
func TestBusyDestinationDelaysNoOther(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		slow := p.mx("slow.example", "127.0.0.2", testmx.SMTPOptions{DataDelay: 700 * time.Millisecond})
		quick := p.mx("quick.example", "127.0.0.3", testmx.SMTPOptions{})
		q := p.newQueue("w", time.Minute)
		// Concurrency 4: without the gate, the slow backlog would fill every slot.
		// A lease TTL of seconds, not the pipeline's 300 ms: a loaded test
		// machine must not let a lease lapse mid-transaction and so admit a
		// third.
		p.start("w", func(o *WorkerOptions) { o.Queue, o.PerDestination, o.Concurrency, o.Lease = q, 2, 4, 2*time.Second })
		slowIDs := p.sendMany(16, func(i int) string { return fmt.Sprintf("u%d@slow.example", i) })
		wait.For(t, "the slow destination at work", func() bool { return slow.PeakTransactions() > 0 })
		quickIDs := p.sendMany(40, func(i int) string { return fmt.Sprintf("u%d@quick.example", i) })
		p.waitAll(quickIDs, 30*time.Second)
		if got := len(slow.Messages()); got >= len(slowIDs) {
			t.Errorf("the slow destination finished (%d messages) before the quick one: the test shows nothing", got)
		}
		if got := len(quick.Messages()); got != len(quickIDs) {
			t.Errorf("quick destination got %d, want %d", got, len(quickIDs))
		}
		p.waitAll(slowIDs, time.Minute)
		if peak := slow.PeakTransactions(); peak > 2 {
			t.Errorf("slow destination peak %d, want at most its limit 2", peak)
		}
		if c := q.Counts(); c.Retried != 0 || c.Claimed != int64(len(slowIDs)+len(quickIDs)) {
			t.Errorf("queue counts %+v: want every job claimed once and none written back", c)
		}
	})
}

// TestClosingDestinationBacksOff: a destination that answers 421 to every
// transaction falls to one transaction at a time, fleet-wide, its mail is
// deferred (never bounced), and once it answers again the limit grows
// back and everything is delivered.
func TestClosingDestinationBacksOff(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
		var qs []*queue.Queue
		for _, name := range []string{"w1", "w2"} {
			q := p.newQueue(name, time.Minute)
			qs = append(qs, q)
			p.start(name, func(o *WorkerOptions) { o.Queue, o.PerDestination = q, 8 })
		}
		const dest = "mx:mx.example.net"
		limitNow := func() int {
			ds, err := p.q.Destinations(context.Background(), time.Now())
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range ds {
				if d.Name == dest {
					return d.Limit
				}
			}
			return 0
		}
		// Warm up: quick transactions earn the destination its cap.
		p.waitAll(p.sendMany(30, func(i int) string { return fmt.Sprintf("a%d@example.net", i) }), 30*time.Second)
		if l := limitNow(); l < 6 {
			t.Fatalf("limit %d after 30 quick transactions, want near the cap 8", l)
		}
		closing := make([]string, 40)
		for i := range closing {
			closing[i] = "421 4.3.2 shutting down"
		}
		s.OnMail(closing...)
		ids := p.sendMany(10, func(i int) string { return fmt.Sprintf("b%d@example.net", i) })
		wait.For(t, "the limit down to 1", func() bool { return limitNow() == 1 })
		for _, id := range ids[:3] {
			v, err := p.st.GetMessage(context.Background(), p.key.TenantID, id)
			if err != nil {
				t.Fatal(err)
			}
			if v.Status == store.StatusBounced {
				t.Fatalf("%s %s under 421: a 421 must defer, not bounce", id, v.Status)
			}
		}
		// The 421s run out: the destination answers again.
		p.waitAll(ids, time.Minute)
		more := p.sendMany(10, func(i int) string { return fmt.Sprintf("c%d@example.net", i) })
		p.waitAll(more, 30*time.Second)
		if l := limitNow(); l < 2 {
			t.Errorf("limit %d after the destination recovered, want it growing again", l)
		}
		if r := qs[0].Counts().Retried + qs[1].Counts().Retried; r == 0 {
			t.Error("no deferral written back: the 421s were never seen")
		}
	})
}

// TestDestinationConnectionsFleetWide: the destination's max_connections
// bounds the connections the MX sees from the fleet, idle pooled ones
// included, not only the transactions (issue 15). Two worker processes
// (two Workers, each with its own SMTP client and pool) carry 600 messages
// to one destination whose limit is 3: the MX never has more than 3
// connections open at once, and connections are still reused hard (far
// fewer opened than messages sent).
func TestDestinationConnectionsFleetWide(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		const n, limit = 600, 3
		p := newPipeline(t)
		s := p.mx("example.org", "127.0.0.2", testmx.SMTPOptions{DataDelay: time.Millisecond})
		ids := p.sendMany(n, func(i int) string { return fmt.Sprintf("u%d@example.org", i) })
		for _, name := range []string{"w1", "w2"} {
			p.start(name, func(o *WorkerOptions) {
				o.PerDestination, o.Concurrency = limit, 32
			})
		}
		p.waitAll(ids, 2*time.Minute)
		accepted, _ := s.Connections()
		t.Logf("%d messages, peak %d connections and %d transactions at once (limit %d), %d connections opened",
			n, s.PeakConnections(), s.PeakTransactions(), limit, accepted)
		if got := len(s.Messages()); got != n {
			t.Errorf("receiver got %d messages, want %d", got, n)
		}
		if peak := s.PeakConnections(); peak > limit {
			t.Errorf("peak %d connections open at once, want at most max_connections %d", peak, limit)
		}
		if accepted > n/10 {
			t.Errorf("%d connections opened for %d messages: connections are not being reused", accepted, n)
		}
	})
}
