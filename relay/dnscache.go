package relay

import (
	"container/list"
	"context"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Cache lifetimes. Answers live as long as their TTL says, within bounds.
const (
	// defaultDNSCacheSize bounds the answers a Router keeps; an entry is a
	// few hundred bytes, so the cache stays within a few megabytes however
	// many domains the queue names.
	defaultDNSCacheSize = 10000
	// maxPositiveTTL caps how long records are reused: a zone that publishes
	// a TTL of a week still gets asked again hourly, so a repointed MX is
	// seen within the hour.
	maxPositiveTTL = time.Hour
	// maxNegativeTTL caps how long NXDOMAIN and NODATA are reused (RFC 2308
	// 5 suggests 1–3 hours; a mail relay wants a domain that is being set
	// up to start working sooner).
	maxNegativeTTL = 5 * time.Minute
	// minCacheTTL is the floor: an answer with TTL 0 (or 1) is still reused
	// for a moment, so a burst of mail to one domain asks once, not per
	// message.
	minCacheTTL = 5 * time.Second
)

// dnsKey names one question: a canonical name (lower case, no trailing dot)
// and a type. The class is always IN.
type dnsKey struct {
	name  string
	qtype uint16
}

// dnsAnswer is what a Router keeps of one response: its rcode and the
// records of the question's type, the CNAME chain already followed. Its
// slices are shared by every reader and must not be modified.
type dnsAnswer struct {
	rcode int
	mxs   []mxRecord   // for MX
	addrs []netip.Addr // for A and AAAA; not filtered by the guard
}

// mxRecord is one MX record; host is as published ("." for a null MX).
type mxRecord struct {
	host string
	pref uint16
}

// parseAnswer extracts from resp what Route and resolve need.
func parseAnswer(resp *dns.Msg, name string, qtype uint16) dnsAnswer {
	ans := dnsAnswer{rcode: resp.Rcode}
	if resp.Rcode != dns.RcodeSuccess {
		return ans
	}
	switch qtype {
	case dns.TypeMX:
		for _, rr := range answers[*dns.MX](resp, name, qtype) {
			ans.mxs = append(ans.mxs, mxRecord{host: rr.Mx, pref: rr.Preference})
		}
	case dns.TypeA:
		for _, rr := range answers[*dns.A](resp, name, qtype) {
			if a, ok := netip.AddrFromSlice(rr.A.To4()); ok {
				ans.addrs = append(ans.addrs, a)
			}
		}
	case dns.TypeAAAA:
		for _, rr := range answers[*dns.AAAA](resp, name, qtype) {
			if a, ok := netip.AddrFromSlice(rr.AAAA); ok && len(rr.AAAA) == net.IPv6len {
				ans.addrs = append(ans.addrs, a) // kept as 16 bytes: the guard unmaps
			}
		}
	}
	return ans
}

// cacheTTL says how long resp may be reused, and whether at all.
//
//   - Records: the smallest TTL in the answer section (the RRset and any
//     CNAMEs leading to it), capped at maxPositiveTTL.
//   - NXDOMAIN and NODATA: the smaller of the SOA record's TTL and its
//     MINIMUM field (RFC 2308 5), capped at maxNegativeTTL. Without an SOA
//     in the authority section it is not cached (RFC 2308 5: "SHOULD NOT").
//   - Anything else (SERVFAIL, REFUSED, …) is not cached: the next delivery
//     asks again.
//
// Either kind is kept at least minCacheTTL.
func cacheTTL(resp *dns.Msg, ans dnsAnswer) (time.Duration, bool) {
	if resp.Rcode != dns.RcodeSuccess && resp.Rcode != dns.RcodeNameError {
		return 0, false
	}
	// Every answer record counts, including any the CNAME walk did not
	// use: an unrelated record can only shorten the lifetime.
	ttl, hasTTL := uint32(0), false
	lower := func(t uint32) {
		if !hasTTL || t < ttl {
			ttl, hasTTL = t, true
		}
	}
	for _, rr := range resp.Answer {
		lower(rr.Header().Ttl)
	}
	limit := maxPositiveTTL
	if resp.Rcode == dns.RcodeNameError || (len(ans.mxs) == 0 && len(ans.addrs) == 0) {
		var soa *dns.SOA
		for _, rr := range resp.Ns {
			if s, ok := rr.(*dns.SOA); ok {
				soa = s
				break
			}
		}
		if soa == nil {
			return 0, false
		}
		lower(soa.Hdr.Ttl)
		lower(soa.Minttl)
		limit = maxNegativeTTL
	}
	d := time.Duration(ttl) * time.Second
	return min(max(d, minCacheTTL), limit), true
}

// dnsCache holds answers until they expire, evicting the least recently
// used when full. It is safe for concurrent use.
type dnsCache struct {
	max int

	mu      sync.Mutex
	entries map[dnsKey]*list.Element // of *cacheEntry
	lru     list.List                // front: most recently used
}

type cacheEntry struct {
	key     dnsKey
	ans     dnsAnswer
	expires time.Time
}

func newDNSCache(size int) *dnsCache {
	return &dnsCache{max: size, entries: make(map[dnsKey]*list.Element)}
}

// get returns the answer for k unless it is missing or expired at now.
func (c *dnsCache) get(k dnsKey, now time.Time) (dnsAnswer, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[k]
	if !ok {
		return dnsAnswer{}, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.lru.Remove(el)
		delete(c.entries, k)
		return dnsAnswer{}, false
	}
	c.lru.MoveToFront(el)
	return e.ans, true
}

// put stores ans for k until expires, evicting the least recently used
// entries beyond the size limit.
func (c *dnsCache) put(k dnsKey, ans dnsAnswer, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[k]; ok {
		e := el.Value.(*cacheEntry)
		e.ans, e.expires = ans, expires
		c.lru.MoveToFront(el)
		return
	}
	c.entries[k] = c.lru.PushFront(&cacheEntry{key: k, ans: ans, expires: expires})
	for c.lru.Len() > c.max {
		el := c.lru.Back()
		c.lru.Remove(el)
		delete(c.entries, el.Value.(*cacheEntry).key)
	}
}

// len reports how many answers the cache holds, expired ones included.
func (c *dnsCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// flightGroup makes concurrent lookups of one question share a single
// query, like golang.org/x/sync/singleflight, with one difference: the
// shared query runs on its own context, cancelled only once every caller
// waiting for it has given up, so one delivery's cancellation does not fail
// the others and an abandoned query does not outlive its callers.
type flightGroup struct {
	mu    sync.Mutex
	calls map[dnsKey]*flightCall
}

type flightCall struct {
	done    chan struct{}
	ans     dnsAnswer
	err     error
	waiters int
	cancel  context.CancelFunc
}

// do returns fn's result for k, starting fn unless a call for k is already
// under way. fn runs in its own goroutine with a context that carries ctx's
// values but not its cancellation.
func (g *flightGroup) do(ctx context.Context, k dnsKey, fn func(context.Context) (dnsAnswer, error)) (dnsAnswer, error) {
	g.mu.Lock()
	c, ok := g.calls[k]
	if !ok {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		c = &flightCall{done: make(chan struct{}), cancel: cancel}
		if g.calls == nil {
			g.calls = make(map[dnsKey]*flightCall)
		}
		g.calls[k] = c
		go func() {
			defer close(c.done)
			c.ans, c.err = fn(fctx)
			cancel()
			g.forget(k, c)
		}()
	}
	c.waiters++
	g.mu.Unlock()

	select {
	case <-c.done:
		return c.ans, c.err
	case <-ctx.Done():
		g.mu.Lock()
		c.waiters--
		last := c.waiters == 0
		if last {
			g.forgetLocked(k, c) // a later caller starts afresh
		}
		g.mu.Unlock()
		if last {
			c.cancel()
		}
		return dnsAnswer{}, ctx.Err()
	}
}

func (g *flightGroup) forget(k dnsKey, c *flightCall) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.forgetLocked(k, c)
}

func (g *flightGroup) forgetLocked(k dnsKey, c *flightCall) {
	if g.calls[k] == c {
		delete(g.calls, k)
	}
}

// lookup answers name's qtype question from the cache or, on a miss, by
// asking the servers (once for all concurrent callers) and caching what
// may be cached. A temporary failure is returned as an error or as an
// answer with a failure rcode, never cached.
func (r *Router) lookup(ctx context.Context, name string, qtype uint16) (dnsAnswer, error) {
	k := dnsKey{name: name, qtype: qtype}
	if r.cache != nil {
		if ans, ok := r.cache.get(k, r.now()); ok {
			return ans, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return dnsAnswer{}, err
	}
	return r.flight.do(ctx, k, func(ctx context.Context) (dnsAnswer, error) {
		if r.cache != nil {
			// A call that finished between our miss and now has cached.
			if ans, ok := r.cache.get(k, r.now()); ok {
				return ans, nil
			}
		}
		resp, err := r.query(ctx, name, qtype)
		if err != nil {
			return dnsAnswer{}, err
		}
		ans := parseAnswer(resp, name, qtype)
		if r.cache != nil {
			if ttl, ok := cacheTTL(resp, ans); ok {
				r.cache.put(k, ans, r.now().Add(ttl))
			}
		}
		return ans, nil
	})
}
