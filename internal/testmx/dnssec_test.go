package testmx

import (
	"testing"

	"github.com/miekg/dns"
)

func TestUnboundValidates(t *testing.T) {
	z := StartSignedZone(t, "dane.test")
	z.Add(t, "dane.test. 300 IN MX 10 mx1.dane.test.")
	z.Add(t, "mx1.dane.test. 300 IN A 127.0.0.2")
	z.Add(t, "bogus.dane.test. 300 IN MX 10 mx1.dane.test.")
	z.Bogus("bogus.dane.test")
	u := StartUnbound(t, z)
	for _, tc := range []struct {
		name  string
		qtype uint16
		rcode int
		ad    bool
	}{
		{"dane.test", dns.TypeMX, dns.RcodeSuccess, true},
		{"mx1.dane.test", dns.TypeA, dns.RcodeSuccess, true},
		{"mx1.dane.test", dns.TypeAAAA, dns.RcodeSuccess, true},
		{"_25._tcp.mx1.dane.test", dns.TypeTLSA, dns.RcodeNameError, true},
		{"bogus.dane.test", dns.TypeMX, dns.RcodeServerFailure, false},
	} {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(tc.name), tc.qtype)
		m.SetEdns0(1232, true)
		m.AuthenticatedData = true
		resp, err := dns.Exchange(m, u.Addr())
		if err != nil {
			t.Fatal(err)
		}
		if resp.Rcode != tc.rcode || resp.AuthenticatedData != tc.ad {
			t.Errorf("%s %s: rcode %s AD %v, want %s %v", tc.name, dns.TypeToString[tc.qtype], dns.RcodeToString[resp.Rcode], resp.AuthenticatedData, dns.RcodeToString[tc.rcode], tc.ad)
		}
	}
}
