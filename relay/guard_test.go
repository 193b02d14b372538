package relay

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/netguard"
	"github.com/mailferry/mailferry/smtpclient"
	"github.com/mailferry/mailferry/store"
)

// guardTable is the brief's list: MX hosts resolving to each of these must
// be refused with AllowPrivate=false.
var guardTable = []struct{ name, a, aaaa string }{
	{"loopback", "127.0.0.1", ""},
	{"IPv6 loopback", "", "::1"},
	{"IPv4-mapped loopback", "", "::ffff:127.0.0.1"},
	{"unspecified", "0.0.0.0", ""},
	{"RFC 1918 10/8", "10.1.2.3", ""},
	{"RFC 1918 172.16/12", "172.16.0.1", ""},
	{"RFC 1918 192.168/16", "192.168.1.1", ""},
	{"link-local", "169.254.1.1", ""},
	{"IPv6 link-local", "", "fe80::1"},
	{"CGNAT", "100.64.0.1", ""},
	{"NAT64 loopback", "", "64:ff9b::7f00:1"},
	{"loopback, not .1", "127.8.9.10", ""},
	{"this network", "0.1.2.3", ""},
	{"cloud metadata (link-local)", "169.254.169.254", ""},
	{"CGNAT, top of the range", "100.127.255.254", ""},
	{"RFC 1918 172.31", "172.31.255.254", ""},
	{"benchmarking", "198.18.0.1", ""},
	{"multicast", "224.0.0.1", ""},
	{"broadcast", "255.255.255.255", ""},
	{"reserved class E", "240.0.0.1", ""},
	{"IPv6 unspecified", "", "::"},
	{"IPv4-compatible loopback", "", "::127.0.0.1"},
	{"IPv4-mapped unspecified", "", "::ffff:0.0.0.0"},
	{"IPv4-mapped RFC 1918", "", "::ffff:10.0.0.1"},
	{"IPv4-mapped cloud metadata", "", "::ffff:169.254.169.254"},
	{"IPv4-mapped CGNAT", "", "::ffff:100.64.0.1"},
	{"IPv6 unique local", "", "fd00::1"},
	{"IPv6 site-local", "", "fec0::1"},
	{"IPv6 multicast", "", "ff02::1"},
	{"6to4 of loopback", "", "2002:7f00:1::1"},
	{"6to4 of RFC 1918", "", "2002:c0a8:101::1"},
	{"Teredo of RFC 1918", "", "2001:0:1:2::3f57:fefe"},
	{"NAT64 of cloud metadata", "", "64:ff9b::a9fe:a9fe"},
	{"local-use NAT64", "", "64:ff9b:1::1"},
	{"both families private", "10.0.0.1", "::ffff:127.0.0.1"},
}

// TestGuardRoute: with AllowPrivate=false a domain whose MX resolves only to
// private addresses bounces before any connection; the SMTP server on
// 127.0.0.1 at the client's port sees nothing.
func TestGuardRoute(t *testing.T) {
	port, lns := testmx.Listen(t, "127.0.0.1")
	srv := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
	for _, tc := range guardTable {
		t.Run(tc.name, func(t *testing.T) {
			d := testmx.StartDNS(t)
			d.MX("example.net", 10, "mx.example.net")
			if tc.a != "" {
				d.A("mx.example.net", tc.a)
			}
			if tc.aaaa != "" {
				d.AAAA("mx.example.net", tc.aaaa)
			}
			r := newRouter(t, d, func(o *RouterOptions) { o.AllowPrivate = false })
			hosts, err := r.Route(context.Background(), "example.net")
			if !errors.Is(err, ErrPrivateOnly) || !Permanent(err) {
				t.Fatalf("Route = %s, %v; want permanent ErrPrivateOnly", describe(hosts), err)
			}
			if res := RouteResult(err); recipientOutcome(res) != store.RecipientBounced || res.Enhanced != "5.4.4" {
				t.Errorf("RouteResult = %+v, want bounced 5.4.4", res)
			}
			// The same zone with the guard off routes: the refusal above
			// is the guard's doing.
			if _, err := newRouter(t, d, nil).Route(context.Background(), "example.net"); err != nil {
				t.Errorf("AllowPrivate=true: %v", err)
			}
		})
	}
	if accepted, _ := srv.Connections(); accepted != 0 {
		t.Errorf("the server on 127.0.0.1:%d saw %d connections; want none", port, accepted)
	}
}

