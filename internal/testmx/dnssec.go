package testmx

import (
	"crypto"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// SignedZone is an authoritative DNS server on 127.0.0.1 for one zone it
// signs with DNSSEC as it answers (ECDSA P-256, one key as KSK and ZSK):
// RRSIGs over every answer, NSEC records proving NODATA and NXDOMAIN (RFC
// 4035 3.1.3). Put it behind a validating resolver (Unbound) with
// TrustAnchor as the zone's anchor. Names marked Bogus get signatures by a
// key the zone does not publish, so a validator rejects them.
type SignedZone struct {
	zone  string // FQDN, lower case
	addr  string
	key   *dns.DNSKEY
	priv  crypto.Signer
	wrong crypto.Signer // signs bogus names

	mu      sync.Mutex
	records map[string][]dns.RR
	bogus   map[string]bool
}

// StartSignedZone serves zone until the test ends.
func StartSignedZone(t testing.TB, zone string) *SignedZone {
	t.Helper()
	z := &SignedZone{zone: strings.ToLower(dns.Fqdn(zone)), records: map[string][]dns.RR{}, bogus: map[string]bool{}}
	z.key = &dns.DNSKEY{Hdr: dns.RR_Header{Name: z.zone, Rrtype: dns.TypeDNSKEY, Class: dns.ClassINET, Ttl: 300},
		Flags: 257, Protocol: 3, Algorithm: dns.ECDSAP256SHA256}
	priv, err := z.key.Generate(256)
	if err != nil {
		t.Fatalf("testmx: zone key: %v", err)
	}
	z.priv = priv.(crypto.Signer)
	other := &dns.DNSKEY{Hdr: z.key.Hdr, Flags: 257, Protocol: 3, Algorithm: dns.ECDSAP256SHA256}
	wrong, err := other.Generate(256)
	if err != nil {
		t.Fatalf("testmx: zone key: %v", err)
	}
	z.wrong = wrong.(crypto.Signer)
	z.add(z.key)
	z.Add(t, fmt.Sprintf("%s 300 IN SOA ns.%s hostmaster.%s 1 3600 600 86400 60", z.zone, z.zone, z.zone))
	z.Add(t, fmt.Sprintf("%s 300 IN NS ns.%s", z.zone, z.zone))
	z.Add(t, fmt.Sprintf("ns.%s 300 IN A 127.0.0.1", z.zone))

	var (
		pc net.PacketConn
		ln net.Listener
	)
	for range 50 {
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("testmx: signed zone listen: %v", err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatalf("testmx: signed zone: no port for UDP and TCP: %v", err)
	}
	z.addr = pc.LocalAddr().String()
	udp := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(z.serve)}
	tcp := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(z.serve)}
	var wg sync.WaitGroup
	wg.Go(func() { udp.ActivateAndServe() })
	wg.Go(func() { tcp.ActivateAndServe() })
	t.Cleanup(func() {
		udp.Shutdown()
		tcp.Shutdown()
		wg.Wait()
	})
	return z
}

// Addr is the server's "127.0.0.1:port".
func (z *SignedZone) Addr() string { return z.addr }

// TrustAnchor is the zone's DNSKEY in presentation format, for Unbound's
// trust-anchor option.
func (z *SignedZone) TrustAnchor() string { return strings.Join(strings.Fields(z.key.String()), " ") }

// Add adds one record in zone-file syntax; its name must be in the zone.
func (z *SignedZone) Add(t testing.TB, rr string) {
	t.Helper()
	r, err := dns.NewRR(rr)
	if err != nil {
		t.Fatalf("testmx: record %q: %v", rr, err)
	}
	if !dns.IsSubDomain(z.zone, r.Header().Name) {
		t.Fatalf("testmx: record %q is outside %s", rr, z.zone)
	}
	z.add(r)
}

func (z *SignedZone) add(r dns.RR) {
	z.mu.Lock()
	defer z.mu.Unlock()
	n := strings.ToLower(r.Header().Name)
	r.Header().Name = n
	z.records[n] = append(z.records[n], r)
}

// Bogus makes every answer about name carry signatures that do not verify.
func (z *SignedZone) Bogus(name string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.bogus[strings.ToLower(dns.Fqdn(name))] = true
}

