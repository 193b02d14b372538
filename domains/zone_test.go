package domains_test

import (
	"net"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/mailferry/mailferry/domains"
)

// TestZoneServer: MAILFERRY_DKIM_ZONE_ADDR answers for the operator's zone
// from the ledger, so a rotation's new key is published the moment it is
// made, and signing switches once the tenant's CNAME reaches it.
func TestZoneServer(t *testing.T) {
	const zone = "dkim.relay.test"
	f := newFixture(t, func(o *domains.Options) { o.DKIMZone = zone })
	f.create("example.test")
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: f.svc.ZoneServer()}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })

	ask := func(name string, qtype uint16) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), qtype)
		m.SetEdns0(4096, false)
		resp, err := dns.Exchange(m, pc.LocalAddr().String())
		if err != nil {
			t.Fatalf("ask %s: %v", name, err)
		}
		return resp
	}
	keyOf := func(resp *dns.Msg) string {
		for _, rr := range resp.Answer {
			if txt, ok := rr.(*dns.TXT); ok {
				return strings.Join(txt.Txt, "")
			}
		}
		return ""
	}
	r := ask("mf1-rsa.example.test."+zone, dns.TypeTXT)
	if !r.Authoritative || r.Rcode != dns.RcodeSuccess || !strings.HasPrefix(keyOf(r), "v=DKIM1; k=rsa; p=") {
		t.Fatalf("signing key: %v", r)
	}
	if r := ask("mf1-ed25519.example.test."+zone, dns.TypeTXT); !strings.HasPrefix(keyOf(r), "v=DKIM1; k=ed25519; p=") {
		t.Errorf("ed25519 key: %v", r)
	}
	for _, name := range []string{"mf2-rsa.example.test." + zone, "mf1-rsa.other.test." + zone, "rsa.example.test." + zone} {
		if r := ask(name, dns.TypeTXT); r.Rcode != dns.RcodeNameError || len(r.Ns) != 1 {
			t.Errorf("%s: rcode %s, %d authority records; want NXDOMAIN with the SOA", name, dns.RcodeToString[r.Rcode], len(r.Ns))
		}
	}
	if r := ask("mf1-rsa.example.test."+zone, dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("A at a key name: %v, want NODATA", r)
	}
	if r := ask("example.net", dns.TypeTXT); r.Rcode != dns.RcodeRefused {
		t.Errorf("outside the zone: %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
	// A rotation's key is served at once.
	if _, err := f.svc.Rotate(t.Context(), "acme", "example.test"); err != nil {
		t.Fatal(err)
	}
	if r := ask("mf2-rsa.example.test."+zone, dns.TypeTXT); !strings.HasPrefix(keyOf(r), "v=DKIM1; k=rsa; p=") {
		t.Errorf("rotated key: %v", r)
	}
}
