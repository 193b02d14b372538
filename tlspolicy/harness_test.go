package tlspolicy

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/smtpclient"
	"github.com/mailferry/mailferry/store"
)

// policyServer is an HTTPS server on 127.0.0.10 answering
// /.well-known/mta-sts.txt for the mta-sts.<domain> names it has a policy
// for, with a certificate from testCA.
type policyServer struct {
	port    int
	mu      sync.Mutex
	bodies  map[string]string // by Host
	fetches atomic.Int64
	// hold, when set, is waited on before answering (to line up fetches).
	hold chan struct{}
}

func startPolicyServer(t *testing.T, names ...string) *policyServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.10:0")
	if err != nil {
		t.Fatal(err)
	}
	cert := testCA.Issue(t, names...)
	ps := &policyServer{port: ln.Addr().(*net.TCPAddr).Port, bodies: map[string]string{}}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ps.fetches.Add(1)
			ps.mu.Lock()
			body, ok := ps.bodies[r.Host]
			hold := ps.hold
			ps.mu.Unlock()
			if hold != nil {
				<-hold
			}
			if !ok || r.URL.Path != "/.well-known/mta-sts.txt" {
				http.NotFound(w, r)
				return
			}
			if strings.HasPrefix(body, "redirect:") {
				http.Redirect(w, r, strings.TrimPrefix(body, "redirect:"), http.StatusFound)
				return
			}
			ct := "text/plain; charset=utf-8"
			if strings.HasPrefix(body, "<") {
				ct = "text/html"
			}
			w.Header().Set("Content-Type", ct)
			w.Write([]byte(body))
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		ErrorLog:  log.New(io.Discard, "", 0),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeTLS(ln, "", "")
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ps
}

func (ps *policyServer) set(domain, body string) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.bodies["mta-sts."+domain] = body
}

// env is one test's world: DNS, a policy server, MX hosts, a ledger.
type env struct {
	t     *testing.T
	dns   *testmx.DNS
	ps    *policyServer
	db    string
	store *store.Store
	port  int // of every MX host
	reg   *prometheus.Registry
	now   time.Time
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, dns: testmx.StartDNS(t), db: testenv.Database(t), reg: prometheus.NewRegistry(), now: time.Now()}
	e.store = e.openStore()
	if _, err := e.store.Migrate(t.Context()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	e.ps = startPolicyServer(t, "mta-sts.example.test", "mta-sts.other.test", "mta-sts.broken.test")
	e.dns.A("mta-sts.example.test", "127.0.0.10")
	e.dns.A("mta-sts.other.test", "127.0.0.10")
	return e
}

func (e *env) openStore() *store.Store {
	s, err := store.Open(e.t.Context(), store.Options{URL: e.db})
	if err != nil {
		e.t.Fatalf("open store: %v", err)
	}
	e.t.Cleanup(s.Close)
	return s
}

// mx starts SMTP servers on the given loopback addresses (one port for
// all) and names them in DNS.
func (e *env) mx(opts map[string]testmx.SMTPOptions, ips ...string) map[string]*testmx.SMTP {
	e.t.Helper()
	port, lns := testmx.Listen(e.t, ips...)
	e.port = port
	out := map[string]*testmx.SMTP{}
	for i, ip := range ips {
		out[ip] = testmx.StartSMTP(e.t, lns[i], opts[ip])
	}
	return out
}

// client is the policy layer over a real SMTP client aimed at e.port.
func (e *env) client(cache Cache, edit func(*Options)) *Client {
	e.t.Helper()
	inner, err := smtpclient.New(smtpclient.Options{Hostname: "relay.test", Port: e.port, AllowPrivate: true,
		Timeouts: smtpclient.Timeouts{Connect: 2 * time.Second, Greeting: 3 * time.Second, Hello: 3 * time.Second,
			TLS: 3 * time.Second, Mail: 3 * time.Second, Rcpt: 3 * time.Second, DataInit: 3 * time.Second,
			DataBlock: 3 * time.Second, DataEnd: 3 * time.Second, Quit: time.Second}})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(inner.CloseIdle)
	opts := Options{Inner: inner, Cache: cache, MTASTS: true, DNSServer: e.dns.Addr(), AllowPrivate: true,
		HTTPSPort: e.ps.port, FetchTimeout: 3 * time.Second, Registerer: prometheus.NewRegistry(),
		Now: func() time.Time { return e.now }}
	if edit != nil {
		edit(&opts)
	}
	c, err := New(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func host(name, ip string) smtpclient.Host {
	return smtpclient.Host{Name: name, Addrs: []netip.Addr{netip.MustParseAddr(ip)}}
}

func envelope(header string, to ...string) smtpclient.Envelope {
	return smtpclient.Envelope{From: "alice@sender.test", To: to,
		Body: smtpclient.Message("", []byte("From: alice@sender.test\r\n"+header+"Subject: hi\r\n\r\nHello.\r\n"))}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}
