package relay

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/smtpclient"
)

// newGate is a destination gate over the test Redis, as worker name.
func newGate(t *testing.T, prefix, name string) *destGate {
	t.Helper()
	ro, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(ro)
	t.Cleanup(func() { rdb.Close() })
	q, err := queue.New(rdb, queue.Options{Prefix: prefix, Consumer: name})
	if err != nil {
		t.Fatal(err)
	}
	l, err := q.Leases(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return newDestGate(l, nil, 10*time.Second, time.Now, slog.New(slog.DiscardHandler))
}

// TestDestGateHandoff: with the fleet's one slot taken, a job waits in
// memory; the release hands the slot straight to it (one Redis call, no
// poll), an abandoned wait leaves nothing behind, and a worker that is
// not the holder gets the slot once it is free.
func TestDestGateHandoff(t *testing.T) {
	ctx := context.Background()
	prefix := testenv.KeyPrefix(t)
	a, b := newGate(t, prefix, "a"), newGate(t, prefix, "b")
	const dest = "mx:mx.example.net"
	first, err := a.wait(ctx, ctx, dest, 1)
	if err != nil {
		t.Fatal(err)
	}
	// An abandoned waiter: its context ends while the slot is taken.
	gone, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if s, err := a.wait(gone, ctx, dest, 1); err == nil {
		t.Fatalf("got %+v over the limit", s)
	}
	got := make(chan *slot, 2)
	go func() {
		s, _ := a.wait(ctx, ctx, dest, 1)
		got <- s
	}()
	go func() {
		s, _ := b.wait(ctx, ctx, dest, 1)
		got <- s
	}()
	wait.For(t, "both waiters queued", func() bool {
		la, lb := a.loads(), b.loads()
		return len(la) == 1 && la[0].queued == 1 && len(lb) == 1 && lb[0].queued == 1
	})
	select {
	case s := <-got:
		t.Fatalf("slot %+v granted while the one slot was held", s)
	default:
	}
	first.judge(Attempt{Host: "mx", Duration: time.Millisecond})
	a.release(first) // limit 1 → 1 (max 1): one more transaction
	second := <-got
	if second == nil {
		t.Fatal("no slot after the release")
	}
	second.judge(Attempt{Host: "mx", Duration: time.Millisecond})
	if second.id == first.id {
		t.Error("the handed-on slot reuses the old lease id")
	}
	// The release of the second goes to whichever still waits.
	owner := a
	if len(b.loads()) > 0 && b.loads()[0].inflight == 1 {
		owner = b
	}
	owner.release(second)
	third := <-got
	if third == nil {
		t.Fatal("no slot for the last waiter")
	}
	third.judge(Attempt{Host: "mx", Duration: time.Millisecond})
	if len(a.loads()) > 0 && a.loads()[0].inflight == 1 {
		a.release(third)
	} else {
		b.release(third)
	}
	if l := append(a.loads(), b.loads()...); len(l) != 0 {
		t.Errorf("loads %+v after every slot was released, want none", l)
	}
}

// TestDestGateFeedback: the limit each worker sees is the fleet's: a 421
// halves it for everyone.
func TestDestGateFeedback(t *testing.T) {
	ctx := context.Background()
	prefix := testenv.KeyPrefix(t)
	a, b := newGate(t, prefix, "a"), newGate(t, prefix, "b")
	const dest = "mx:mx.example.net"
	quick := Attempt{Host: "mx", Duration: time.Millisecond}
	closing := Attempt{Host: "mx", Duration: time.Millisecond, Results: []smtpclient.Result{{Code: 421, Line: "busy"}}}
	for range 6 { // 2 → 8
		s, err := a.wait(ctx, ctx, dest, 8)
		if err != nil {
			t.Fatal(err)
		}
		s.judge(quick)
		a.release(s)
	}
	s, _ := b.wait(ctx, ctx, dest, 8)
	s.judge(closing)
	b.release(s)
	if l := b.limitOf(dest); l != 4 {
		t.Errorf("limit after a 421 at 8: %d, want 4", l)
	}
	s, _ = a.wait(ctx, ctx, dest, 8)
	if l := a.limitOf(dest); l != 4 {
		t.Errorf("other worker sees limit %d, want the shared 4", l)
	}
	a.release(s)
}

func (g *destGate) limitOf(dest string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.m[dest].limit
}

// TestDestGateForget: idle destinations leave the map; busy ones stay.
func TestDestGateForget(t *testing.T) {
	ctx := context.Background()
	g := newGate(t, testenv.KeyPrefix(t), "w")
	idle, err := g.wait(ctx, ctx, "mx:idle.example", 8)
	if err != nil {
		t.Fatal(err)
	}
	g.release(idle)
	if _, err := g.wait(ctx, ctx, "mx:busy.example", 8); err != nil {
		t.Fatal(err)
	}
	g.forget(time.Now().Add(idleForget + time.Minute))
	if _, ok := g.m["mx:idle.example"]; ok {
		t.Error("idle destination kept")
	}
	if _, ok := g.m["mx:busy.example"]; !ok {
		t.Error("destination with a transaction in flight forgotten")
	}
}

// TestDestinationOf: domains whose first MX host is the same share a
// destination, whatever their backups, preferences' shuffle or case.
func TestDestinationOf(t *testing.T) {
	google := []Host{{Name: "alt1.aspmx.l.google.com", Preference: 5}, {Name: "aspmx.l.google.com", Preference: 1}, {Name: "alt2.aspmx.l.google.com", Preference: 5}}
	for _, tc := range []struct {
		name  string
		hosts []Host
		want  string
	}{
		{"one host", []Host{{Name: "mx.example.net", Preference: 10}}, "mx:mx.example.net"},
		{"lowest preference first", google, "mx:aspmx.l.google.com"},
		{"same set, other order", []Host{google[2], google[1], google[0]}, "mx:aspmx.l.google.com"},
		{"backups lost", google[1:2], "mx:aspmx.l.google.com"},
		{"equal preference by name", []Host{{Name: "b.mx.example", Preference: 10}, {Name: "a.mx.example", Preference: 10}}, "mx:a.mx.example"},
		{"none", nil, ""},
	} {
		if got := destinationOf(tc.hosts); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestDestinationGauges: the busiest destinations get a series each, over
// every worker of the process; the rest are summed as "other", so the
// label count stays bounded however many destinations there are.
func TestDestinationGauges(t *testing.T) {
	ctx := context.Background()
	prefix := testenv.KeyPrefix(t)
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	a, b := newGate(t, prefix, "a"), newGate(t, prefix, "b")
	m.watch(a)
	m.watch(b)
	// mx:busy has 2 in a and 2 in b, once two quick transactions earned
	// it 4; 30 others have 1 each in a.
	for range 2 {
		s, _ := a.wait(ctx, ctx, "mx:busy.example", 4)
		s.judge(Attempt{Host: "mx", Duration: time.Millisecond})
		a.release(s)
	}
	for range 2 {
		a.wait(ctx, ctx, "mx:busy.example", 4)
		b.wait(ctx, ctx, "mx:busy.example", 4)
	}
	for i := range 30 {
		a.wait(ctx, ctx, fmt.Sprintf("mx:d%02d.example", i), 8)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	series := 0
	for _, f := range families {
		if f.GetName() != "mailferry_destination_inflight" {
			continue
		}
		for _, s := range f.GetMetric() {
			series++
			got[s.GetLabel()[0].GetValue()] = s.GetGauge().GetValue()
		}
	}
	if series != topDestinations+1 {
		t.Errorf("%d series, want %d (the top destinations and other)", series, topDestinations+1)
	}
	if got["mx:busy.example"] != 4 {
		t.Errorf("mx:busy.example in flight %v, want 4 (summed over workers)", got["mx:busy.example"])
	}
	// 31 destinations: busy and 19 of the 30 have series, 11 are other.
	if got["other"] != 11 {
		t.Errorf("other %v, want 11", got["other"])
	}
}
