// Command devdns is `make run`'s DNS server: it answers from a file of
// records the README's onboarding walk-through appends to, and passes
// every other question to the system's resolver, so that Mailferry's
// domain checks (MAILFERRY_DNS_SERVER) see records nobody published on
// the Internet.
//
//	devdns -records .run/dns-records.txt -addr-file .run/dns.addr
//
// Each line of the records file is "NAME TYPE VALUE" (TYPE one of TXT,
// CNAME, MX, A; a TXT VALUE is the record's text, cut into 255-byte
// strings here) or a zone-file line ("name. IN TXT ( "…" "…" )", as
// `mailferry dkim zone` prints). Lines starting with # or ; are comments.
// The file is read again whenever it changes.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

func main() {
	records := flag.String("records", "", "file of records to serve (required)")
	addrFile := flag.String("addr-file", "", "file to write host:port to once listening")
	flag.Parse()
	if *records == "" {
		log.Fatal("devdns: -records is required")
	}
	if err := run(*records, *addrFile); err != nil {
		log.Fatal("devdns: ", err)
	}
}

type server struct {
	path     string
	upstream string // "" when the system has no resolver

	mu    sync.Mutex
	mtime time.Time
	size  int64
	rrs   map[string][]dns.RR
}

func run(path, addrFile string) error {
	if f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o644); err == nil {
		f.Close()
	}
	s := &server{path: path}
	if cfg, err := dns.ClientConfigFromFile("/etc/resolv.conf"); err == nil && len(cfg.Servers) > 0 {
		s.upstream = net.JoinHostPort(cfg.Servers[0], cfg.Port)
	}
	pc, ln, err := listen()
	if err != nil {
		return err
	}
	udp := &dns.Server{PacketConn: pc, Handler: s}
	tcp := &dns.Server{Listener: ln, Handler: s}
	errc := make(chan error, 2)
	go func() { errc <- udp.ActivateAndServe() }()
	go func() { errc <- tcp.ActivateAndServe() }()
	addr := pc.LocalAddr().String()
	if addrFile != "" {
		if err := os.WriteFile(addrFile, []byte(addr+"\n"), 0o644); err != nil {
			return err
		}
	}
	log.Printf("devdns: serving %s on %s (udp and tcp)", path, addr)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-sig:
	case err := <-errc:
		return err
	}
	udp.Shutdown()
	tcp.Shutdown()
	return nil
}

// listen takes one port on 127.0.0.1 for both UDP and TCP.
func listen() (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range 50 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = err
	}
	return nil, nil, fmt.Errorf("no port free for both UDP and TCP: %w", lastErr)
}

// load re-reads the records file when it changed.
func (s *server) load() map[string][]dns.RR {
	s.mu.Lock()
	defer s.mu.Unlock()
	fi, err := os.Stat(s.path)
	if err != nil {
		return s.rrs
	}
	if s.rrs != nil && fi.ModTime().Equal(s.mtime) && fi.Size() == s.size {
		return s.rrs
	}
	b, err := os.ReadFile(s.path)
	if err != nil {
		return s.rrs
	}
	rrs, errs := parseRecords(string(b))
	for _, e := range errs {
		log.Printf("devdns: %s: %v", s.path, e)
	}
	s.rrs, s.mtime, s.size = rrs, fi.ModTime(), fi.Size()
	return rrs
}

// parseRecords reads the records file; bad lines are reported and left
// out.
func parseRecords(text string) (map[string][]dns.RR, []error) {
	out := map[string][]dns.RR{}
	var errs []error
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		rr, err := parseLine(line)
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w", i+1, err))
			continue
		}
		k := strings.ToLower(rr.Header().Name)
		out[k] = append(out[k], rr)
	}
	return out, errs
}

func parseLine(line string) (dns.RR, error) {
	f := strings.Fields(line)
	if len(f) >= 3 {
		name := dns.Fqdn(strings.ToLower(f[0]))
		hdr := func(t uint16) dns.RR_Header {
			return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: 60}
		}
		value := strings.TrimSpace(strings.SplitN(line, f[1], 2)[1])
		switch strings.ToUpper(f[1]) {
		case "TXT":
			// RFC 1035 3.3.14: strings of at most 255 bytes; a verifier
			// joins them (RFC 6376 3.6.2.2, RFC 7208 3.3).
			var parts []string
			for len(value) > 255 {
				parts = append(parts, value[:255])
				value = value[255:]
			}
			return &dns.TXT{Hdr: hdr(dns.TypeTXT), Txt: append(parts, value)}, nil
		case "CNAME":
			return &dns.CNAME{Hdr: hdr(dns.TypeCNAME), Target: dns.Fqdn(f[2])}, nil
		case "MX":
			var pref uint16
			if len(f) != 4 {
				return nil, errors.New("an MX line is NAME MX PREFERENCE HOST")
			}
			if _, err := fmt.Sscan(f[2], &pref); err != nil {
				return nil, fmt.Errorf("MX preference %q: %w", f[2], err)
			}
			return &dns.MX{Hdr: hdr(dns.TypeMX), Preference: pref, Mx: dns.Fqdn(f[3])}, nil
		case "A":
			ip := net.ParseIP(f[2]).To4()
			if ip == nil {
				return nil, fmt.Errorf("an A record needs an IPv4 address, not %q", f[2])
			}
			return &dns.A{Hdr: hdr(dns.TypeA), A: ip}, nil
		}
	}
	rr, err := dns.NewRR(line)
	if err != nil {
		return nil, err
	}
	if rr == nil {
		return nil, errors.New("no record")
	}
	return rr, nil
}

// ServeDNS answers from the file, following CNAMEs it knows (RFC 1034
// 3.6.2), and forwards names it does not know.
func (s *server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	rrs := s.load()
	name := strings.ToLower(q.Name)
	if _, ok := rrs[name]; !ok {
		s.forward(w, req)
		return
	}
	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	for range 8 {
		var cname *dns.CNAME
		for _, rr := range rrs[name] {
			if rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, dns.Copy(rr))
			}
			if c, ok := rr.(*dns.CNAME); ok {
				cname = c
			}
		}
		if cname == nil || q.Qtype == dns.TypeCNAME {
			break
		}
		m.Answer = append(m.Answer, dns.Copy(cname))
		name = strings.ToLower(cname.Target)
		if _, ok := rrs[name]; !ok {
			break
		}
	}
	w.WriteMsg(m)
}

func (s *server) forward(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	if s.upstream == "" {
		m.SetRcode(req, dns.RcodeNameError)
		w.WriteMsg(m)
		return
	}
	network := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		network = "tcp"
	}
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	resp, _, err := c.Exchange(req, s.upstream)
	if err != nil {
		m.SetRcode(req, dns.RcodeServerFailure)
		w.WriteMsg(m)
		return
	}
	w.WriteMsg(resp)
}
