package testmx

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DNS is a real DNS server on 127.0.0.1 (UDP and TCP on one port) answering
// from records a test sets. It answers like a recursive resolver would: it
// follows CNAMEs it knows, says NOERROR with no answer (NODATA) for a name
// that has records of other types, and NXDOMAIN for a name it knows nothing
// of.
type DNS struct {
	addr string

	mu       sync.Mutex
	records  map[string][]dns.RR // by lower-case FQDN
	nx       map[string]bool
	servfail map[string]bool
	timeout  map[string]bool
	truncate map[string]bool
	queries  []Query
	ttl      uint32                   // of records added from now on
	soa      map[string]*dns.SOA      // by zone FQDN
	delay    map[string]time.Duration // by FQDN
}

// Query is one question the server was asked.
type Query struct {
	Net  string // "udp" or "tcp"
	Name string // FQDN, lower case
	Type string // "MX", "A", …
}

// StartDNS starts a DNS server for one test; it stops when the test ends.
func StartDNS(t testing.TB) *DNS {
	t.Helper()
	d := &DNS{
		records:  make(map[string][]dns.RR),
		nx:       make(map[string]bool),
		servfail: make(map[string]bool),
		timeout:  make(map[string]bool),
		truncate: make(map[string]bool),
		ttl:      60,
		soa:      make(map[string]*dns.SOA),
		delay:    make(map[string]time.Duration),
	}
	var (
		pc  net.PacketConn
		ln  net.Listener
		err error
	)
	for range 50 {
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("testmx: DNS listen udp: %v", err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatalf("testmx: DNS: no port free for both UDP and TCP: %v", err)
	}
	d.addr = pc.LocalAddr().String()

	udp := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(d.serve)}
	tcp := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(d.serve)}
	var wg sync.WaitGroup
	for _, s := range []*dns.Server{udp, tcp} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		wg.Go(func() { s.ActivateAndServe() })
		<-started
	}
	t.Cleanup(func() {
		udp.Shutdown()
		tcp.Shutdown()
		wg.Wait()
	})
	return d
}

// Addr is the server's "host:port", for the resolver option under test.
func (d *DNS) Addr() string { return d.addr }

// MX adds an MX record; host "." makes a null MX (RFC 7505).
func (d *DNS) MX(name string, pref uint16, host string) {
	d.add(&dns.MX{Hdr: d.hdr(name, dns.TypeMX), Preference: pref, Mx: dns.Fqdn(host)})
}

// A adds A records. An address that is not IPv4 fails the test at once by
// panicking: it is a mistake in the test itself.
func (d *DNS) A(name string, ips ...string) {
	for _, ip := range ips {
		a := netip.MustParseAddr(ip)
		if !a.Is4() {
			panic("testmx: A record needs an IPv4 address, got " + ip)
		}
		b := a.As4()
		d.add(&dns.A{Hdr: d.hdr(name, dns.TypeA), A: net.IP(b[:])})
	}
}

// AAAA adds AAAA records; IPv4-mapped forms such as ::ffff:127.0.0.1 are
// kept as 16-byte IPv6 addresses on the wire, as a hostile zone would send.
func (d *DNS) AAAA(name string, ips ...string) {
	for _, ip := range ips {
		b := netip.MustParseAddr(ip).As16()
		d.add(&dns.AAAA{Hdr: d.hdr(name, dns.TypeAAAA), AAAA: net.IP(b[:])})
	}
}

// TXT adds one TXT record made of the given strings.
func (d *DNS) TXT(name string, txt ...string) {
	d.add(&dns.TXT{Hdr: d.hdr(name, dns.TypeTXT), Txt: txt})
}

// CNAME makes name an alias of target.
func (d *DNS) CNAME(name, target string) {
	d.add(&dns.CNAME{Hdr: d.hdr(name, dns.TypeCNAME), Target: dns.Fqdn(target)})
}

// NXDOMAIN makes every question about name answer "no such domain" even if
// records were set.
func (d *DNS) NXDOMAIN(name string) { d.set(d.nx, name) }

// ServFail makes every question about name answer SERVFAIL.
func (d *DNS) ServFail(name string) { d.set(d.servfail, name) }

// Timeout makes the server ignore every question about name.
func (d *DNS) Timeout(name string) { d.set(d.timeout, name) }

// Truncate makes UDP answers about name come back empty with the TC bit set,
// so only a client that retries over TCP gets the records.
func (d *DNS) Truncate(name string) { d.set(d.truncate, name) }

// TTL sets the TTL, in seconds, of the records added after it; 60 until
// then.
func (d *DNS) TTL(seconds uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ttl = seconds
}

