package relay

import (
	"testing"
	"time"
)

// TestDomainSlots walks one domain through the feedback: one slot at
// first, one more per quick transaction up to the cap, back to one after
// a slow transaction or one that reached no host.
func TestDomainSlots(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	quick := Attempt{Host: "mx.example.net", Started: t0, Duration: 20 * time.Millisecond}
	slow := Attempt{Host: "mx.example.net", Started: t0, Duration: 30 * time.Second}
	unreached := Attempt{Started: t0, Duration: time.Millisecond}
	d := newDomainSlots(3, 10*time.Second)

	// hold takes as many slots as it can and reports how many it got.
	hold := func(now time.Time) []*slot {
		var got []*slot
		for range 10 {
			s, _ := d.acquire("example.net", now)
			if s == nil {
				break
			}
			got = append(got, s)
		}
		return got
	}
	finish := func(ss []*slot, a Attempt) {
		for _, s := range ss {
			s.judge(a)
			d.release(s)
		}
	}
	for _, step := range []struct {
		then Attempt
		want int // slots to be had before step.then is applied
	}{
		{quick, 1}, {quick, 2}, {quick, 3}, {quick, 3}, {slow, 3}, {quick, 1}, {unreached, 2}, {quick, 1},
	} {
		got := hold(t0)
		if len(got) != step.want {
			t.Fatalf("got %d slots, want %d", len(got), step.want)
		}
		finish(got, step.then)
	}
	if s, _ := d.acquire("other.example", t0); s == nil {
		t.Error("a second domain found no slot: limits must be per domain")
	}
}

// TestDomainSlotsWait: a refused job waits as long as the domain's oldest
// transaction has run, within 1s to 1m, so a tarpit's jobs are not
// claimed over and over.
func TestDomainSlotsWait(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		age, want time.Duration
	}{
		{0, time.Second}, {5 * time.Second, 5 * time.Second}, {10 * time.Minute, time.Minute},
	} {
		d := newDomainSlots(8, 10*time.Second)
		if s, _ := d.acquire("tarpit.example", t0); s == nil {
			t.Fatal("first acquire refused")
		}
		s, wait := d.acquire("tarpit.example", t0.Add(tc.age))
		if s != nil || wait != tc.want {
			t.Errorf("after %v: slot %v wait %v, want none and %v", tc.age, s, wait, tc.want)
		}
	}
}

// TestDomainSlotsForget: idle domains leave the map; busy ones stay.
func TestDomainSlotsForget(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	d := newDomainSlots(8, 10*time.Second)
	idle, _ := d.acquire("idle.example", t0)
	idle.judge(Attempt{Host: "mx", Started: t0, Duration: time.Millisecond})
	d.release(idle)
	if busy, _ := d.acquire("busy.example", t0); busy == nil {
		t.Fatal("acquire refused")
	}
	d.forget(t0.Add(idleForget + time.Minute))
	if _, ok := d.m["idle.example"]; ok {
		t.Error("idle domain kept")
	}
	if _, ok := d.m["busy.example"]; !ok {
		t.Error("domain with a transaction in flight forgotten")
	}
}
