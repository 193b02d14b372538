package shaping

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

const testFile = `
destinations:
  - {name: paced, destinations: [mx:mx.example.net], max_message_rate: 60/min, max_connections: 3}
rules:
  - {name: slow, match: '^421 4\.7\.0 ', action: throttle, duration: 1m}
  - {name: stop, match: 'go away', action: suspend, duration: 10m}
`

// newShapers returns n Shapers on one Redis (n processes) with one clock.
func newShapers(t *testing.T, n int, clk *clock) ([]*Shaper, []*prometheus.Registry) {
	t.Helper()
	cfg, err := Load([]byte(testFile))
	if err != nil {
		t.Fatal(err)
	}
	opts, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	prefix := testenv.KeyPrefix(t)
	var out []*Shaper
	var regs []*prometheus.Registry
	for range n {
		rdb := redis.NewClient(opts)
		t.Cleanup(func() { rdb.Close() })
		reg := prometheus.NewRegistry()
		s, err := New(Options{Config: cfg, Redis: rdb, Prefix: prefix, Now: clk.Now, Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		out, regs = append(out, s), append(regs, reg)
	}
	return out, regs
}

// TestThrottleAcrossFleet: a 421 4.7.0 seen by one process halves the
// rate for every process, once per burst; the rate comes back doubling
// each period; metrics count the rule and show the rate.
func TestThrottleAcrossFleet(t *testing.T) {
	ctx := context.Background()
	clk := &clock{now: time.Now()}
	ss, regs := newShapers(t, 2, clk)
	const dest = "mx:mx.example.net"
	if r, _ := ss[0].Rate(ctx, dest); r != 1 {
		t.Fatalf("rate %v, want 1/s (60/min)", r)
	}
	for range 3 { // a burst of 421s halves once
		rule, err := ss[0].Observe(ctx, dest, []Reply{{Code: 250, Enhanced: "2.0.0", Text: "ok"}, {Code: 421, Enhanced: "4.7.0", Text: "Try again later"}})
		if err != nil || rule == nil || rule.Name != "slow" {
			t.Fatalf("Observe: %v %v", rule, err)
		}
	}
	st, err := ss[1].Inspect(ctx, dest)
	if err != nil {
		t.Fatal(err)
	}
	if st.Rate != 0.5 || st.Name != "paced" || !strings.Contains(st.State.Reason, "421 4.7.0") {
		t.Fatalf("the other process sees %+v, want rate 0.5", st)
	}
	if got := testutil.ToFloat64(ss[0].m.throttledTotal.WithLabelValues("paced")); got != 3 {
		t.Errorf("throttled_total %v, want 3", got)
	}
	gauge := func(reg *prometheus.Registry) string {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "mailferry_destination_rate" {
				return mf.String()
			}
		}
		return ""
	}
	if g := gauge(regs[0]); !strings.Contains(g, "value:0.5") {
		t.Errorf("rate gauge %s, want 0.5", g)
	}
	clk.add(time.Minute)
	if st, _ := ss[1].Inspect(ctx, dest); st.Rate != 1 {
		t.Errorf("after the period: %v, want 1 again", st.Rate)
	}
	// Halved twice (a second burst after the first period ended), the rate
	// comes back in two steps.
	for range 2 {
		if _, err := ss[0].Observe(ctx, dest, []Reply{{Code: 421, Enhanced: "4.7.0", Text: "Try again later"}}); err != nil {
			t.Fatal(err)
		}
		clk.add(time.Minute + time.Second)
	}
	// Second halving came 61 s after the first, when the rate was whole
	// again; so 0.5 now, restored a minute later.
	st, _ = ss[1].Inspect(ctx, dest)
	if st.Rate != 1 && st.Rate != 0.5 {
		t.Fatalf("rate %v", st.Rate)
	}
	// A reply no rule matches changes nothing.
	if rule, err := ss[0].Observe(ctx, dest, []Reply{{Code: 451, Enhanced: "4.3.0", Text: "local error"}}); rule != nil || err != nil {
		t.Errorf("451 4.3.0 applied %v %v", rule, err)
	}
}

// TestStepwiseRestore: halved three times within short bursts each
// after the last period, the rate returns doubling per period.
func TestStepwiseRestore(t *testing.T) {
	ctx := context.Background()
	clk := &clock{now: time.Now()}
	ss, _ := newShapers(t, 1, clk)
	const dest = "mx:mx.example.net"
	reply := []Reply{{Code: 421, Enhanced: "4.7.0", Text: "Try again later"}}
	var rates []float64
	for range 3 {
		if _, err := ss[0].Observe(ctx, dest, reply); err != nil {
			t.Fatal(err)
		}
		st, _ := ss[0].Inspect(ctx, dest)
		rates = append(rates, st.Rate)
		clk.add(time.Minute) // the period ends; the next 421 halves the restored rate
	}
	// 1 → 0.5; a period later restored to 1 → 0.5 again: a destination
	// that keeps refusing stays halved, not lower, when its 421s are a
	// period apart.
	if rates[0] != 0.5 {
		t.Fatalf("rates %v", rates)
	}
	clk.add(-time.Minute)
	// Within one period, more 421s keep it halved and restart the period.
	for range 5 {
		clk.add(30 * time.Second)
		if _, err := ss[0].Observe(ctx, dest, reply); err != nil {
			t.Fatal(err)
		}
	}
	st, _ := ss[0].Inspect(ctx, dest)
	if st.Rate != 0.5 {
		t.Fatalf("after 421s every 30 s: %v, want 0.5", st.Rate)
	}
	var seen []float64
	for range 3 {
		clk.add(time.Minute)
		st, _ := ss[0].Inspect(ctx, dest)
		seen = append(seen, st.Rate)
	}
	if seen[0] != 1 || seen[2] != 1 {
		t.Fatalf("restore %v, want back to 1", seen)
	}
}

// TestSuspend: a suspending rule admits nothing until it ends,
// for every process, and says how long to wait.
func TestSuspend(t *testing.T) {
	ctx := context.Background()
	clk := &clock{now: time.Now()}
	ss, _ := newShapers(t, 2, clk)
	const dest = "mx:other.example"
	if n, _, err := ss[1].Admit(ctx, dest, 5); n != 5 || err != nil {
		t.Fatalf("unpaced destination admits %d, %v", n, err)
	}
	rule, err := ss[0].Observe(ctx, dest, []Reply{{Code: 421, Text: "go away"}})
	if err != nil || rule == nil || rule.Action != Suspend {
		t.Fatalf("Observe: %v %v", rule, err)
	}
	if !ss[0].Paced(ctx, dest) {
		t.Error("a suspended destination is not paced")
	}
	st, err := ss[1].Inspect(ctx, dest)
	if err != nil || !st.State.Suspended(clk.Now()) || st.Name != "other" {
		t.Fatalf("the other process: %+v %v", st, err)
	}
	// The other process's copy may be fresh from before: it reads again
	// within stateFresh; force the read.
	ss[1].mu.Lock()
	clear(ss[1].states)
	ss[1].mu.Unlock()
	n, wait, err := ss[1].Admit(ctx, dest, 5)
	if n != 0 || err != nil || wait < 10*time.Minute-time.Second || wait > 10*time.Minute {
		t.Fatalf("suspended: admitted %d, wait %s, %v", n, wait, err)
	}
	if got := testutil.ToFloat64(ss[0].m.throttledTotal.WithLabelValues("other")); got != 1 {
		t.Errorf("throttled_total{other} %v", got)
	}
	clk.add(10 * time.Minute)
	if n, _, _ := ss[1].Admit(ctx, dest, 5); n != 5 {
		t.Fatalf("after the suspension: %d admitted", n)
	}
}

// TestAdmitRate: a paced destination admits its burst, then says when
// the next message may go.
func TestAdmitRate(t *testing.T) {
	ctx := context.Background()
	clk := &clock{now: time.Now()}
	ss, _ := newShapers(t, 2, clk)
	const dest = "mx:mx.example.net" // 60/min: one a second, bursts of one
	n, wait, err := ss[0].Admit(ctx, dest, 10)
	if err != nil || n != 1 || wait <= 0 || wait > time.Second {
		t.Fatalf("first Admit: %d, %s, %v", n, wait, err)
	}
	if n, _, _ := ss[1].Admit(ctx, dest, 10); n != 0 {
		t.Fatalf("the other process got %d at once: the rate is not shared", n)
	}
}

// TestShaperOnCluster: rates, throttles and suspensions run unchanged on
// a Redis Cluster client; each unit's keys share a hash tag.
func TestShaperOnCluster(t *testing.T) {
	ctx := context.Background()
	cfg, err := Load([]byte(testFile))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{Config: cfg, Redis: testenv.OneNodeCluster(t)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dest, reply string
		wantAdmit   int
	}{
		{"mx:mx.example.net", "421 4.7.0 Try again later", 1},
		{"mx:other.example", "421 4.7.1 go away", 0},
	} {
		if r, err := s.Observe(ctx, tc.dest, []Reply{{Code: 421, Text: tc.reply[4:]}}); r == nil || err != nil {
			t.Fatalf("%s: Observe %v %v", tc.dest, r, err)
		}
		if n, _, err := s.Admit(ctx, tc.dest, 3); err != nil || n != tc.wantAdmit {
			t.Errorf("%s: admitted %d, %v; want %d", tc.dest, n, err, tc.wantAdmit)
		}
		if _, err := s.Inspect(ctx, tc.dest); err != nil {
			t.Error(err)
		}
	}
	if s.stateKey("e:x") != "mailferry:{shape:e:x}:state" || s.rateKey("e:x") != "mailferry:{shape:e:x}:rate" {
		t.Errorf("keys not hash-tagged: %s %s", s.stateKey("e:x"), s.rateKey("e:x"))
	}
}