func (z *SignedZone) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	if !dns.IsSubDomain(z.zone, name) {
		m.Authoritative = false
		m.Rcode = dns.RcodeRefused
		w.WriteMsg(m)
		return
	}
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(1232, opt.Do())
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	rrs, exists := z.records[name]
	var set []dns.RR
	for _, rr := range rrs {
		if rr.Header().Rrtype == q.Qtype {
			set = append(set, rr)
		}
	}
	switch {
	case len(set) > 0:
		m.Answer = append(set, z.sign(set, name))
	case exists || z.emptyNonTerminal(name):
		// NODATA (RFC 4035 3.1.3.1): SOA and the name's own NSEC.
		m.Ns = z.soa()
		nsec := z.nsec(name)
		m.Ns = append(m.Ns, nsec, z.sign([]dns.RR{nsec}, name))
	default:
		// NXDOMAIN (RFC 4035 3.1.3.2): NSECs covering the name and the
		// wildcard at the apex (the closest encloser in these tests).
		m.Rcode = dns.RcodeNameError
		m.Ns = z.soa()
		for _, n := range uniq(z.predecessor(name), z.predecessor("*."+z.zone)) {
			nsec := z.nsec(n)
			m.Ns = append(m.Ns, nsec, z.sign([]dns.RR{nsec}, name))
		}
	}
	w.WriteMsg(m)
}

func uniq(a, b string) []string {
	if a == b {
		return []string{a}
	}
	return []string{a, b}
}

func (z *SignedZone) soa() []dns.RR {
	var set []dns.RR
	for _, rr := range z.records[z.zone] {
		if rr.Header().Rrtype == dns.TypeSOA {
			set = append(set, rr)
		}
	}
	return append(set, z.sign(set, z.zone))
}

// emptyNonTerminal: name has no records but names below it do.
func (z *SignedZone) emptyNonTerminal(name string) bool {
	for n := range z.records {
		if n != name && dns.IsSubDomain(name, n) {
			return true
		}
	}
	return false
}

// owners returns the names with records in canonical order (RFC 4034 6.1).
func (z *SignedZone) owners() []string {
	names := make([]string, 0, len(z.records))
	for n := range z.records {
		names = append(names, n)
	}
	slices.SortFunc(names, canonicalCompare)
	return names
}

func canonicalCompare(a, b string) int {
	la, lb := dns.SplitDomainName(a), dns.SplitDomainName(b)
	for i := 1; i <= min(len(la), len(lb)); i++ {
		if c := strings.Compare(la[len(la)-i], lb[len(lb)-i]); c != 0 {
			return c
		}
	}
	return len(la) - len(lb)
}

// predecessor is the owner name whose NSEC covers name.
func (z *SignedZone) predecessor(name string) string {
	owners := z.owners()
	prev := owners[len(owners)-1]
	for _, n := range owners {
		if canonicalCompare(n, name) > 0 {
			break
		}
		prev = n
	}
	return prev
}

// nsec is owner's NSEC record: the next owner name and owner's types.
func (z *SignedZone) nsec(owner string) *dns.NSEC {
	owners := z.owners()
	i := slices.Index(owners, owner)
	next := owners[(i+1)%len(owners)]
	types := []uint16{dns.TypeRRSIG, dns.TypeNSEC}
	for _, rr := range z.records[owner] {
		if !slices.Contains(types, rr.Header().Rrtype) {
			types = append(types, rr.Header().Rrtype)
		}
	}
	slices.Sort(types)
	return &dns.NSEC{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeNSEC, Class: dns.ClassINET, Ttl: 60},
		NextDomain: next, TypeBitMap: types}
}

// sign returns an RRSIG over set, by a wrong key when the queried name is
// bogus.
func (z *SignedZone) sign(set []dns.RR, qname string) dns.RR {
	sig := &dns.RRSIG{Hdr: dns.RR_Header{Ttl: set[0].Header().Ttl}, Algorithm: z.key.Algorithm, KeyTag: z.key.KeyTag(),
		SignerName: z.zone, Inception: uint32(time.Now().Add(-time.Hour).Unix()), Expiration: uint32(time.Now().Add(24 * time.Hour).Unix())}
	key := z.priv
	if z.bogus[qname] {
		key = z.wrong
	}
	if err := sig.Sign(key, set); err != nil {
		panic(fmt.Sprintf("testmx: sign: %v", err))
	}
	return sig
}
