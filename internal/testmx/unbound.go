package testmx

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Unbound is Debian's unbound running as a validating resolver for one
// test: every question goes to zone's server (a stub for the zone and for
// the root, so nothing ever leaves loopback), and zone's key is its only
// trust anchor.
type Unbound struct {
	addr string
}

// StartUnbound runs unbound until the test ends; it fails the test if the
// binary is missing (scripts/install-deps.sh installs it).
func StartUnbound(t testing.TB, zone *SignedZone) *Unbound {
	t.Helper()
	bin, err := exec.LookPath("unbound")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/unbound"); serr != nil {
			t.Fatalf("testmx: unbound not installed (run scripts/install-deps.sh): %v", err)
		}
		bin = "/usr/sbin/unbound"
	}
	dir := t.TempDir()
	port := freePort(t)
	conf := fmt.Sprintf(`server:
	interface: 127.0.0.1
	port: %d
	do-ip6: no
	do-daemonize: no
	username: ""
	chroot: ""
	directory: %q
	pidfile: %q
	use-syslog: no
	logfile: ""
	verbosity: 0
	access-control: 127.0.0.0/8 allow
	do-not-query-localhost: no
	module-config: "validator iterator"
	trust-anchor: %q
	qname-minimisation: no
	prefetch: no
	target-fetch-policy: "0 0 0 0 0"
	cache-max-ttl: 1
	cache-max-negative-ttl: 1
	val-log-level: 0
	harden-referral-path: no
	# RFC 6761 names (test., invalid., …) are answered locally by default;
	# the test zones live under them.
	local-zone: "test." nodefault
stub-zone:
	name: %q
	stub-addr: %s
stub-zone:
	name: "."
	stub-addr: %s
`, port, dir, filepath.Join(dir, "unbound.pid"), zone.TrustAnchor(), zone.zone, atPort(zone.addr), atPort(zone.addr))
	cfg := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, "-d", "-c", cfg)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("testmx: start unbound: %v", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	u := &Unbound{addr: fmt.Sprintf("127.0.0.1:%d", port)}
	// Ready when it answers the zone's SOA, validated, three times in a
	// row: a first answer can come while it still sets up its listeners
	// (a query right after it was refused 1 run in 30); give up after 10 s.
	deadline := time.Now().Add(10 * time.Second)
	for answered := 0; ; {
		m := new(dns.Msg)
		m.SetQuestion(zone.zone, dns.TypeSOA)
		m.SetEdns0(1232, true)
		c := &dns.Client{Timeout: 200 * time.Millisecond}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		resp, _, err := c.ExchangeContext(ctx, m, u.addr)
		cancel()
		if err == nil && resp.Rcode == dns.RcodeSuccess && resp.AuthenticatedData {
			if answered++; answered == 3 {
				return u
			}
			time.Sleep(10 * time.Millisecond) // polling a process that has no readiness signal
			continue
		}
		answered = 0
		select {
		case <-done:
			t.Fatalf("testmx: unbound exited: %s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("testmx: unbound did not answer within 10s: %v; output: %s", err, out.String())
		}
	}
}

// Addr is the resolver's "127.0.0.1:port".
func (u *Unbound) Addr() string { return u.addr }

// atPort turns "127.0.0.1:53" into unbound's "127.0.0.1@53".
func atPort(addr string) string {
	h, p, _ := net.SplitHostPort(addr)
	return h + "@" + p
}

// freePort finds a port free for both UDP and TCP on 127.0.0.1.
func freePort(t testing.TB) int {
	t.Helper()
	for range 50 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		pc.Close()
		if err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatal("testmx: no free port for unbound")
	return 0
}