// SOA makes negative answers (NXDOMAIN and NODATA) about zone and names
// under it carry the zone's SOA record in the authority section, with the
// given record TTL and MINIMUM field, as RFC 2308 3 asks of servers. Without
// it negative answers have no authority section.
func (d *DNS) SOA(zone string, ttl, minimum uint32) {
	z := key(zone)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.soa[z] = &dns.SOA{
		Hdr: dns.RR_Header{Name: z, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
		Ns:  "ns." + z, Mbox: "hostmaster." + z, Serial: 1,
		Refresh: 3600, Retry: 600, Expire: 86400, Minttl: minimum,
	}
}

// Delay holds every answer about name for wait before sending it, like a
// slow authoritative server behind the resolver.
func (d *DNS) Delay(name string, wait time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.delay[key(name)] = wait
}

// Clear forgets name's records and any NXDOMAIN, ServFail, Timeout,
// Truncate or Delay set for it: the server then knows nothing of name.
func (d *DNS) Clear(name string) {
	k := key(name)
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range []map[string]bool{d.nx, d.servfail, d.timeout, d.truncate} {
		delete(m, k)
	}
	delete(d.records, k)
	delete(d.delay, k)
}

// Count returns how many questions about name of type qtype ("MX", "A",
// …) the server was asked so far, over UDP and TCP.
func (d *DNS) Count(name, qtype string) int {
	k := key(name)
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, q := range d.queries {
		if q.Name == k && q.Type == qtype {
			n++
		}
	}
	return n
}

// Queries returns the questions asked so far, in order.
func (d *DNS) Queries() []Query {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Query(nil), d.queries...)
}

func (d *DNS) hdr(name string, rrtype uint16) dns.RR_Header {
	d.mu.Lock()
	defer d.mu.Unlock()
	return dns.RR_Header{Name: key(name), Rrtype: rrtype, Class: dns.ClassINET, Ttl: d.ttl}
}

func (d *DNS) add(rr dns.RR) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := rr.Header().Name
	d.records[n] = append(d.records[n], rr)
}

func (d *DNS) set(m map[string]bool, name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m[key(name)] = true
}

func key(name string) string { return strings.ToLower(dns.Fqdn(name)) }

func (d *DNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := key(q.Name)
	network := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		network = "tcp"
	}

	d.mu.Lock()
	wait := d.delay[name]
	d.mu.Unlock()
	if wait > 0 {
		time.Sleep(wait)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	d.queries = append(d.queries, Query{Net: network, Name: name, Type: dns.TypeToString[q.Qtype]})
	if d.timeout[name] {
		return
	}
	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	switch {
	case d.servfail[name]:
		m.Rcode = dns.RcodeServerFailure
	case d.nx[name]:
		m.Rcode = dns.RcodeNameError
	case d.truncate[name] && network == "udp":
		m.Truncated = true
	default:
		d.answer(m, name, q.Qtype)
	}
	if m.Rcode == dns.RcodeNameError || (m.Rcode == dns.RcodeSuccess && !m.Truncated && !hasType(m.Answer, q.Qtype)) {
		if soa := d.zoneSOA(name); soa != nil {
			m.Ns = append(m.Ns, dns.Copy(soa))
		}
	}
	w.WriteMsg(m)
}

// zoneSOA returns the SOA set with SOA for the closest zone enclosing name,
// or nil.
func (d *DNS) zoneSOA(name string) *dns.SOA {
	for off, end := 0, false; !end; off, end = dns.NextLabel(name, off) {
		if soa := d.soa[name[off:]]; soa != nil {
			return soa
		}
	}
	return nil
}

func hasType(rrs []dns.RR, qtype uint16) bool {
	for _, rr := range rrs {
		if rr.Header().Rrtype == qtype {
			return true
		}
	}
	return false
}

// answer fills m for name and qtype, following CNAMEs as a recursive
// resolver does (RFC 1034 3.6.2), at most 8 deep.
func (d *DNS) answer(m *dns.Msg, name string, qtype uint16) {
	for range 8 {
		rrs, known := d.records[name]
		if !known || d.nx[name] {
			if len(m.Answer) == 0 {
				m.Rcode = dns.RcodeNameError
			}
			return
		}
		var cname *dns.CNAME
		for _, rr := range rrs {
			if rr.Header().Rrtype == qtype {
				m.Answer = append(m.Answer, dns.Copy(rr))
			}
			if c, ok := rr.(*dns.CNAME); ok {
				cname = c
			}
		}
		if cname == nil || qtype == dns.TypeCNAME {
			return
		}
		m.Answer = append(m.Answer, dns.Copy(cname))
		name = key(cname.Target)
	}
}
