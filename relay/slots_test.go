package relay

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailferry/mailferry/smtpclient"
)

// TestDestSlots walks one destination through the feedback: a few slots
// at first, one more per quick transaction up to the cap, halved after a
// slow transaction, one that reached no host, or one answered 421.
func TestDestSlots(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	quick := Attempt{Host: "mx.example.net", Started: t0, Duration: 20 * time.Millisecond}
	slow := Attempt{Host: "mx.example.net", Started: t0, Duration: 30 * time.Second}
	unreached := Attempt{Started: t0, Duration: time.Millisecond}
	closing := Attempt{Host: "mx.example.net", Started: t0, Duration: 20 * time.Millisecond,
		Results: []smtpclient.Result{{Code: 421, Enhanced: "4.7.0"}}}
	d := newDestSlots(10 * time.Second)
	const dest, limit = "mx:mx.example.net", 5

	// hold takes as many slots as it can and reports how many it got.
	hold := func(now time.Time) []*slot {
		var got []*slot
		for range 10 {
			s, _ := d.acquire(dest, limit, now)
			if s == nil {
				break
			}
			got = append(got, s)
		}
		return got
	}
	for i, step := range []struct {
		then Attempt
		want int // slots to be had before step.then is applied
	}{
		// 2, then +1 per quick transaction, capped at 5.
		{quick, 2}, {quick, 4}, {quick, 5},
		// Each unhealthy one halves it, down to one.
		{slow, 5}, {quick, 1}, {unreached, 2}, {quick, 1}, {quick, 2}, {quick, 4}, {closing, 5}, {quick, 1},
	} {
		got := hold(t0)
		if len(got) != step.want {
			t.Fatalf("step %d: got %d slots, want %d", i, len(got), step.want)
		}
		for _, s := range got {
			s.judge(step.then)
			d.release(s)
		}
	}
	if s, _ := d.acquire("mx:other.example", limit, t0); s == nil {
		t.Error("a second destination found no slot: limits must be per destination")
	}
}

// TestDestSlotsWait: a refused job waits as long as the destination's
// oldest transaction has run, within 1s to 1m, so a tarpit's jobs are not
// claimed over and over.
func TestDestSlotsWait(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		age, want time.Duration
	}{
		{0, time.Second}, {5 * time.Second, 5 * time.Second}, {10 * time.Minute, time.Minute},
	} {
		d := newDestSlots(10 * time.Second)
		if s, _ := d.acquire("mx:tarpit.example", 1, t0); s == nil {
			t.Fatal("first acquire refused")
		}
		s, wait := d.acquire("mx:tarpit.example", 1, t0.Add(tc.age))
		if s != nil || wait != tc.want {
			t.Errorf("after %v: slot %v wait %v, want none and %v", tc.age, s, wait, tc.want)
		}
	}
}

// TestDestSlotsForget: idle destinations leave the map; busy ones stay.
func TestDestSlotsForget(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	d := newDestSlots(10 * time.Second)
	idle, _ := d.acquire("mx:idle.example", 8, t0)
	idle.judge(Attempt{Host: "mx", Started: t0, Duration: time.Millisecond})
	d.release(idle)
	if busy, _ := d.acquire("mx:busy.example", 8, t0); busy == nil {
		t.Fatal("acquire refused")
	}
	d.forget(t0.Add(idleForget + time.Minute))
	if _, ok := d.m["mx:idle.example"]; ok {
		t.Error("idle destination kept")
	}
	if _, ok := d.m["mx:busy.example"]; !ok {
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
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	a, b := newDestSlots(10*time.Second), newDestSlots(10*time.Second)
	m.watch(a)
	m.watch(b)
	// mx:busy has 2 in a and 2 in b; 30 others have 1 each in a.
	for range 2 {
		a.acquire("mx:busy.example", 8, t0)
		b.acquire("mx:busy.example", 8, t0)
	}
	for i := range 30 {
		a.acquire(fmt.Sprintf("mx:d%02d.example", i), 8, t0)
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
