package domains

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// resolver asks MAILFERRY_DNS_SERVER (or the system's first resolver)
// directly, so a check sees NXDOMAIN, NODATA and CNAMEs as published.
type resolver struct {
	server  string
	timeout time.Duration
}

// errTemporary marks a lookup that got no answer (timeout, SERVFAIL): the
// record's state is unknown, not missing.
var errTemporary = errors.New("temporary DNS failure")

func newResolver(server string, timeout time.Duration) (*resolver, error) {
	if server == "" {
		cfg, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("read resolver configuration: %w", err)
		}
		if len(cfg.Servers) == 0 {
			return nil, errors.New("read resolver configuration: /etc/resolv.conf names no nameserver")
		}
		server = net.JoinHostPort(cfg.Servers[0], cfg.Port)
	}
	if _, _, err := net.SplitHostPort(server); err != nil {
		return nil, fmt.Errorf("DNS server %q: want host:port: %w", server, err)
	}
	return &resolver{server: server, timeout: timeout}, nil
}

// lookup returns the answer records of type qtype at name (CNAMEs the
// resolver followed included); none for NXDOMAIN or NODATA.
func (r *resolver) lookup(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(4096, false)
	resp, err := r.exchange(ctx, m, "udp")
	if err == nil && resp.Truncated {
		resp, err = r.exchange(ctx, m, "tcp") // RFC 7766 5
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %v", dns.TypeToString[qtype], name, errTemporary, err)
	}
	switch resp.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		return resp.Answer, nil
	default:
		return nil, fmt.Errorf("%s %s: %w: %s", dns.TypeToString[qtype], name, errTemporary, dns.RcodeToString[resp.Rcode])
	}
}

func (r *resolver) exchange(ctx context.Context, m *dns.Msg, network string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	c := &dns.Client{Net: network, Timeout: r.timeout, UDPSize: 4096}
	resp, _, err := c.ExchangeContext(ctx, m, r.server)
	return resp, err
}

// txt returns the TXT records at name, each one string: a record's
// character-strings are joined without separator (RFC 7208 3.3, RFC 6376
// 3.6.2.2).
func (r *resolver) txt(ctx context.Context, name string) ([]string, error) {
	rrs, err := r.lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range rrs {
		if t, ok := rr.(*dns.TXT); ok {
			parts := make([]string, len(t.Txt))
			for i, p := range t.Txt {
				parts[i] = unescapeTXT(p)
			}
			out = append(out, strings.Join(parts, ""))
		}
	}
	return out, nil
}

// cname returns the CNAME target at name, "" when there is none.
func (r *resolver) cname(ctx context.Context, name string) (string, error) {
	rrs, err := r.lookup(ctx, name, dns.TypeCNAME)
	if err != nil {
		return "", err
	}
	for _, rr := range rrs {
		if c, ok := rr.(*dns.CNAME); ok && strings.EqualFold(c.Hdr.Name, dns.Fqdn(name)) {
			return strings.ToLower(strings.TrimSuffix(c.Target, ".")), nil
		}
	}
	return "", nil
}

// unescapeTXT undoes the presentation escapes miekg/dns puts in TXT
// strings it unpacks: \DDD (a byte in decimal) and \X (X itself), so
// the record is compared as published (RFC 1035 5.1).
func unescapeTXT(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		if i+3 < len(s) && isDigit(s[i+1]) && isDigit(s[i+2]) && isDigit(s[i+3]) {
			n := int(s[i+1]-'0')*100 + int(s[i+2]-'0')*10 + int(s[i+3]-'0')
			if n < 256 {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i+1])
		i++
	}
	return b.String()
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