// TestGuardDisguises: zone shapes that hide a private address behind
// something else — the implicit MX, aliases, MX targets named like IP
// addresses or "localhost", a private host beside a public one. With
// AllowPrivate=false no private address comes out of Route, and the
// Client dials none of what does.
func TestGuardDisguises(t *testing.T) {
	for _, tc := range []struct {
		name    string
		zone    func(d *testmx.DNS)
		want    string // hosts Route returns; "" when it must refuse
		wantErr error
	}{
		{
			name:    "implicit MX: no MX, the domain's A is loopback",
			zone:    func(d *testmx.DNS) { d.A("example.net", "127.0.0.1") },
			wantErr: ErrPrivateOnly,
		},
		{
			name:    "implicit MX: IPv4-mapped loopback AAAA",
			zone:    func(d *testmx.DNS) { d.AAAA("example.net", "::ffff:127.0.0.1") },
			wantErr: ErrPrivateOnly,
		},
		{
			name: "implicit MX through a CNAME to a private host",
			zone: func(d *testmx.DNS) {
				d.CNAME("example.net", "internal.example.org")
				d.A("internal.example.org", "10.0.0.5")
			},
			wantErr: ErrPrivateOnly,
		},
		{
			name: "MX target behind a CNAME to link-local",
			zone: func(d *testmx.DNS) {
				d.MX("example.net", 10, "mx.example.net")
				d.CNAME("mx.example.net", "metadata.example.org")
				d.A("metadata.example.org", "169.254.169.254")
			},
			wantErr: ErrPrivateOnly,
		},
		{
			name: "MX target named 127.0.0.1, answered by a hostile resolver",
			zone: func(d *testmx.DNS) {
				d.MX("example.net", 10, "127.0.0.1")
				d.A("127.0.0.1", "127.0.0.1")
			},
			wantErr: ErrPrivateOnly,
		},
		{
			name: "MX target named 127.0.0.1 without records is no address",
			zone: func(d *testmx.DNS) {
				d.MX("example.net", 10, "127.0.0.1")
				d.NXDOMAIN("127.0.0.1")
			},
			wantErr: ErrNoAddress,
		},
		{
			name: "MX target localhost",
			zone: func(d *testmx.DNS) {
				d.MX("example.net", 10, "localhost")
				d.A("localhost", "127.0.0.1")
				d.AAAA("localhost", "::1")
			},
			wantErr: ErrPrivateOnly,
		},
		{
			name: "every MX private, in every range",
			zone: func(d *testmx.DNS) {
				d.MX("example.net", 10, "a.example.net")
				d.MX("example.net", 20, "b.example.net")
				d.MX("example.net", 30, "c.example.net")
				d.A("a.example.net", "0.0.0.0", "100.64.0.1")
				d.AAAA("b.example.net", "fe80::1", "::ffff:169.254.1.1")
				d.A("c.example.net", "192.168.1.1")
				d.AAAA("c.example.net", "::")
			},
			wantErr: ErrPrivateOnly,
		},
		{
			name: "a private MX before a public one: only the public one",
			zone: func(d *testmx.DNS) {
				d.MX("example.net", 10, "inside.example.net")
				d.MX("example.net", 20, "outside.example.net")
				d.A("inside.example.net", "127.0.0.1")
				d.A("outside.example.net", "192.0.2.20")
			},
			want: "outside.example.net/20=192.0.2.20",
		},
		{
			name: "one host, private and public addresses: only the public",
			zone: func(d *testmx.DNS) {
				d.MX("example.net", 10, "mx.example.net")
				d.A("mx.example.net", "10.1.1.1", "192.0.2.30", "0.0.0.0")
				d.AAAA("mx.example.net", "::ffff:127.0.0.1", "2001:db8::30")
			},
			want: "mx.example.net/10=192.0.2.30,2001:db8::30",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := testmx.StartDNS(t)
			tc.zone(d)
			r := newRouter(t, d, func(o *RouterOptions) { o.AllowPrivate = false })
			hosts, err := r.Route(context.Background(), "example.net")
			for _, h := range hosts {
				for _, a := range h.Addrs {
					if netguard.Reason(a) != "" {
						t.Errorf("Route returned %s for %s", a, h.Name)
					}
				}
			}
			if tc.want == "" {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Route = %s, %v; want %v", describe(hosts), err, tc.wantErr)
				}
				if errors.Is(err, ErrPrivateOnly) && (!Permanent(err) || RouteResult(err).Enhanced != "5.4.4") {
					t.Errorf("RouteResult = %+v, want a permanent 5.4.4", RouteResult(err))
				}
				return
			}
			if err != nil || describe(hosts) != tc.want {
				t.Fatalf("Route = %s, %v; want %s", describe(hosts), err, tc.want)
			}
			// What Route kept is all the Client dials.
			var dialled []string
			c := newClient(t, 25, func(o *smtpclient.Options) {
				o.AllowPrivate = false
				o.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
					dialled = append(dialled, addr)
					return nil, errors.New("test: no network")
				}
			})
			c.Deliver(context.Background(), hosts, envelope("bob@example.net"))
			for _, a := range dialled {
				ap := netip.MustParseAddrPort(a)
				if netguard.Reason(ap.Addr()) != "" {
					t.Errorf("dialled %s", a)
				}
			}
			if len(dialled) == 0 {
				t.Error("dialled nothing: the public address was dropped too")
			}
		})
	}
}

// TestGuardResolve: a host named by configuration rather than MX goes
// through the same guard when private destinations are not allowed.
func TestGuardResolve(t *testing.T) {
	d := testmx.StartDNS(t)
	d.A("relay.example.net", "127.0.0.1")
	d.AAAA("relay.example.net", "::ffff:10.0.0.1")
	r := newRouter(t, d, func(o *RouterOptions) { o.AllowPrivate = false })
	if h, err := r.Resolve(context.Background(), "relay.example.net"); !errors.Is(err, ErrPrivateOnly) {
		t.Fatalf("Resolve = %+v, %v; want ErrPrivateOnly", h, err)
	}
}
