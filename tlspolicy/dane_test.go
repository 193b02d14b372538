package tlspolicy

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/smtpclient"
)

func leaf(t *testing.T, c tls.Certificate) *x509.Certificate {
	t.Helper()
	x, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func sha256Hex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// TestDANE runs DANE (RFC 7672) against a DNSSEC-signed zone behind a real
// validating unbound, with MAILFERRY_DNSSEC on.
func TestDANE(t *testing.T) {
	e := newEnv(t)
	self := testmx.SelfSigned(t, "mx1.dane.test", "mx2.dane.test")
	ca := testCA.Issue(t, "mx5.dane.test")
	ca.Certificate = append(ca.Certificate, testCA.Cert().Raw) // RFC 7672 3.1.2: the TA in the chain
	servers := e.mx(map[string]testmx.SMTPOptions{
		"127.0.0.2": {Cert: &ca},
		"127.0.0.3": {Cert: &self},
	}, "127.0.0.2", "127.0.0.3")

	z := testmx.StartSignedZone(t, "dane.test")
	spki := sha256Hex(leaf(t, self).RawSubjectPublicKeyInfo)
	full512 := sha512.Sum512(leaf(t, self).Raw)
	for _, rr := range []string{
		"mx1.dane.test. 300 IN A 127.0.0.3",
		"mx2.dane.test. 300 IN A 127.0.0.3",
		"mx5.dane.test. 300 IN A 127.0.0.2",
		"_25._tcp.mx1.dane.test. 300 IN TLSA 3 1 1 " + spki,
		"_25._tcp.mx1.dane.test. 300 IN TLSA 0 0 1 " + spki, // usage 0 is not for SMTP: ignored
		"_25._tcp.mx2.dane.test. 300 IN TLSA 3 1 1 " + sha256Hex([]byte("another key")),
		"_25._tcp.mx5.dane.test. 300 IN TLSA 2 0 1 " + sha256Hex(testCA.Cert().Raw),
		"ee.dane.test. 300 IN MX 10 mx1.dane.test.",
		"ee512.dane.test. 300 IN MX 10 mx3.dane.test.",
		"mx3.dane.test. 300 IN A 127.0.0.3",
		"_25._tcp.mx3.dane.test. 300 IN TLSA 3 0 2 " + hex.EncodeToString(full512[:]),
		"mismatch.dane.test. 300 IN MX 10 mx2.dane.test.",
		"ta.dane.test. 300 IN MX 10 mx5.dane.test.",
		"bogus.dane.test. 300 IN MX 10 mx1.dane.test.",
		"nodane.dane.test. 300 IN MX 10 mx9.dane.test.",
		"mx9.dane.test. 300 IN A 127.0.0.3",
		// An MTA-STS policy listing none of the hosts: applied, it would defer.
		"sts.dane.test. 300 IN MX 10 mx1.dane.test.",
		`_mta-sts.sts.dane.test. 300 IN TXT "v=STSv1; id=1;"`,
		"mta-sts.sts.dane.test. 300 IN A 127.0.0.10",
	} {
		z.Add(t, rr)
	}
	z.Bogus("bogus.dane.test")
	u := testmx.StartUnbound(t, z)
	ps := startPolicyServer(t, "mta-sts.sts.dane.test")
	ps.set("sts.dane.test", "version: STSv1\nmode: enforce\nmx: elsewhere.example\nmax_age: 86400\n")

	client := func(dnssec bool) *Client {
		return e.client(e.store, func(o *Options) {
			o.DNSServer, o.DNSSEC, o.HTTPSPort = u.Addr(), dnssec, ps.port
		})
	}
	dane, noDANE := client(true), client(false)
	for _, tc := range []struct {
		name         string
		c            *Client
		to, host     string
		ip           string
		header       string
		want         string // delivered or deferred
		wantPolicy   string
		wantFailure  string
		wantVerified bool
	}{
		{"DANE-EE SPKI match, self-signed", dane, "bob@ee.dane.test", "mx1.dane.test", "127.0.0.3", "", "delivered", PolicyDANE, "", true},
		{"DANE-EE full certificate SHA-512", dane, "bob@ee512.dane.test", "mx3.dane.test", "127.0.0.3", "", "delivered", PolicyDANE, "", true},
		{"DANE-TA with the CA in the chain", dane, "bob@ta.dane.test", "mx5.dane.test", "127.0.0.2", "", "delivered", PolicyDANE, "", true},
		{"DANE mismatch", dane, "bob@mismatch.dane.test", "mx2.dane.test", "127.0.0.3", "", "deferred", PolicyDANE, smtpclient.TLSValidationFailure, false},
		{"bogus DNSSEC", dane, "bob@bogus.dane.test", "mx1.dane.test", "127.0.0.3", "", "deferred", PolicyDANE, resultDNSSECInvalid, false},
		{"secure MX without TLSA: opportunistic", dane, "bob@nodane.dane.test", "mx9.dane.test", "127.0.0.3", "", "delivered", PolicyNone, "", false},
		{"MTA-STS alone defers", noDANE, "bob@sts.dane.test", "mx1.dane.test", "127.0.0.3", "", "deferred", PolicyMTASTS, smtpclient.TLSValidationFailure, false},
		{"DANE beats MTA-STS", dane, "bob@sts.dane.test", "mx1.dane.test", "127.0.0.3", "", "delivered", PolicyDANE, "", true},
		{"TLS-Required: No sets DANE aside", dane, "bob@mismatch.dane.test", "mx2.dane.test", "127.0.0.3", "TLS-Required: No\r\n", "delivered", PolicyNone, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(servers[tc.ip].Messages())
			att := tc.c.Deliver(ctx(t), []smtpclient.Host{host(tc.host, tc.ip)}, envelope(tc.header, tc.to))
			r := att.Results[0]
			got := "deferred"
			if r.Err == nil {
				got = "delivered"
			}
			if got != tc.want || r.Permanent {
				t.Fatalf("%s %s (%v), want %s", got, r.Enhanced, r.Err, tc.want)
			}
			if att.TLSPolicy != tc.wantPolicy || att.TLSFailure != tc.wantFailure {
				t.Errorf("policy %q failure %q, want %q %q", att.TLSPolicy, att.TLSFailure, tc.wantPolicy, tc.wantFailure)
			}
			if v := att.TLS != nil && att.TLS.Verified; v != tc.wantVerified {
				t.Errorf("verified %v, want %v", v, tc.wantVerified)
			}
			n := len(servers[tc.ip].Messages()) - before
			if want := map[string]int{"delivered": 1, "deferred": 0}[tc.want]; n != want {
				t.Errorf("%s received %d messages, want %d", tc.ip, n, want)
			}
		})
	}
}

