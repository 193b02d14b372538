package tlspolicy

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/mailferry/mailferry/store"
)

// memo keeps each recipient domain's MTA-STS lookup (the TXT record and
// the shared cache's answer) in the process for a short while: without it
// every attempt costs a DNS query and a PostgreSQL read, most of them for
// domains that have no policy at all. RFC 8461 3.3 asks for a policy check
// when a message is sent, not a fresh TXT query per message; a policy that
// changes is seen within the memo's lifetime.
type memo struct {
	ttl time.Duration
	max int

	mu sync.Mutex
	m  map[string]memoEntry
}

type memoEntry struct {
	pol   *store.STSPolicy // nil: no policy in force
	until time.Time
}

func newMemo(ttl time.Duration, max int) *memo {
	return &memo{ttl: ttl, max: max, m: make(map[string]memoEntry)}
}

func (m *memo) get(domain string, now time.Time) (*store.STSPolicy, bool) {
	if m.ttl <= 0 {
		return nil, false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.m[domain]
	if !ok || !now.Before(e.until) {
		return nil, false
	}
	return e.pol, true
}

func (m *memo) put(domain string, pol *store.STSPolicy, now time.Time) {
	if m.ttl <= 0 {
		return
	}
	until := now.Add(m.ttl)
	if pol != nil && pol.ExpiresAt.Before(until) {
		until = pol.ExpiresAt // RFC 8461 5.1: never past max_age
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.m) >= m.max {
		for d, e := range m.m {
			if !now.Before(e.until) {
				delete(m.m, d)
			}
		}
		if len(m.m) >= m.max {
			clear(m.m) // a flood of distinct domains: start over rather than grow
		}
	}
	m.m[domain] = memoEntry{pol: pol, until: until}
}

// tally adds up TLS-RPT results (RFC 8460 4.4) in the process and writes
// them to the shared counts in one statement now and then, so that a busy
// destination's attempts do not all queue on one counter row. Counts not
// yet written when the process dies are lost: they feed a daily report,
// not the fate of any message.
type tally struct {
	mu sync.Mutex
	m  map[tallyKey]int64
}

type tallyKey struct {
	day                                      time.Time
	policyDomain, policyType, mxHost, result string
}

func (t *tally) add(k tallyKey, n int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = make(map[tallyKey]int64)
	}
	t.m[k] += n
}

// take empties the tally, in key order so that concurrent writers lock
// counter rows in one order.
func (t *tally) take() []store.TLSResultCount {
	t.mu.Lock()
	m := t.m
	t.m = nil
	t.mu.Unlock()
	out := make([]store.TLSResultCount, 0, len(m))
	for k, n := range m {
		out = append(out, store.TLSResultCount{Day: k.day, PolicyDomain: k.policyDomain, PolicyType: k.policyType,
			MXHost: k.mxHost, Result: k.result, Count: n})
	}
	slices.SortFunc(out, func(a, b store.TLSResultCount) int {
		return cmp.Or(a.Day.Compare(b.Day), cmp.Compare(a.PolicyDomain, b.PolicyDomain), cmp.Compare(a.PolicyType, b.PolicyType),
			cmp.Compare(a.MXHost, b.MXHost), cmp.Compare(a.Result, b.Result))
	})
	return out
}

// count adds one result to the tally.
func (c *Client) count(day time.Time, policyDomain, policyType, mxHost, result string) {
	c.tally.add(tallyKey{day: day.UTC().Truncate(24 * time.Hour), policyDomain: policyDomain, policyType: policyType,
		mxHost: mxHost, result: result}, 1)
}

// FlushCounts writes the TLS-RPT results counted since the last flush; on
// failure they are kept for the next one.
func (c *Client) FlushCounts(ctx context.Context) error {
	counts := c.tally.take()
	if len(counts) == 0 {
		return nil
	}
	if err := c.opts.Cache.AddTLSResultCounts(ctx, counts); err != nil {
		for _, r := range counts {
			c.tally.add(tallyKey{day: r.Day, policyDomain: r.PolicyDomain, policyType: r.PolicyType, mxHost: r.MXHost, result: r.Result}, r.Count)
		}
		return fmt.Errorf("tlspolicy: flush TLS-RPT counts: %w", err)
	}
	return nil
}

// RunCounts flushes the TLS-RPT counts every interval until ctx ends, then
// once more, so that a clean shutdown loses none.
func (c *Client) RunCounts(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if err := c.FlushCounts(fctx); err != nil {
				c.opts.Logger.Warn("TLS-RPT counts lost at shutdown", "error", err)
			}
			return nil
		case <-t.C:
			if err := c.FlushCounts(ctx); err != nil && ctx.Err() == nil {
				c.opts.Logger.WarnContext(ctx, "TLS-RPT counts not written yet", "error", err)
			}
		}
	}
}
