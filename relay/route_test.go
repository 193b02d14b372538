package relay

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/wait"

	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/store"
)

func newRouter(t *testing.T, d *testmx.DNS, edit func(*RouterOptions)) *Router {
	t.Helper()
	opts := RouterOptions{DNSServer: d.Addr(), AllowPrivate: true, LookupTimeout: time.Second,
		Rand: func(n int) int { return 0 }}
	if edit != nil {
		edit(&opts)
	}
	r, err := NewRouter(opts)
	if err != nil {
		t.Fatalf("NewRouter: %v", err)
	}
	return r
}

// describe renders hosts as "name/pref=addr,addr" for comparison.
func describe(hosts []Host) string {
	var parts []string
	for _, h := range hosts {
		var addrs []string
		for _, a := range h.Addrs {
			addrs = append(addrs, a.String())
		}
		parts = append(parts, fmt.Sprintf("%s/%d=%s", h.Name, h.Preference, strings.Join(addrs, ",")))
	}
	return strings.Join(parts, " ")
}

func TestRoute(t *testing.T) {
	for _, tc := range []struct {
		name      string
		zone      func(d *testmx.DNS)
		want      string // hosts, or "" when an error is expected
		wantErr   error  // matched with errors.Is, may be nil with a temporary error
		permanent bool
	}{
		{
			name: "MX in preference order, IPv4 first",
			zone: func(d *testmx.DNS) {
				d.MX("example.net", 20, "mx2.example.net")
				d.MX("example.net", 10, "mx1.example.net")
				d.A("mx1.example.net", "127.0.0.2")
				d.AAAA("mx1.example.net", "::1")
				d.A("mx2.example.net", "127.0.0.3")
			},
			want: "mx1.example.net/10=127.0.0.2,::1 mx2.example.net/20=127.0.0.3",
		},
		{
			name: "implicit MX: no MX records, the domain's own address",
			zone: func(d *testmx.DNS) { d.A("example.net", "127.0.0.4") },
			want: "example.net/0=127.0.0.4",
		},
		{
			name: "null MX bounces",
			zone: func(d *testmx.DNS) {
				d.MX("example.net", 0, ".")
				d.A("example.net", "127.0.0.4") // must not become an implicit MX
			},
			wantErr: ErrNullMX, permanent: true,
		},
		{
			name:    "NXDOMAIN bounces",
			zone:    func(d *testmx.DNS) { d.NXDOMAIN("example.net") },
			wantErr: ErrNoSuchDomain, permanent: true,
		},
		{
			name: "SERVFAIL defers",
			zone: func(d *testmx.DNS) { d.ServFail("example.net") },
		},
		{
			name: "timeout defers",
			zone: func(d *testmx.DNS) { d.Timeout("example.net") },
		},
		{
			name: "MX host with NXDOMAIN is skipped",
			zone: func(d *testmx.DNS) {
				d.MX("example.net", 10, "gone.example.net")
				d.MX("example.net", 20, "mx2.example.net")
				d.NXDOMAIN("gone.example.net")
				d.A("mx2.example.net", "127.0.0.3")
			},
			want: "mx2.example.net/20=127.0.0.3",
		},
		{
			name: "no MX host resolves: temporary",
			zone: func(d *testmx.DNS) {
				d.MX("example.net", 10, "gone.example.net")
				d.NXDOMAIN("gone.example.net")
			},
			wantErr: ErrNoAddress,
		},
		{
			name: "MX host lookup SERVFAIL beside a host that has no address: temporary",
			zone: func(d *testmx.DNS) {
				d.MX("example.net", 10, "broken.example.net")
				d.ServFail("broken.example.net")
			},
		},
		{
			name:    "neither MX nor address: permanent",
			zone:    func(d *testmx.DNS) { d.TXT("example.net", "v=spf1 -all") },
			wantErr: ErrNoAddress, permanent: true,
		},
		{
			name: "MX target behind a CNAME",
			zone: func(d *testmx.DNS) {
				d.MX("example.net", 10, "alias.example.net")
				d.CNAME("alias.example.net", "real.example.org")
				d.A("real.example.org", "127.0.0.5")
			},
			want: "alias.example.net/10=127.0.0.5",
		},
		{
			name: "duplicate MX targets collapse; a stray '.' is ignored",
			zone: func(d *testmx.DNS) {
				d.MX("example.net", 10, "mx1.example.net")
				d.MX("example.net", 30, "mx1.example.net")
				d.MX("example.net", 5, ".")
				d.A("mx1.example.net", "127.0.0.2")
			},
			want: "mx1.example.net/10=127.0.0.2",
		},
		{
			name: "trailing dot and upper case in the domain",
			zone: func(d *testmx.DNS) {
				d.MX("example.net", 10, "MX1.Example.NET")
				d.A("mx1.example.net", "127.0.0.2")
			},
			want: "mx1.example.net/10=127.0.0.2",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := testmx.StartDNS(t)
			tc.zone(d)
			r := newRouter(t, d, nil)
			domain := "example.net"
			if strings.HasPrefix(tc.name, "trailing dot") {
				domain = "Example.NET."
			}
			start := time.Now()
			hosts, err := r.Route(context.Background(), domain)
			if time.Since(start) > 5*time.Second {
				t.Errorf("Route took %v: a timeout is not bounded", time.Since(start))
			}
			if tc.want != "" {
				if err != nil {
					t.Fatalf("Route: %v", err)
				}
				if got := describe(hosts); got != tc.want {
					t.Errorf("hosts\n got %s\nwant %s", got, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Route = %s, want an error", describe(hosts))
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v, want %v", err, tc.wantErr)
			}
			if Permanent(err) != tc.permanent {
				t.Errorf("Permanent(%v) = %v, want %v", err, Permanent(err), tc.permanent)
			}
			res := RouteResult(err)
			wantStatus, wantClass := store.RecipientDeferred, "4."
			if tc.permanent {
				wantStatus, wantClass = store.RecipientBounced, "5."
			}
			if recipientOutcome(res) != wantStatus || !strings.HasPrefix(res.Enhanced, wantClass) {
				t.Errorf("RouteResult = %+v, want status %s and enhanced %sx.x", res, wantStatus, wantClass)
			}
		})
	}
}

// TestRouteShuffle: hosts of equal preference come in the order Rand picks,
// so load spreads; different preferences never mix.
func TestRouteShuffle(t *testing.T) {
	d := testmx.StartDNS(t)
	for i, name := range []string{"a", "b", "c"} {
		d.MX("example.net", 10, name+".example.net")
		d.A(name+".example.net", fmt.Sprintf("127.0.0.%d", i+2))
	}
	d.MX("example.net", 5, "first.example.net")
	d.A("first.example.net", "127.0.0.9")
	d.MX("example.net", 50, "last.example.net")
	d.A("last.example.net", "127.0.0.10")

	seen := make(map[string]bool)
	for seed := range 12 {
		calls := seed
		r := newRouter(t, d, func(o *RouterOptions) {
			o.Rand = func(n int) int { calls = calls*7 + 3; return calls % n }
		})
		hosts, err := r.Route(context.Background(), "example.net")
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, h := range hosts {
			names = append(names, strings.TrimSuffix(h.Name, ".example.net"))
		}
		if names[0] != "first" || names[4] != "last" {
			t.Fatalf("order %v: preferences mixed", names)
		}
		mid := slices.Clone(names[1:4])
		slices.Sort(mid)
		if !slices.Equal(mid, []string{"a", "b", "c"}) {
			t.Fatalf("order %v: lost a host", names)
		}
		seen[strings.Join(names[1:4], "")] = true
	}
	if len(seen) < 2 {
		t.Errorf("equal-preference hosts always came in the same order %v: not shuffled", seen)
	}
}

// TestRouteTruncated: a truncated UDP answer is asked again over TCP.
func TestRouteTruncated(t *testing.T) {
	d := testmx.StartDNS(t)
	d.MX("example.net", 10, "mx1.example.net")
	d.A("mx1.example.net", "127.0.0.2")
	d.Truncate("example.net")
	hosts, err := newRouter(t, d, nil).Route(context.Background(), "example.net")
	if err != nil {
		t.Fatalf("Route: %v", err)
	}
	if got := describe(hosts); got != "mx1.example.net/10=127.0.0.2" {
		t.Errorf("hosts %s", got)
	}
	var nets []string
	for _, q := range d.Queries() {
		if q.Name == "example.net." && q.Type == "MX" {
			nets = append(nets, q.Net)
		}
	}
	if !slices.Equal(nets, []string{"udp", "tcp"}) {
		t.Errorf("MX queries went over %v, want udp then tcp", nets)
	}
}

// TestRouteCancel: a cancelled context ends a lookup the server ignores at
// once, not after LookupTimeout.
func TestRouteCancel(t *testing.T) {
	d := testmx.StartDNS(t)
	d.Timeout("example.net")
	r := newRouter(t, d, func(o *RouterOptions) { o.LookupTimeout = time.Minute })
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err := r.Route(ctx, "example.net")
	if err == nil || Permanent(err) || !errors.Is(err, context.Canceled) {
		t.Errorf("Route = %v, want a temporary error caused by cancellation", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Route returned after %v", d)
	}
}

func TestResolve(t *testing.T) {
	d := testmx.StartDNS(t)
	d.A("smtp.example.net", "127.0.0.7")
	h, err := newRouter(t, d, nil).Resolve(context.Background(), "smtp.example.net")
	if err != nil || describe([]Host{h}) != "smtp.example.net/0=127.0.0.7" {
		t.Errorf("Resolve = %s, %v", describe([]Host{h}), err)
	}
	if _, err := newRouter(t, d, nil).Resolve(context.Background(), "none.example.net"); err == nil || Permanent(err) {
		t.Errorf("Resolve of an unknown name = %v, want a temporary error", err)
	}
}

func TestNewRouter(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", "nameserver 127.0.0.53\nnameserver 127.0.0.54\n")
	empty := write("empty", "search example.net\n")

	r, err := NewRouter(RouterOptions{ResolvConf: good})
	if err != nil || !slices.Equal(r.servers, []string{"127.0.0.53:53", "127.0.0.54:53"}) {
		t.Errorf("system resolver: servers %v, %v", r.servers, err)
	}
	for name, opts := range map[string]RouterOptions{
		"no nameserver":     {ResolvConf: empty},
		"missing file":      {ResolvConf: filepath.Join(dir, "nope")},
		"server sans port":  {DNSServer: "127.0.0.1"},
		"server is garbage": {DNSServer: "::::"},
	} {
		if _, err := NewRouter(opts); err == nil {
			t.Errorf("%s: NewRouter accepted %+v", name, opts)
		}
	}
}

// fakeClock is a settable time source for RouterOptions.Now.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// routeOutcome renders what Route returned: hosts as describe does, or the kind
// of error.
func routeOutcome(hosts []Host, err error) string {
	if err == nil {
		return describe(hosts)
	}
	for _, e := range []struct {
		err  error
		name string
	}{{ErrNullMX, "null MX"}, {ErrNoSuchDomain, "NXDOMAIN"}, {ErrPrivateOnly, "private only"}, {ErrNoAddress, "no address"}} {
		if errors.Is(err, e.err) {
			return fmt.Sprintf("error %s permanent=%v", e.name, Permanent(err))
		}
	}
	return fmt.Sprintf("error permanent=%v", Permanent(err))
}

// TestRouterCache: each step advances the injected clock, routes
// example.net, and checks the outcome and how many questions reached the
// server. Cached answers are served without a question until their TTL
// (bounded) runs out; failures are not cached.
func TestRouterCache(t *testing.T) {
	type step struct {
		after   time.Duration // clock advance before this Route
		queries int           // questions the server gets for it
		want    string        // outcome
	}
	const mx1 = "mx1.example.net/10=127.0.0.2"
	// withHost publishes example.net → mx1 with an A record and, under an
	// SOA, no AAAA (NODATA, cached by the SOA).
	withHost := func(ttl, soaTTL, soaMin uint32) func(d *testmx.DNS) {
		return func(d *testmx.DNS) {
			d.SOA("example.net", soaTTL, soaMin)
			d.TTL(ttl)
			d.MX("example.net", 10, "mx1.example.net")
			d.A("mx1.example.net", "127.0.0.2")
		}
	}
	for _, tc := range []struct {
		name  string
		zone  func(d *testmx.DNS)
		edit  func(o *RouterOptions)
		steps []step
	}{
		{
			name: "records and NODATA served from the cache until their TTL",
			zone: withHost(300, 300, 300),
			steps: []step{
				{0, 3, mx1}, // MX, A, AAAA
				{time.Second, 0, mx1},
				{298 * time.Second, 0, mx1},
				{time.Second, 3, mx1}, // 300s: all expired
				{time.Second, 0, mx1},
			},
		},
		{
			name: "each RRset expires by its own (minimum) TTL",
			zone: func(d *testmx.DNS) {
				d.SOA("example.net", 3600, 3600)
				d.TTL(600)
				d.MX("example.net", 10, "mx1.example.net")
				d.A("mx1.example.net", "127.0.0.2")
				d.TTL(120)
				d.MX("example.net", 20, "mx1.example.net") // same RRset, lower TTL
			},
			steps: []step{
				{0, 3, mx1},
				{119 * time.Second, 0, mx1},
				{time.Second, 1, mx1},       // MX only
				{179 * time.Second, 1, mx1}, // 299s: AAAA NODATA (5 min cap) still cached; MX again (120s)
				{time.Second, 1, mx1},       // 300s: AAAA expires
				{300 * time.Second, 3, mx1}, // 600s: A expires too
			},
		},
		{
			name: "TTL above the cap: kept an hour",
			zone: func(d *testmx.DNS) {
				d.TTL(7 * 86400)
				d.MX("example.net", 10, "mx1.example.net")
				d.A("mx1.example.net", "127.0.0.2")
				d.AAAA("mx1.example.net", "::1")
			},
			steps: []step{
				{0, 3, mx1 + ",::1"},
				{time.Hour - time.Second, 0, mx1 + ",::1"},
				{time.Second, 3, mx1 + ",::1"},
			},
		},
		{
			name: "TTL 0 is kept for the floor",
			zone: withHost(0, 0, 0),
			steps: []step{
				{0, 3, mx1},
				{4 * time.Second, 0, mx1},
				{time.Second, 3, mx1},
			},
		},
		{
			name: "NXDOMAIN cached by the SOA minimum",
			zone: func(d *testmx.DNS) {
				d.SOA("example.net", 3600, 60)
				d.NXDOMAIN("example.net")
			},
			steps: []step{
				{0, 1, "error NXDOMAIN permanent=true"},
				{59 * time.Second, 0, "error NXDOMAIN permanent=true"},
				{time.Second, 1, "error NXDOMAIN permanent=true"},
			},
		},
		{
			name: "NXDOMAIN cached by the SOA's own TTL when lower",
			zone: func(d *testmx.DNS) {
				d.SOA("example.net", 30, 3600)
				d.NXDOMAIN("example.net")
			},
			steps: []step{
				{0, 1, "error NXDOMAIN permanent=true"},
				{29 * time.Second, 0, "error NXDOMAIN permanent=true"},
				{time.Second, 1, "error NXDOMAIN permanent=true"},
			},
		},
		{
			name: "negative TTL capped at 5 minutes",
			zone: func(d *testmx.DNS) {
				d.SOA("example.net", 86400, 86400)
				d.NXDOMAIN("example.net")
			},
			steps: []step{
				{0, 1, "error NXDOMAIN permanent=true"},
				{5*time.Minute - time.Second, 0, "error NXDOMAIN permanent=true"},
				{time.Second, 1, "error NXDOMAIN permanent=true"},
			},
		},
		{
			name: "NXDOMAIN without an SOA is not cached (RFC 2308 5)",
			zone: func(d *testmx.DNS) { d.NXDOMAIN("example.net") },
			steps: []step{
				{0, 1, "error NXDOMAIN permanent=true"},
				{0, 1, "error NXDOMAIN permanent=true"},
			},
		},
		{
			name: "NODATA for MX cached: implicit MX",
			zone: func(d *testmx.DNS) {
				d.SOA("example.net", 3600, 60)
				d.TTL(600)
				d.A("example.net", "127.0.0.4")
			},
			steps: []step{
				{0, 3, "example.net/0=127.0.0.4"},
				{59 * time.Second, 0, "example.net/0=127.0.0.4"},
				{time.Second, 2, "example.net/0=127.0.0.4"}, // MX and AAAA; A lives 600s
			},
		},
		{
			name: "null MX cached and still bounces",
			zone: func(d *testmx.DNS) {
				d.TTL(300)
				d.MX("example.net", 0, ".")
				d.A("example.net", "127.0.0.4")
			},
			steps: []step{
				{0, 1, "error null MX permanent=true"},
				{299 * time.Second, 0, "error null MX permanent=true"},
				{time.Second, 1, "error null MX permanent=true"},
			},
		},
		{
			name: "SERVFAIL not cached",
			zone: func(d *testmx.DNS) {
				d.SOA("example.net", 3600, 3600)
				d.ServFail("example.net")
			},
			steps: []step{
				{0, 1, "error permanent=false"},
				{0, 1, "error permanent=false"},
				{time.Second, 1, "error permanent=false"},
			},
		},
		{
			name: "SERVFAIL for an MX host not cached, the MX set is",
			zone: func(d *testmx.DNS) {
				d.TTL(300)
				d.MX("example.net", 10, "broken.example.net")
				d.ServFail("broken.example.net")
			},
			steps: []step{
				{0, 3, "error permanent=false"},
				{0, 2, "error permanent=false"}, // A and AAAA again
			},
		},
		{
			name: "timeout not cached",
			zone: func(d *testmx.DNS) { d.Timeout("example.net") },
			edit: func(o *RouterOptions) { o.LookupTimeout = 200 * time.Millisecond },
			steps: []step{
				{0, 1, "error permanent=false"},
				{0, 1, "error permanent=false"},
			},
		},
		{
			name: "guard applies to cached addresses",
			zone: withHost(300, 300, 300),
			edit: func(o *RouterOptions) { o.AllowPrivate = false },
			steps: []step{
				{0, 3, "error private only permanent=true"},
				{time.Second, 0, "error private only permanent=true"},
			},
		},
		{
			name: "cache disabled: every Route asks",
			zone: withHost(300, 300, 300),
			edit: func(o *RouterOptions) { o.NoDNSCache = true },
			steps: []step{
				{0, 3, mx1},
				{0, 3, mx1},
				{time.Second, 3, mx1},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := testmx.StartDNS(t)
			tc.zone(d)
			clk := newFakeClock()
			r := newRouter(t, d, func(o *RouterOptions) {
				o.Now = clk.Now
				if tc.edit != nil {
					tc.edit(o)
				}
			})
			for i, s := range tc.steps {
				clk.Advance(s.after)
				before := len(d.Queries())
				hosts, err := r.Route(context.Background(), "example.net")
				if got := routeOutcome(hosts, err); got != s.want {
					t.Errorf("step %d: %s, want %s (%v)", i, got, s.want, err)
				}
				if n := len(d.Queries()) - before; n != s.queries {
					t.Errorf("step %d: %d questions reached the server, want %d: %v", i, n, s.queries, d.Queries()[before:])
				}
			}
		})
	}
}

// TestRouterCacheFresh: once an answer expires the new records are used.
func TestRouterCacheFresh(t *testing.T) {
	d := testmx.StartDNS(t)
	d.SOA("example.net", 60, 60)
	d.TTL(60)
	d.MX("example.net", 10, "mx1.example.net")
	d.A("mx1.example.net", "127.0.0.2")
	clk := newFakeClock()
	r := newRouter(t, d, func(o *RouterOptions) { o.Now = clk.Now })
	route := func() string {
		t.Helper()
		hosts, err := r.Route(context.Background(), "example.net")
		return routeOutcome(hosts, err)
	}
	if got := route(); got != "mx1.example.net/10=127.0.0.2" {
		t.Fatalf("first Route: %s", got)
	}
	d.Clear("example.net")
	d.MX("example.net", 10, "mx2.example.net")
	d.A("mx2.example.net", "127.0.0.3")
	if got := route(); got != "mx1.example.net/10=127.0.0.2" {
		t.Errorf("within the TTL: %s, want the cached route", got)
	}
	clk.Advance(time.Minute)
	if got := route(); got != "mx2.example.net/10=127.0.0.3" {
		t.Errorf("after the TTL: %s, want the new route", got)
	}
}

// TestRouterCacheBounded: the cache never holds more than DNSCacheSize
// answers, dropping the least recently used.
func TestRouterCacheBounded(t *testing.T) {
	for _, tc := range []struct {
		name  string
		size  int
		names []string // resolved in order (A and AAAA: two answers each)
		// then asked again: those still cached cost no question
		again     string
		questions int
	}{
		{"the most recent stays", 4, []string{"a", "b", "c"}, "c", 0},
		{"the least recent goes", 4, []string{"a", "b", "c"}, "a", 2},
		{"a hit counts as use", 4, []string{"a", "b", "a", "c"}, "a", 0},
		{"a hit counts as use, the other goes", 4, []string{"a", "b", "a", "c"}, "b", 2},
		{"a flood of names", 6, []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}, "h", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := testmx.StartDNS(t)
			d.SOA("example.net", 300, 300)
			r := newRouter(t, d, func(o *RouterOptions) { o.DNSCacheSize = tc.size })
			resolve := func(n string) {
				t.Helper()
				if _, err := r.Resolve(context.Background(), n+".example.net"); err != nil {
					t.Fatalf("Resolve %s: %v", n, err)
				}
				if l := r.cache.len(); l > tc.size {
					t.Fatalf("cache holds %d answers, more than %d", l, tc.size)
				}
			}
			for _, n := range tc.names {
				d.A(n+".example.net", "127.0.0.2")
				resolve(n)
			}
			before := len(d.Queries())
			resolve(tc.again)
			if n := len(d.Queries()) - before; n != tc.questions {
				t.Errorf("resolving %s again asked %d questions, want %d", tc.again, n, tc.questions)
			}
		})
	}
	if _, err := NewRouter(RouterOptions{DNSServer: "127.0.0.1:53", DNSCacheSize: -1}); err == nil {
		t.Error("NewRouter accepted a negative DNSCacheSize")
	}
}

