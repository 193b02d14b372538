package main

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// dnsServer answers from a zone held in memory, on 127.0.0.1 over UDP and
// TCP on one port, as a recursive resolver would: records of the asked
// type, NOERROR with no answer for a name that has other types, NXDOMAIN
// for a name it does not know. internal/testmx has such a server but needs
// a *testing.T; this one is smaller and lives as long as the benchmark.
type dnsServer struct {
	addr     string
	udp, tcp *dns.Server

	mu      sync.RWMutex
	records map[string][]dns.RR // by lower-case FQDN
}

func startDNS() (*dnsServer, error) {
	d := &dnsServer{records: make(map[string][]dns.RR)}
	var (
		pc  net.PacketConn
		ln  net.Listener
		err error
	)
	for range 50 {
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("dns: listen udp: %w", err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("dns: no port free for both UDP and TCP: %w", err)
	}
	d.addr = pc.LocalAddr().String()
	d.udp = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(d.serve)}
	d.tcp = &dns.Server{Listener: ln, Handler: dns.HandlerFunc(d.serve)}
	for _, s := range []*dns.Server{d.udp, d.tcp} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go s.ActivateAndServe()
		<-started
	}
	return d, nil
}

func (d *dnsServer) close() {
	d.udp.Shutdown()
	d.tcp.Shutdown()
}

func fqdn(name string) string { return strings.ToLower(dns.Fqdn(name)) }

func hdr(name string, rrtype uint16) dns.RR_Header {
	return dns.RR_Header{Name: fqdn(name), Rrtype: rrtype, Class: dns.ClassINET, Ttl: 300}
}

func (d *dnsServer) add(rr dns.RR) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := rr.Header().Name
	d.records[n] = append(d.records[n], rr)
}

// mx points domain at host.
func (d *dnsServer) mx(domain, host string) {
	d.add(&dns.MX{Hdr: hdr(domain, dns.TypeMX), Preference: 10, Mx: fqdn(host)})
}

// a gives host an IPv4 address, which must be loopback.
func (d *dnsServer) a(host string, ip netip.Addr) {
	if !ip.Is4() || !ip.IsLoopback() {
		panic("mfbench: DNS A record outside 127.0.0.0/8: " + ip.String())
	}
	b := ip.As4()
	d.add(&dns.A{Hdr: hdr(host, dns.TypeA), A: net.IP(b[:])})
}

// setTXT replaces the TXT records of name with one record of parts.
func (d *dnsServer) setTXT(name string, parts []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := fqdn(name)
	var keep []dns.RR
	for _, rr := range d.records[n] {
		if rr.Header().Rrtype != dns.TypeTXT {
			keep = append(keep, rr)
		}
	}
	d.records[n] = append(keep, &dns.TXT{Hdr: hdr(n, dns.TypeTXT), Txt: parts})
}

// lookupTXT answers from the zone directly, for DKIM verification in
// process.
func (d *dnsServer) lookupTXT(name string) ([]string, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	var out []string
	for _, rr := range d.records[fqdn(name)] {
		if t, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(t.Txt, ""))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no TXT record for %s", name)
	}
	return out, nil
}

func (d *dnsServer) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	if len(req.Question) != 1 {
		m.SetRcode(req, dns.RcodeFormatError)
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	m.SetReply(req)
	m.RecursionAvailable = true
	d.mu.RLock()
	rrs, known := d.records[strings.ToLower(q.Name)]
	if !known {
		m.Rcode = dns.RcodeNameError
	}
	for _, rr := range rrs {
		if rr.Header().Rrtype == q.Qtype {
			m.Answer = append(m.Answer, rr)
		}
	}
	d.mu.RUnlock()
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), false)
	}
	w.WriteMsg(m)
}
