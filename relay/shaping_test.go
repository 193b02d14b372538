package relay

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/shaping"
	"github.com/mailferry/mailferry/store"
)

type shapingClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *shapingClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *shapingClock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// gauge reads one series of a collector registered with reg.
func gauge(t *testing.T, reg *prometheus.Registry, name, dest string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "destination" && l.GetValue() == dest {
					if m.GetGauge() != nil {
						return m.GetGauge().GetValue()
					}
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return -1
}

// TestShapingThrottlesOn421: a destination with a message rate whose MX
// answers 421 4.7.0 "try again later" to a share of transactions: the
// rule halves its fleet-wide rate (the rate gauge drops, the throttle is
// counted), nothing bounces (every message is delivered on a later
// attempt), and once the MX answers normally the rate comes back, a
// step per period of the rule on the shaper's clock.
func TestShapingThrottlesOn421(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		mx := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
		cfg, err := shaping.Load([]byte(`
destinations:
  - {name: testmx, destinations: [mx:mx.example.net], max_message_rate: 1200/min, max_connections: 4}
rules:
  - {name: later, entries: [testmx], match: '^421 4\.7\.0 .*try again later', action: throttle, duration: 1m}
`))
		if err != nil {
			t.Fatal(err)
		}
		clk := &shapingClock{now: time.Now()}
		reg := prometheus.NewRegistry()
		sh, err := shaping.New(shaping.Options{Config: cfg, Redis: p.rdb, Prefix: p.prefix, Now: clk.Now, Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		const full = 20.0 // 1200/min
		if r := gauge(t, reg, "mailferry_destination_rate", "testmx"); r != full {
			t.Fatalf("rate gauge %v before any reply, want %v", r, full)
		}
		// Every other transaction is told to come back later.
		var script []string
		for range 10 {
			script = append(script, "421 4.7.0 Try again later, closing connection", "250 2.1.0 ok")
		}
		mx.OnMail(script...)
		p.start("w1", func(o *WorkerOptions) { o.Shaper = sh })
		ids := p.sendMany(30, func(i int) string { return fmt.Sprintf("r%d@example.net", i) })
		wait.For(t, "the destination's rate halved", func() bool {
			return gauge(t, reg, "mailferry_destination_rate", "testmx") == full/2
		})
		if n := gauge(t, reg, "mailferry_destination_throttled_total", "testmx"); n < 1 {
			t.Errorf("throttled_total %v, want at least 1", n)
		}
		// Nothing bounces: each 421 defers, and the retry delivers.
		p.waitAll(ids, time.Minute)
		if got := len(mx.Messages()); got != 30 {
			t.Errorf("the MX holds %d messages, want 30", got)
		}
		// The MX has recovered (its script is spent). A period on, the rate is
		// whole again: halved once per burst, it comes back in one step.
		clk.add(time.Minute)
		wait.For(t, "the rate restored", func() bool {
			return gauge(t, reg, "mailferry_destination_rate", "testmx") == full
		})
		st, err := sh.Inspect(t.Context(), "mx:mx.example.net")
		if err != nil || !strings.Contains(st.State.Reason, "421 4.7.0") {
			t.Errorf("state %+v %v: want the 421 as the reason", st, err)
		}
		// More mail flows at the full rate.
		p.waitAll(p.sendMany(10, func(i int) string { return fmt.Sprintf("s%d@example.net", i) }), 30*time.Second)
	})
}

// TestShapingSuspendKeepsQueue: a suspending rule stops the destination:
// its mail waits, nothing bounces and nothing is sent until the
// suspension ends on the shaper's clock; then all of it is delivered.
func TestShapingSuspendKeepsQueue(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		mx := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
		cfg, err := shaping.Load([]byte(`
rules:
  - {name: stop, match: 'TSS09', action: suspend, duration: 30m}
`))
		if err != nil {
			t.Fatal(err)
		}
		clk := &shapingClock{now: time.Now()}
		reg := prometheus.NewRegistry()
		sh, err := shaping.New(shaping.Options{Config: cfg, Redis: p.rdb, Prefix: p.prefix, Now: clk.Now, Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		mx.OnMail("421 4.7.0 [TSS09] All messages from 192.0.2.1 will be permanently deferred")
		wreg := prometheus.NewRegistry()
		p.start("w1", func(o *WorkerOptions) { o.Shaper, o.Metrics = sh, NewMetrics(wreg) })
		first := p.sendMany(1, func(int) string { return "a@example.net" })
		wait.For(t, "the destination suspended", func() bool {
			st, err := sh.Inspect(t.Context(), "mx:mx.example.net")
			return err == nil && st.State.Suspended(clk.Now())
		})
		// The counter moves just after the suspension is stored: wait for it.
		wait.For(t, "throttled_total{other} at 1", func() bool {
			return gauge(t, reg, "mailferry_destination_throttled_total", "other") == 1
		})
		more := p.sendMany(5, func(i int) string { return fmt.Sprintf("b%d@example.net", i) })
		// Suspended: the jobs wait in the worker; nothing reaches the MX. Wait
		// until the worker holds them all (routed, waiting for the
		// destination), then check the MX saw nothing and nothing bounced.
		wait.For(t, "the jobs held for the suspended destination", func() bool {
			return gauge(t, wreg, "mailferry_destination_queued", "mx:mx.example.net") >= 5
		})
		if got := len(mx.Messages()); got != 0 {
			t.Fatalf("the MX got %d messages while suspended", got)
		}
		for _, id := range append(first, more...) {
			if v, err := p.st.GetMessage(t.Context(), p.key.TenantID, id); err != nil || v.Status != store.StatusPending {
				t.Fatalf("%s while suspended: %v %v, want pending", id, v.Status, err)
			}
		}
		clk.add(30 * time.Minute)
		p.waitAll(append(first, more...), time.Minute)
	})
}

// TestShapingLimitsDestination: the shaping file's max_connections
// replaces the worker's cap, across two workers, and its
// max_message_rate holds for both together.
func TestShapingLimitsDestination(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		mx := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
		cfg, err := shaping.Load([]byte(`
destinations:
  - {name: small, destinations: [mx:mx.example.net], max_connections: 2, max_message_rate: 600/min}
`))
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"w1", "w2"} {
			sh, err := shaping.New(shaping.Options{Config: cfg, Redis: p.rdb, Prefix: p.prefix})
			if err != nil {
				t.Fatal(err)
			}
			p.start(name, func(o *WorkerOptions) { o.Shaper, o.PerDestination = sh, 16 })
		}
		const n = 40
		start := time.Now()
		p.waitAll(p.sendMany(n, func(i int) string { return fmt.Sprintf("r%d@example.net", i) }), time.Minute)
		took := time.Since(start)
		// 10 a second with bursts of 10: the first 10 at once, the other 30
		// at 10 a second, so at least about 3 s.
		rate := float64(n) / took.Seconds()
		t.Logf("%d messages in %s (%.1f/s), peak %d transactions", n, took.Round(time.Millisecond), rate, mx.PeakTransactions())
		if peak := mx.PeakTransactions(); peak > 2 {
			t.Errorf("peak %d transactions at once, want at most max_connections 2", peak)
		}
		if took < 2700*time.Millisecond {
			t.Errorf("%d messages in %s: faster than 600/min allows", n, took)
		}
	})
}

// TestShapingMaxConnections: max_connections from the shaping file caps a
// slow destination's transactions across two workers whose own cap is 16.
func TestShapingMaxConnections(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		mx := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{DataDelay: 100 * time.Millisecond})
		cfg, err := shaping.Load([]byte("destinations: [{name: two, destinations: [mx:mx.example.net], max_connections: 2}]"))
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"w1", "w2"} {
			sh, err := shaping.New(shaping.Options{Config: cfg, Redis: p.rdb, Prefix: p.prefix})
			if err != nil {
				t.Fatal(err)
			}
			p.start(name, func(o *WorkerOptions) { o.Shaper, o.PerDestination = sh, 16 })
		}
		p.waitAll(p.sendMany(20, func(i int) string { return fmt.Sprintf("r%d@example.net", i) }), time.Minute)
		t.Logf("peak %d transactions at once", mx.PeakTransactions())
		if peak := mx.PeakTransactions(); peak > 2 {
			t.Errorf("peak %d transactions at once, want at most max_connections 2", peak)
		}
	})
}
