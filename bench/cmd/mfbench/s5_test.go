package main

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

func TestGauge(t *testing.T) {
	var g gauge
	var wg sync.WaitGroup
	// 8 goroutines each hold one at a time: never more than 8 open.
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				g.inc()
				g.dec()
			}
		})
	}
	wg.Wait()
	if g.value() != 0 {
		t.Errorf("open after all closed = %d", g.value())
	}
	if p := g.max(); p < 1 || p > 8 {
		t.Errorf("peak = %d, want 1 to 8", p)
	}
	var h gauge
	h.inc()
	h.inc()
	h.inc()
	h.dec()
	h.inc()
	if h.max() != 3 || h.value() != 3 {
		t.Errorf("peak %d, open %d; want 3 and 3", h.max(), h.value())
	}
}

func TestTurnConnCloseOnce(t *testing.T) {
	tl := &tally{}
	tl.open.inc()
	c := &turnConn{Conn: nopConn{}, t: tl}
	c.Close()
	c.Close() // a TLS wrapper closes the connection again
	if tl.open.value() != 0 {
		t.Errorf("open = %d after two Close calls, want 0", tl.open.value())
	}
}

func TestParseS5Variants(t *testing.T) {
	all, err := parseS5Variants("all")
	if err != nil || len(all) != 6 {
		t.Fatalf("all: %d variants, %v", len(all), err)
	}
	seen := map[string]bool{}
	for _, v := range all {
		if seen[v.key()] {
			t.Errorf("key %s twice", v.key())
		}
		seen[v.key()] = true
	}
	for _, k := range []string{"s5-direct-none", "s5-direct-ed25519", "s5-direct-rsa2048", "s5-smarthost-none", "s5-smarthost-ed25519", "s5-smarthost-rsa2048"} {
		if !seen[k] {
			t.Errorf("no variant %s", k)
		}
	}
	got, err := parseS5Variants("smarthost-rsa2048, direct-none,direct-none")
	if err != nil || len(got) != 2 || got[0].key() != "s5-smarthost-rsa2048" || !got[0].Smarthost || got[1].Alg != "" {
		t.Errorf("two variants: %+v, %v", got, err)
	}
	if got, err := parseS5Variants("none"); err != nil || len(got) != 0 {
		t.Errorf("none: %v, %v", got, err)
	}
	for _, bad := range []string{"direct", "smarthost-rsa", "direct-none,x"} {
		if _, err := parseS5Variants(bad); err == nil || !strings.Contains(err.Error(), "-s5-variants") {
			t.Errorf("%q: error %v, want one naming -s5-variants", bad, err)
		}
	}
}

func TestPostfixConfig(t *testing.T) {
	o := postfixOptions{
		Dir:    "/tmp/pf",
		Listen: netip.MustParseAddrPort("127.0.0.7:2525"),
		Relay:  netip.MustParseAddrPort("127.0.0.2:4000"),
	}
	main := postfixMainCF(o)
	for _, want := range []string{
		"relayhost = [127.0.0.2]:4000",
		"default_destination_concurrency_limit = 50",
		"smtp_connection_cache_on_demand = yes",
		"smtp_tls_connection_reuse = yes",
		"smtp_tls_security_level = may",
		"queue_directory = /tmp/pf/queue",
		"mydestination =\n",
	} {
		if !strings.Contains(main, want) {
			t.Errorf("main.cf lacks %q:\n%s", want, main)
		}
	}
	if strings.Contains(main, "milter") {
		t.Error("main.cf without OpenDKIM names a milter")
	}
	o.Milter = "inet:127.0.0.1:8891"
	if main := postfixMainCF(o); !strings.Contains(main, "smtpd_milters = inet:127.0.0.1:8891\n") {
		t.Errorf("main.cf with OpenDKIM:\n%s", main)
	}
	master := postfixMasterCF(o)
	if !strings.HasPrefix(master, "127.0.0.7:2525 inet ") {
		t.Errorf("master.cf does not listen on 127.0.0.7:2525 alone:\n%s", master)
	}
	for _, line := range strings.Split(strings.TrimSpace(master), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || f[4] != "n" {
			t.Errorf("master.cf line %q: want 8 fields with chroot n", line)
		}
		if f[1] == "inet" && f[0] != "127.0.0.7:2525" {
			t.Errorf("master.cf listens on %s", f[0])
		}
	}
	conf := opendkimConf("/tmp/pf", 8891, "pf0")
	for _, want := range []string{"Socket inet:8891@127.0.0.1\n", "Selector pf0\n", "Domain " + senderDomain + "\n", "Mode s\n"} {
		if !strings.Contains(conf, want) {
			t.Errorf("opendkim.conf lacks %q:\n%s", want, conf)
		}
	}
	// The instance's address comes after the sink's and the tarpit's.
	if a := postfixAddr(4); a != netip.MustParseAddr("127.0.0.7") {
		t.Errorf("postfixAddr(4) = %s", a)
	}
	if err := loopbackOnly(netip.AddrPortFrom(postfixAddr(200), 25).String()); err != nil {
		t.Error(err)
	}
}

func TestSmarthostURL(t *testing.T) {
	if got := smarthostURL(netip.MustParseAddrPort("127.0.0.2:4000")); got != "smtp://127.0.0.2:4000" {
		t.Errorf("smarthostURL = %q", got)
	}
}

func TestS5CompareRelays(t *testing.T) {
	mk := func(key string, runs ...map[string]float64) *scenarioResult {
		r := newScenario(key, key)
		r.Runs = runs
		return r
	}
	by := map[string]*scenarioResult{
		"s5-smarthost-none":    mk("s5-smarthost-none", map[string]float64{"drain": 300, "cpu_ms": 1}, map[string]float64{"drain": 600, "cpu_ms": 2}),
		"s5-postfix":           mk("s5-postfix", map[string]float64{"e2e": 100, "cpu_ms": 4}, map[string]float64{"e2e": 200, "cpu_ms": 4}),
		"s5-smarthost-rsa2048": mk("s5-smarthost-rsa2048", map[string]float64{"drain": 50, "cpu_ms": 3}),
		// No Postfix + OpenDKIM run: those ratios are left out.
	}
	res := s5CompareRelays(by)
	if len(res.Runs) != 2 {
		t.Fatalf("%d runs, want 2", len(res.Runs))
	}
	if got := res.median("rate_s5-smarthost-none"); got != 3 {
		t.Errorf("rate ratio median = %v, want 3", got)
	}
	if got := res.Runs[1]["cpu_s5-smarthost-none"]; got != 0.5 {
		t.Errorf("second run's CPU ratio = %v, want 0.5", got)
	}
	if res.has("rate_s5-smarthost-rsa2048") {
		t.Error("a ratio against a Postfix run that did not happen")
	}
}

// nopConn is a net.Conn that does nothing.
type nopConn struct{ net.Conn }

func (nopConn) Close() error { return nil }
