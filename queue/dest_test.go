package queue

import (
	"context"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/testenv"
)

// TestDestLeases walks one destination's shared limit through the feedback
// with two workers (two Queues, two consumer names) on one Redis: it starts
// at Start, grows by one per healthy release up to Max, halves per unhealthy
// one, and the count of leases holds across both workers.
func TestDestLeases(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		ctx := context.Background()
		rdb, prefix := shared(t)
		t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
		lim := DestLimit{Start: 2, Max: 5}
		const dest = "mx:mx.example.net"
		var ls []*Leases
		for _, name := range []string{"w1", "w2"} {
			l, err := newQueue(t, rdb, Options{Prefix: prefix, Consumer: name}).Leases(time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			ls = append(ls, l)
		}
		// take asks each worker for up to 10 leases, w1 first.
		type held struct {
			l  *Leases
			id string
		}
		take := func() []held {
			var got []held
			for _, l := range ls {
				ids, _, err := l.Acquire(ctx, dest, 10, lim, t0)
				if err != nil {
					t.Fatal(err)
				}
				for _, id := range ids {
					got = append(got, held{l, id})
				}
			}
			return got
		}
		for i, step := range []struct {
			then Verdict
			want int // leases to be had, over both workers, before step.then is applied to each
		}{
			// 2, then +1 per healthy release, capped at 5.
			{Healthy, 2}, {Healthy, 4}, {Healthy, 5},
			// Each unhealthy one halves it, down to one; unjudged leaves it.
			{Unhealthy, 5}, {Unjudged, 1}, {Healthy, 1}, {Healthy, 2}, {Unhealthy, 4}, {Healthy, 1},
		} {
			got := take()
			if len(got) != step.want {
				t.Fatalf("step %d: got %d leases over two workers, want %d", i, len(got), step.want)
			}
			for _, h := range got {
				if _, _, _, err := h.l.Release(ctx, dest, h.id, step.then, "421 try later", lim, false, t0); err != nil {
					t.Fatal(err)
				}
			}
		}
		if ids, _, _ := ls[0].Acquire(ctx, "mx:other.example", 1, lim, t0); len(ids) != 1 {
			t.Error("a second destination found no lease: limits must be per destination")
		}
		st, err := newQueue(t, rdb, Options{Prefix: prefix}).Destinations(ctx, t0)
		if err != nil {
			t.Fatal(err)
		}
		if len(st) != 2 {
			t.Fatalf("destinations %+v, want 2", st)
		}
		for _, d := range st {
			if d.Name == dest && (d.Limit != 2 || d.Max != 5 || d.LastErr != "421 try later" || d.Inflight != 0) {
				t.Errorf("status %+v: want limit 2 of 5, the last error, none in flight", d)
			}
		}
	})
}

// TestDestLeaseExpiry: a lease its worker stops renewing (the worker was
// killed) is free again after the TTL; a renewed one is not; Renew reports
// the ones lost; a release with handoff passes the slot on in one step.
func TestDestLeaseExpiry(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		ctx := context.Background()
		rdb, prefix := shared(t)
		t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
		lim := DestLimit{Start: 2, Max: 2}
		const dest = "smarthost"
		const ttl = 10 * time.Second
		dead, err := newQueue(t, rdb, Options{Prefix: prefix, Consumer: "dead"}).Leases(ttl)
		if err != nil {
			t.Fatal(err)
		}
		live, err := newQueue(t, rdb, Options{Prefix: prefix, Consumer: "live"}).Leases(ttl)
		if err != nil {
			t.Fatal(err)
		}
		d1, _, _ := dead.Acquire(ctx, dest, 1, lim, t0)
		l1, _, _ := live.Acquire(ctx, dest, 1, lim, t0)
		if len(d1) != 1 || len(l1) != 1 {
			t.Fatalf("leases %v %v, want one each", d1, l1)
		}
		if ids, _, _ := live.Acquire(ctx, dest, 1, lim, t0.Add(ttl-time.Second)); len(ids) != 0 {
			t.Fatalf("granted %v over the limit before the dead worker's lease expired", ids)
		}
		// live renews; dead does not.
		if lost, err := live.Renew(ctx, dest, l1, 3, t0.Add(ttl-time.Second)); err != nil || len(lost) != 0 {
			t.Fatalf("renew: lost %v, %v", lost, err)
		}
		ids, _, _ := live.Acquire(ctx, dest, 5, lim, t0.Add(ttl))
		if len(ids) != 1 {
			t.Fatalf("after the TTL got %d leases, want the dead worker's one back", len(ids))
		}
		st, err := newQueue(t, rdb, Options{Prefix: prefix}).Destinations(ctx, t0.Add(ttl))
		if err != nil || len(st) != 1 || st[0].Queued != 3 || st[0].Inflight != 2 {
			t.Errorf("status %+v, %v: want 3 queued and 2 in flight", st, err)
		}
		if lost, _ := dead.Renew(ctx, dest, d1, 0, t0.Add(ttl)); len(lost) != 1 {
			t.Errorf("dead worker's renew lost %v, want its lease reported", lost)
		}
		next, _, _, err := live.Release(ctx, dest, ids[0], Healthy, "", lim, true, t0.Add(ttl))
		if err != nil || next == "" {
			t.Fatalf("release with handoff: %q, %v", next, err)
		}
		if more, _, _ := live.Acquire(ctx, dest, 1, lim, t0.Add(ttl)); len(more) != 0 {
			t.Errorf("handoff left a slot free: granted %v", more)
		}
	})
}

