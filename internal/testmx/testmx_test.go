package testmx

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestListenSharesPort(t *testing.T) {
	port, lns := Listen(t, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	for i, ln := range lns {
		a := ln.Addr().(*net.TCPAddr)
		if a.Port != port || a.IP.String() != []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}[i] {
			t.Errorf("listener %d on %v, want port %d", i, a, port)
		}
	}
}

func TestDNS(t *testing.T) {
	d := StartDNS(t)
	d.MX("example.net", 10, "mx.example.net")
	d.CNAME("mx.example.net", "real.example.org")
	d.A("real.example.org", "127.0.0.2")
	d.AAAA("real.example.org", "::ffff:127.0.0.1")
	d.TXT("example.net", "v=spf1 -all")
	d.ServFail("broken.example.net")
	d.NXDOMAIN("gone.example.net")

	ask := func(network, name string, qtype uint16) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), qtype)
		c := &dns.Client{Net: network, Timeout: time.Second}
		r, _, err := c.Exchange(m, d.Addr())
		if err != nil {
			t.Fatalf("%s %s %s: %v", network, name, dns.TypeToString[qtype], err)
		}
		return r
	}
	for _, tc := range []struct {
		name    string
		qtype   uint16
		rcode   int
		answers int
	}{
		{"example.net", dns.TypeMX, dns.RcodeSuccess, 1},
		{"example.net", dns.TypeA, dns.RcodeSuccess, 0}, // NODATA
		{"example.net", dns.TypeTXT, dns.RcodeSuccess, 1},
		{"mx.example.net", dns.TypeA, dns.RcodeSuccess, 2}, // CNAME + A
		{"mx.example.net", dns.TypeAAAA, dns.RcodeSuccess, 2},
		{"unknown.example.net", dns.TypeA, dns.RcodeNameError, 0},
		{"gone.example.net", dns.TypeA, dns.RcodeNameError, 0},
		{"broken.example.net", dns.TypeMX, dns.RcodeServerFailure, 0},
	} {
		for _, network := range []string{"udp", "tcp"} {
			r := ask(network, tc.name, tc.qtype)
			if r.Rcode != tc.rcode || len(r.Answer) != tc.answers {
				t.Errorf("%s %s %s: rcode %s, %d answers; want %s, %d", network, tc.name, dns.TypeToString[tc.qtype],
					dns.RcodeToString[r.Rcode], len(r.Answer), dns.RcodeToString[tc.rcode], tc.answers)
			}
		}
	}
	d.Truncate("example.net")
	if r := ask("udp", "example.net", dns.TypeMX); !r.Truncated || len(r.Answer) != 0 {
		t.Errorf("truncated UDP answer: TC %v, %d answers", r.Truncated, len(r.Answer))
	}
	if r := ask("tcp", "example.net", dns.TypeMX); r.Truncated || len(r.Answer) != 1 {
		t.Errorf("TCP answer: TC %v, %d answers", r.Truncated, len(r.Answer))
	}
}

func TestParseScripted(t *testing.T) {
	e := parseScripted("550 5.1.1 no such user")
	if e.Code != 550 || e.EnhancedCode != [3]int{5, 1, 1} || e.Message != "no such user" {
		t.Errorf("got %+v", e)
	}
	e = parseScripted("451 greylisted")
	if e.Code != 451 || e.Message != "greylisted" || e.EnhancedCode != [3]int{-1, -1, -1} {
		t.Errorf("got %+v", e)
	}
}

// TestSMTPScript: scripted replies reach the wire as written.
func TestSMTPScript(t *testing.T) {
	_, lns := Listen(t, "127.0.0.2")
	s := StartSMTP(t, lns[0], SMTPOptions{NoTLS: true})
	s.OnRcpt("bob@example.net", "550 5.1.1 no such user")
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	read := func() string {
		var last string
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			last = strings.TrimRight(l, "\r\n")
			if len(last) < 4 || last[3] != '-' {
				return last
			}
		}
	}
	read()
	for _, step := range [][2]string{
		{"EHLO client.test", "250 "},
		{"MAIL FROM:<a@example.com>", "250 "},
		{"RCPT TO:<bob@example.net>", "550 5.1.1 no such user"},
		{"RCPT TO:<bob@example.net>", "250 "}, // script used up: accept
	} {
		c.Write([]byte(step[0] + "\r\n"))
		if got := read(); !strings.HasPrefix(got, step[1]) {
			t.Errorf("%s → %q, want %q", step[0], got, step[1])
		}
	}
	if h := s.Hellos(); len(h) != 1 || h[0].Name != "client.test" {
		t.Errorf("Hellos %+v", h)
	}
}

// TestDNSExtras: TTL, SOA on negative answers, Clear and Count.
func TestDNSExtras(t *testing.T) {
	d := StartDNS(t)
	d.SOA("example.net", 600, 30)
	d.TTL(300)
	d.A("mx.example.net", "127.0.0.2")
	d.TXT("other.example.org", "x")
	ask := func(name string, qtype uint16) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), qtype)
		r, _, err := (&dns.Client{Timeout: time.Second}).Exchange(m, d.Addr())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return r
	}
	if r := ask("mx.example.net", dns.TypeA); len(r.Answer) != 1 || r.Answer[0].Header().Ttl != 300 || len(r.Ns) != 0 {
		t.Errorf("positive answer: %v", r)
	}
	for _, q := range []struct {
		name  string
		qtype uint16
		rcode int
		soa   bool
	}{
		{"mx.example.net", dns.TypeAAAA, dns.RcodeSuccess, true}, // NODATA
		{"gone.example.net", dns.TypeA, dns.RcodeNameError, true},
		{"example.net", dns.TypeMX, dns.RcodeNameError, true},
		{"other.example.org", dns.TypeA, dns.RcodeSuccess, false}, // no SOA set for the zone
	} {
		r := ask(q.name, q.qtype)
		got := len(r.Ns) == 1 && r.Ns[0].(*dns.SOA).Minttl == 30 && r.Ns[0].Header().Ttl == 600
		if r.Rcode != q.rcode || got != q.soa || (!q.soa && len(r.Ns) != 0) {
			t.Errorf("%s %s: rcode %s, authority %v", q.name, dns.TypeToString[q.qtype], dns.RcodeToString[r.Rcode], r.Ns)
		}
	}
	if n := d.Count("mx.example.net", "A"); n != 1 {
		t.Errorf("Count = %d, want 1", n)
	}
	d.Clear("mx.example.net")
	if r := ask("mx.example.net", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("after Clear: rcode %s", dns.RcodeToString[r.Rcode])
	}
}
