package tlspolicy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/miekg/dns"

	"github.com/mailferry/mailferry/smtpclient"
)

// DANE (RFC 7672) trusts the AD bit of MAILFERRY_DNS_SERVER, which must
// then be a validating resolver on a trusted path (a local unbound): one
// mature validator beside the relay rather than a second DNSSEC stack in
// it, the way Postfix does it (smtp_dns_support_level=dnssec). A SERVFAIL
// from such a resolver is a bogus (or unvalidatable) answer, and defers.

// errBogus is an answer the validating resolver would not vouch for.
var errBogus = errors.New("DNSSEC validation failed (SERVFAIL from the validating resolver)")

// secureAnswer is a DNS answer and whether the resolver validated it.
type secureAnswer struct {
	rrs    []dns.RR
	secure bool // AD set (RFC 4035 3.2.3)
	nx     bool
}

// querySecure asks with DO and AD set (RFC 6840 5.7) and reports whether
// the answer came back authenticated.
func (r *resolver) querySecure(ctx context.Context, name string, qtype uint16) (secureAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(1232, true)
	m.AuthenticatedData = true
	c := &dns.Client{Timeout: r.timeout, UDPSize: 1232}
	resp, _, err := c.ExchangeContext(ctx, m, r.server)
	if err == nil && resp.Truncated {
		c.Net = "tcp"
		resp, _, err = c.ExchangeContext(ctx, m, r.server)
	}
	if err != nil {
		return secureAnswer{}, fmt.Errorf("%s %s: %w", dns.TypeToString[qtype], name, err)
	}
	switch resp.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return secureAnswer{secure: resp.AuthenticatedData, nx: true}, nil
	case dns.RcodeServerFailure:
		return secureAnswer{}, fmt.Errorf("%s %s: %w", dns.TypeToString[qtype], name, errBogus)
	default:
		return secureAnswer{}, fmt.Errorf("%s %s: %s", dns.TypeToString[qtype], name, dns.RcodeToString[resp.Rcode])
	}
	var rrs []dns.RR
	for _, rr := range resp.Answer {
		if rr.Header().Rrtype == qtype {
			rrs = append(rrs, rr)
		}
	}
	return secureAnswer{rrs: rrs, secure: resp.AuthenticatedData}, nil
}

// daneHosts looks up TLSA records for hosts (RFC 7672 2.2): only when
// domain's MX answer is secure, and for each host only when its address
// records are secure. It returns the usable TLSA records per host name;
// none means DANE does not apply. An error is a bogus answer: defer.
func (c *Client) daneHosts(ctx context.Context, domain string, hosts []smtpclient.Host) (map[string][]*dns.TLSA, error) {
	mx, err := c.res.querySecure(ctx, domain, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	if !mx.secure || len(mx.rrs) == 0 {
		// RFC 7672 2.2.1: an insecure MX RRset (or an implicit MX) gives
		// no DANE; opportunistic TLS as before.
		return nil, nil
	}
	out := map[string][]*dns.TLSA{}
	for _, h := range hosts {
		a, err := c.res.querySecure(ctx, h.Name, dns.TypeA)
		if err != nil {
			return nil, err
		}
		if !a.secure {
			continue // RFC 7672 2.2.2: insecure address records, no TLSA lookup
		}
		t, err := c.res.querySecure(ctx, "_25._tcp."+h.Name, dns.TypeTLSA)
		if err != nil {
			return nil, err // RFC 7672 2.2: a failed TLSA lookup must not fall back to no TLS
		}
		if !t.secure {
			continue
		}
		var usable []*dns.TLSA
		for _, rr := range t.rrs {
			if tl, ok := rr.(*dns.TLSA); ok && usableTLSA(tl) {
				usable = append(usable, tl)
			}
		}
		if len(usable) > 0 {
			out[h.Name] = usable
		}
	}
	return out, nil
}

// usableTLSA: DANE-TA(2) or DANE-EE(3), selector Cert(0) or SPKI(1),
// matching Full(0), SHA2-256(1) or SHA2-512(2) (RFC 7672 3.1; usages 0 and
// 1 are not for SMTP, 3.1.3).
func usableTLSA(t *dns.TLSA) bool {
	return (t.Usage == 2 || t.Usage == 3) && t.Selector <= 1 && t.MatchingType <= 2
}

// tlsaMatches reports whether cert matches t's selector and matching type.
func tlsaMatches(t *dns.TLSA, cert *x509.Certificate) bool {
	data := cert.Raw
	if t.Selector == 1 {
		data = cert.RawSubjectPublicKeyInfo
	}
	var sum []byte
	switch t.MatchingType {
	case 0:
		sum = data
	case 1:
		s := sha256.Sum256(data)
		sum = s[:]
	case 2:
		s := sha512.Sum512(data)
		sum = s[:]
	default:
		return false
	}
	want, err := hex.DecodeString(t.Certificate)
	return err == nil && bytes.Equal(sum, want)
}

// VerifyDANE checks chain against records for host (RFC 7672 3): a DANE-EE
// record matches the server's own certificate, with no name or expiry
// check (3.1.1); a DANE-TA record matches a certificate of the chain,
// which must then issue the server's certificate for host (3.1.2, 3.2.2).
func VerifyDANE(host string, chain []*x509.Certificate, records []*dns.TLSA, now time.Time) error {
	if len(chain) == 0 {
		return &smtpclient.TLSError{Type: smtpclient.TLSValidationFailure, Err: errors.New("no certificate presented")}
	}
	for _, t := range records {
		if t.Usage == 3 && tlsaMatches(t, chain[0]) {
			return nil
		}
	}
	for _, t := range records {
		if t.Usage != 2 {
			continue
		}
		for i, ta := range chain {
			if !tlsaMatches(t, ta) {
				continue
			}
			if i == 0 {
				return nil // the server's certificate is the trust anchor itself
			}
			roots, inter := x509.NewCertPool(), x509.NewCertPool()
			roots.AddCert(ta)
			for _, c := range chain[1:i] {
				inter.AddCert(c)
			}
			if _, err := chain[0].Verify(x509.VerifyOptions{DNSName: host, Roots: roots, Intermediates: inter, CurrentTime: now}); err == nil {
				return nil
			}
		}
	}
	return &smtpclient.TLSError{Type: smtpclient.TLSValidationFailure,
		Err: fmt.Errorf("certificate of %s matches none of its %d TLSA records (RFC 7672 3)", host, len(records))}
}