// TestDestLeaseFairShare: a worker that hands each released lease to its
// own next job keeps no more than its share once another worker has jobs
// waiting: its releases stop handing off above the share, and the other
// worker's acquires take the freed slots up to its own.
func TestDestLeaseFairShare(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		ctx := context.Background()
		rdb, prefix := shared(t)
		t0 := time.Now()
		lim := DestLimit{Start: 4, Max: 4}
		const dest = "mx:mx.example.net"
		a, err := newQueue(t, rdb, Options{Prefix: prefix, Consumer: "a"}).Leases(time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		b, err := newQueue(t, rdb, Options{Prefix: prefix, Consumer: "b"}).Leases(time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		held, _, _ := a.Acquire(ctx, dest, 10, lim, t0)
		if len(held) != 4 {
			t.Fatalf("a alone got %d leases, want all 4", len(held))
		}
		// Both publish waiting jobs (as their hold loops do every heartbeat).
		if _, err := a.Renew(ctx, dest, held, 100, t0); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Renew(ctx, dest, nil, 100, t0); err != nil {
			t.Fatal(err)
		}
		var got []string
		for i, id := range held {
			next, _, _, err := a.Release(ctx, dest, id, Healthy, "", lim, true, t0)
			if err != nil {
				t.Fatal(err)
			}
			ids, _, _ := b.Acquire(ctx, dest, 10, lim, t0)
			got = append(got, ids...)
			// a holds 4-(i+1) others plus next; its share is 2.
			if want := i >= 2; (next != "") != want {
				t.Errorf("release %d by a with %d still held: handed off %q, want a handoff %v", i, 3-i, next, want)
			}
		}
		if len(got) != 2 {
			t.Errorf("b got %d leases, want its share 2", len(got))
		}
	})
}

// TestHandOffRefusedKeepsLease: a handoff the limit refuses leaves the old
// lease held, so the worker can close the connection it kept before the
// slot goes to another worker; Release then frees it. A granted handoff
// swaps the lease for the new one.
func TestHandOffRefusedKeepsLease(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		ctx := context.Background()
		rdb, prefix := shared(t)
		l, err := newQueue(t, rdb, Options{Prefix: prefix, Consumer: "w1"}).Leases(time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		const dest = "mx:mx.example.net"
		lim := DestLimit{Start: 2, Max: 2}
		t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
		ids, _, err := l.Acquire(ctx, dest, 2, lim, t0)
		if err != nil || len(ids) != 2 {
			t.Fatalf("acquire: %v, %v", ids, err)
		}
		// A 421 halves the limit to 1 with the other lease still held.
		next, limit, _, err := l.HandOff(ctx, dest, ids[0], Unhealthy, "421", lim, t0)
		if err != nil || next != "" || limit != 1 {
			t.Fatalf("handoff over the shrunk limit: %q limit %d, %v; want refused at 1", next, limit, err)
		}
		if lost, err := l.Renew(ctx, dest, ids, 0, t0); err != nil || len(lost) != 0 {
			t.Fatalf("after the refused handoff lost %v, %v; want both leases still held", lost, err)
		}
		for _, id := range ids {
			if _, _, _, err := l.Release(ctx, dest, id, Unjudged, "", lim, false, t0); err != nil {
				t.Fatal(err)
			}
		}
		got, _, _ := l.Acquire(ctx, dest, 1, lim, t0)
		if len(got) != 1 {
			t.Fatalf("after both released got %v, want one lease (limit 1)", got)
		}
		next, _, _, err = l.HandOff(ctx, dest, got[0], Healthy, "", lim, t0)
		if err != nil || next == "" {
			t.Fatalf("handoff under the limit: %q, %v; want granted", next, err)
		}
		if lost, _ := l.Renew(ctx, dest, []string{got[0], next}, 0, t0); len(lost) != 1 || lost[0] != got[0] {
			t.Errorf("after a granted handoff lost %v, want the old lease %s gone", lost, got[0])
		}
	})
}
