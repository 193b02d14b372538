package domains

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/mailferry/mailferry/dkim"
)

// ZoneServer answers for MAILFERRY_DKIM_ZONE as its authoritative server
// (MAILFERRY_DKIM_ZONE_ADDR), from the ledger: the TXT record of every
// delegated key that is pending, signing or retiring, at
// <selector>.<domain>.<zone>. With the zone delegated to it (NS records),
// a rotation publishes its keys with no one touching DNS.
type ZoneServer struct {
	svc *Service
	log *slog.Logger
}

// ZoneServer returns the DNS handler of the operator's DKIM zone.
func (s *Service) ZoneServer() *ZoneServer {
	return &ZoneServer{svc: s, log: s.opts.Logger}
}

// zoneTTL is short: a rotation's new key shows within a minute of being
// made, and a retired one is gone as fast.
const zoneTTL = 60

// ServeDNS implements dns.Handler.
func (z *ZoneServer) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	if len(req.Question) != 1 || z.svc.opts.DKIMZone == "" {
		m.SetRcode(req, dns.RcodeFormatError)
		w.WriteMsg(m)
		return
	}
	m.SetReply(req)
	m.Authoritative = true // RFC 1035 4.1.1: AA, this server owns the zone
	q := req.Question[0]
	zone := dns.Fqdn(z.svc.opts.DKIMZone)
	name := strings.ToLower(q.Name)
	soa := &dns.SOA{Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: zoneTTL},
		Ns: zone, Mbox: "hostmaster." + zone, Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: zoneTTL}
	switch {
	case !dns.IsSubDomain(zone, name):
		m.SetRcode(req, dns.RcodeRefused) // not our zone: no recursion here
		w.WriteMsg(m)
		return
	case name == zone:
		if q.Qtype == dns.TypeSOA {
			m.Answer = append(m.Answer, soa)
		} else {
			m.Ns = append(m.Ns, soa) // NODATA (RFC 2308 2.2)
		}
		w.WriteMsg(m)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	txt, ok, err := z.lookup(ctx, strings.TrimSuffix(strings.TrimSuffix(name, zone), "."))
	switch {
	case err != nil:
		z.log.LogAttrs(ctx, slog.LevelWarn, "dkim zone lookup", slog.String("name", name), slog.Any("error", err))
		m.SetRcode(req, dns.RcodeServerFailure)
	case !ok:
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, soa) // RFC 2308 3
	case q.Qtype == dns.TypeTXT:
		m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: zoneTTL}, Txt: txt})
	default:
		m.Ns = append(m.Ns, soa)
	}
	w.WriteMsg(m)
}

// lookup finds the key at "<selector>.<domain>" (the name under the
// zone), in a delegated slot.
func (z *ZoneServer) lookup(ctx context.Context, rel string) ([]string, bool, error) {
	selector, domain, ok := strings.Cut(rel, ".")
	if !ok || !strings.HasPrefix(selector, delegatedSlots[0]+"-") && !strings.HasPrefix(selector, delegatedSlots[1]+"-") {
		return nil, false, nil
	}
	if _, err := Normalize(domain); err != nil {
		return nil, false, nil
	}
	keys, err := z.svc.opts.Ledger.DomainKeys(ctx, domain)
	if err != nil {
		return nil, false, err
	}
	for _, k := range keys {
		if k.Selector == selector {
			key := dkim.Key{Domain: domain, Selector: selector, Algorithm: dkim.Algorithm(k.Algorithm), PublicKey: k.PublicKey}
			return key.TXTStrings(), true, nil
		}
	}
	return nil, false, nil
}