// TestRouterCoalesce: concurrent Routes of one domain share each query, and
// a caller that gives up does not fail the others.
func TestRouterCoalesce(t *testing.T) {
	for _, tc := range []struct {
		name    string
		noCache bool
	}{{"cache on", false}, {"cache off", true}} {
		t.Run(tc.name, func(t *testing.T) {
			d := testmx.StartDNS(t)
			d.SOA("example.net", 300, 300)
			d.MX("example.net", 10, "mx1.example.net")
			d.A("mx1.example.net", "127.0.0.2")
			// Long enough that every caller joins the query under way.
			d.Delay("example.net", time.Second)
			r := newRouter(t, d, func(o *RouterOptions) { o.NoDNSCache, o.LookupTimeout = tc.noCache, 5*time.Second })

			// The first caller starts the MX query and gives up while it is
			// under way, once the others wait for the same query.
			quitter, cancel := context.WithCancel(context.Background())
			defer cancel()
			const n = 8
			results := make([]string, n)
			var wg sync.WaitGroup
			for i := range n {
				ctx := context.Background()
				if i == 0 {
					ctx = quitter
				}
				wg.Go(func() {
					hosts, err := r.Route(ctx, "example.net")
					results[i] = routeOutcome(hosts, err)
					if i == 0 && !errors.Is(err, context.Canceled) {
						t.Errorf("cancelled caller: %v, want context.Canceled", err)
					}
				})
				if i == 0 {
					wait.For(t, "the first caller's MX query", func() bool { return r.flight.waiting() == 1 })
				}
			}
			wait.For(t, "every caller to wait on the query", func() bool { return r.flight.waiting() == n })
			cancel()
			wg.Wait()
			for i, got := range results[1:] {
				if got != "mx1.example.net/10=127.0.0.2" {
					t.Errorf("caller %d: %s", i+1, got)
				}
			}
			if c := d.Count("example.net", "MX"); c != 1 {
				t.Errorf("%d MX questions for %d concurrent Routes, want 1", c, n)
			}
		})
	}
}

// TestRouterAbandonedQuery: when every caller waiting for a query gives up,
// the query is cancelled (not left to run out its LookupTimeout, which the
// package's leak check would catch) and a later caller asks afresh.
func TestRouterAbandonedQuery(t *testing.T) {
	d := testmx.StartDNS(t)
	d.Timeout("example.net")
	r := newRouter(t, d, func(o *RouterOptions) { o.LookupTimeout = time.Minute })
	for round := 1; round <= 2; round++ {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() {
				if _, err := r.Route(ctx, "example.net"); !errors.Is(err, context.DeadlineExceeded) || Permanent(err) {
					t.Errorf("Route = %v, want a temporary error caused by the deadline", err)
				}
			})
		}
		wg.Wait()
		cancel()
		if c := d.Count("example.net", "MX"); c != round {
			t.Errorf("round %d: %d MX questions, want %d", round, c, round)
		}
	}
}

// waiting counts the callers waiting on queries under way.
func (g *flightGroup) waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, c := range g.calls {
		n += c.waiters
	}
	return n
}
