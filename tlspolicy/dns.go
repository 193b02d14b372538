package tlspolicy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// resolver asks one DNS server (MAILFERRY_DNS_SERVER, else the first of
// resolv.conf) the few questions policy lookup needs. The Router's cache
// is for MX and address records; TXT answers for policies are asked per
// delivery attempt, which RFC 8461 3.1 expects (its TTL is the resolver's).
type resolver struct {
	server  string
	timeout time.Duration
}

func newResolver(server, resolvConf string, timeout time.Duration) (*resolver, error) {
	if server == "" {
		cfg, err := dns.ClientConfigFromFile(resolvConf)
		if err != nil {
			return nil, fmt.Errorf("read resolver configuration: %w", err)
		}
		if len(cfg.Servers) == 0 {
			return nil, fmt.Errorf("%s names no nameserver", resolvConf)
		}
		server = net.JoinHostPort(cfg.Servers[0], cfg.Port)
	}
	return &resolver{server: server, timeout: timeout}, nil
}

var errNXDomain = errors.New("no such domain")

// query returns the answer section for name and qtype; NXDOMAIN is
// errNXDomain, NODATA an empty answer.
func (r *resolver) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(1232, false)
	c := &dns.Client{Timeout: r.timeout, UDPSize: 1232}
	resp, _, err := c.ExchangeContext(ctx, m, r.server)
	if err == nil && resp.Truncated {
		c.Net = "tcp"
		resp, _, err = c.ExchangeContext(ctx, m, r.server)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", dns.TypeToString[qtype], name, err)
	}
	switch resp.Rcode {
	case dns.RcodeSuccess:
		return resp.Answer, nil
	case dns.RcodeNameError:
		return nil, errNXDomain
	default:
		return nil, fmt.Errorf("%s %s: %s", dns.TypeToString[qtype], name, dns.RcodeToString[resp.Rcode])
	}
}

// txt returns name's TXT records, each record's strings joined (RFC 7208
// 3.3 style, as RFC 8461 3.1 reads them).
func (r *resolver) txt(ctx context.Context, name string) ([]string, error) {
	rrs, err := r.query(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range rrs {
		if t, ok := rr.(*dns.TXT); ok && strings.EqualFold(t.Hdr.Name, dns.Fqdn(name)) {
			out = append(out, strings.Join(t.Txt, ""))
		}
	}
	return out, nil
}

// addrs returns name's IPv4 then IPv6 addresses, following CNAMEs the
// resolver put in the answer.
func (r *resolver) addrs(ctx context.Context, name string) ([]netip.Addr, error) {
	var out []netip.Addr
	var errs []error
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, err := r.query(ctx, name, qt)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, rr := range rrs {
			switch v := rr.(type) {
			case *dns.A:
				if a, ok := netip.AddrFromSlice(v.A.To4()); ok {
					out = append(out, a)
				}
			case *dns.AAAA:
				if a, ok := netip.AddrFromSlice(v.AAAA); ok {
					out = append(out, a)
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.Join(append(errs, fmt.Errorf("%s has no address", name))...)
	}
	return out, nil
}