// TestVerifyDANE covers the matching rules without the network.
func TestVerifyDANE(t *testing.T) {
	self := leaf(t, testmx.SelfSigned(t, "mx.example"))
	issued := leaf(t, testCA.Issue(t, "mx.example"))
	rec := func(usage, sel, match uint8, data string) *dns.TLSA {
		return &dns.TLSA{Usage: usage, Selector: sel, MatchingType: match, Certificate: data}
	}
	full := hex.EncodeToString(self.Raw)
	for _, tc := range []struct {
		name  string
		host  string
		chain []*x509.Certificate
		recs  []*dns.TLSA
		ok    bool
	}{
		{"EE full exact", "mx.example", []*x509.Certificate{self}, []*dns.TLSA{rec(3, 0, 0, full)}, true},
		{"EE SPKI SHA-256, any name", "other.example", []*x509.Certificate{self}, []*dns.TLSA{rec(3, 1, 1, sha256Hex(self.RawSubjectPublicKeyInfo))}, true},
		{"EE wrong data", "mx.example", []*x509.Certificate{self}, []*dns.TLSA{rec(3, 1, 1, sha256Hex(nil))}, false},
		{"TA matches the issuer", "mx.example", []*x509.Certificate{issued, testCA.Cert()}, []*dns.TLSA{rec(2, 1, 1, sha256Hex(testCA.Cert().RawSubjectPublicKeyInfo))}, true},
		{"TA, wrong name", "other.example", []*x509.Certificate{issued, testCA.Cert()}, []*dns.TLSA{rec(2, 0, 1, sha256Hex(testCA.Cert().Raw))}, false},
		{"TA not in the chain", "mx.example", []*x509.Certificate{issued}, []*dns.TLSA{rec(2, 0, 1, sha256Hex(testCA.Cert().Raw))}, false},
		{"TA record matching a certificate that did not issue the leaf", "mx.example", []*x509.Certificate{self, testCA.Cert()}, []*dns.TLSA{rec(2, 0, 1, sha256Hex(testCA.Cert().Raw))}, false},
		{"no certificate", "mx.example", nil, []*dns.TLSA{rec(3, 0, 0, full)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := VerifyDANE(tc.host, tc.chain, tc.recs, time.Now())
			if (err == nil) != tc.ok {
				t.Fatalf("VerifyDANE: %v, want ok=%v", err, tc.ok)
			}
		})
	}
	if usableTLSA(rec(1, 0, 1, "")) || usableTLSA(rec(3, 2, 1, "")) || usableTLSA(rec(3, 1, 3, "")) || !usableTLSA(rec(2, 1, 2, "")) {
		t.Error("usableTLSA: usages 2 and 3, selectors 0 and 1, matching types 0 to 2 only")
	}
}
