package relay

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/testmx"
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
			wantStatus, wantClass := StatusDeferred, "4."
			if tc.permanent {
				wantStatus, wantClass = StatusBounced, "5."
			}
			if res.Status() != wantStatus || !strings.HasPrefix(res.Enhanced, wantClass) {
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
