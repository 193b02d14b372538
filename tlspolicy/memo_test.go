package tlspolicy

import (
	"fmt"
	"testing"
	"time"

	"github.com/mailferry/mailferry/store"
)

func TestMemo(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	soon := &store.STSPolicy{Domain: "soon.test", ExpiresAt: now.Add(10 * time.Second)}
	later := &store.STSPolicy{Domain: "later.test", ExpiresAt: now.Add(time.Hour)}
	m := newMemo(time.Minute, 3)
	m.put("none.test", nil, now)
	m.put("soon.test", soon, now)
	m.put("later.test", later, now)
	tests := []struct {
		domain string
		at     time.Duration
		want   *store.STSPolicy
		ok     bool
	}{
		{"none.test", 59 * time.Second, nil, true}, // no policy is remembered too
		{"none.test", time.Minute, nil, false},
		{"soon.test", 9 * time.Second, soon, true},
		{"soon.test", 10 * time.Second, nil, false}, // never past the policy's max_age
		{"later.test", 59 * time.Second, later, true},
		{"unknown.test", 0, nil, false},
	}
	for _, tc := range tests {
		got, ok := m.get(tc.domain, now.Add(tc.at))
		if got != tc.want || ok != tc.ok {
			t.Errorf("get(%s, +%v) = %v, %v; want %v, %v", tc.domain, tc.at, got, ok, tc.want, tc.ok)
		}
	}
	// Full: expired entries go first, then everything; it never grows past max.
	m.put("fourth.test", nil, now.Add(30*time.Second))
	if _, ok := m.get("soon.test", now); ok {
		t.Error("an expired entry was kept when the memo was full")
	}
	for i := range 10 {
		m.put(fmt.Sprintf("d%d.test", i), nil, now.Add(30*time.Second))
		if n := len(m.m); n > 3 {
			t.Fatalf("memo holds %d entries, max 3", n)
		}
	}
	off := newMemo(-1, 3)
	off.put("none.test", nil, now)
	if _, ok := off.get("none.test", now); ok {
		t.Error("a memo with a negative lifetime remembered")
	}
}

// Counts that cannot be written are kept for the next flush.
func TestFlushCountsKeepsOnFailure(t *testing.T) {
	e, _ := world(t)
	broken := e.openStore()
	broken.Close()
	c := e.client(broken, nil)
	c.count(e.now, "kept.test", "sts", "mx.kept.test", "")
	c.count(e.now, "kept.test", "sts", "mx.kept.test", "")
	if err := c.FlushCounts(t.Context()); err == nil {
		t.Fatal("flush to a closed store succeeded")
	}
	c.opts.Cache = e.store
	if err := c.FlushCounts(t.Context()); err != nil {
		t.Fatal(err)
	}
	counts, err := e.store.TLSResultCounts(t.Context(), "kept.test", e.now.AddDate(0, 0, -1), e.now.AddDate(0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	if len(counts) != 1 || counts[0].Count != 2 {
		t.Errorf("counts %+v, want one row of 2", counts)
	}
}
