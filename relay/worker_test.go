package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/wait"

	msgauth "github.com/emersion/go-msgauth/dkim"
	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/teststack"
	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/smtpclient"
	"github.com/mailferry/mailferry/store"
)

// pipeline is the whole delivery path on real servers: PostgreSQL, Redis,
// a DNS server and SMTP servers on loopback.
type pipeline struct {
	t      *testing.T
	st     *store.Store
	dbURL  string
	rdb    redis.UniversalClient
	prefix string
	q      *queue.Queue
	in     *intake.Intake
	dns    *testmx.DNS
	port   int
	key    store.APIKey
	opts   WorkerOptions
	router RouterOptions
	// worker is the last one start made.
	worker *Worker
}

func newPipeline(t *testing.T) *pipeline {
	t.Helper()
	ctx := context.Background()
	ts := teststack.New(t, teststack.Options{Queue: queue.Options{Consumer: "intake", VisibilityTimeout: time.Minute}})
	st := ts.Store
	p := &pipeline{t: t, st: st, dbURL: ts.DatabaseURL, rdb: ts.Redis, prefix: ts.Prefix, q: ts.Queue, in: ts.Intake, dns: testmx.StartDNS(t)}
	var err error
	p.key, _, err = st.CreateAPIKey(ctx, "acme", []string{"example.com"})
	if err != nil {
		t.Fatal(err)
	}
	sealer, err := dkim.NewSealer([]byte(strings.Repeat("s", 32)))
	if err != nil {
		t.Fatal(err)
	}
	p.router = RouterOptions{DNSServer: p.dns.Addr(), AllowPrivate: true, LookupTimeout: time.Second}
	p.opts = WorkerOptions{
		Ledger: st, Signer: dkim.NewSigner(dkim.SignOptions{}), Sealer: sealer,
		RetrySchedule: []time.Duration{200 * time.Millisecond}, MaxQueueAge: time.Hour,
		Heartbeat: 100 * time.Millisecond, Jitter: func(d time.Duration) time.Duration { return d },
	}
	return p
}

func (p *pipeline) newQueue(consumer string, visibility time.Duration) *queue.Queue {
	q, err := queue.New(p.rdb, queue.Options{Prefix: p.prefix, Consumer: consumer, VisibilityTimeout: visibility})
	if err != nil {
		p.t.Fatal(err)
	}
	return q
}

// mx starts an SMTP server for domain on a loopback address.
func (p *pipeline) mx(domain, ip string, opts testmx.SMTPOptions) *testmx.SMTP {
	p.t.Helper()
	port, lns := testmx.Listen(p.t, ip)
	if p.port == 0 {
		p.port = port
	} else if port != p.port {
		// Every MX of a test must share the client's port.
		ln, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, p.port))
		if err != nil {
			p.t.Fatalf("listen %s:%d: %v", ip, p.port, err)
		}
		p.t.Cleanup(func() { ln.Close() })
		lns = []net.Listener{ln}
	}
	host := "mx." + domain
	p.dns.MX(domain, 10, host)
	p.dns.A(host, ip)
	return testmx.StartSMTP(p.t, lns[0], opts)
}

// dkimKey creates, stores and publishes a key for example.com.
func (p *pipeline) dkimKey(alg dkim.Algorithm, selector string) {
	p.t.Helper()
	k, err := dkim.Generate(rand.Reader, "example.com", selector, alg)
	if err != nil {
		p.t.Fatal(err)
	}
	sealed, err := p.opts.Sealer.Seal(k.PrivateKey)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := p.st.CreateDKIMKey(context.Background(), store.DKIMKey{Domain: k.Domain, Selector: k.Selector,
		Algorithm: string(k.Algorithm), PrivateKey: sealed, PublicKey: k.PublicKey}); err != nil {
		p.t.Fatal(err)
	}
	p.dns.TXT(k.DNSName(), k.TXTStrings()...)
}

// start runs a worker until the test ends.
func (p *pipeline) start(consumer string, mutate func(o *WorkerOptions)) {
	p.t.Helper()
	opts := p.opts
	opts.Queue = p.newQueue(consumer, time.Minute)
	router, err := NewRouter(p.router)
	if err != nil {
		p.t.Fatal(err)
	}
	opts.Route = router.Route
	port := p.port
	if port == 0 {
		port = 25
	}
	opts.Client, err = smtpclient.New(smtpclient.Options{Hostname: "relay.test", Port: port, AllowPrivate: p.router.AllowPrivate,
		Timeouts: smtpclient.Timeouts{Connect: time.Second, Greeting: 2 * time.Second, Mail: 2 * time.Second, Rcpt: 2 * time.Second,
			DataInit: 2 * time.Second, DataBlock: 2 * time.Second, DataEnd: 2 * time.Second}})
	if err != nil {
		p.t.Fatal(err)
	}
	if mutate != nil {
		mutate(&opts)
	}
	w, err := NewWorker(opts)
	if err != nil {
		p.t.Fatal(err)
	}
	p.worker = w
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	p.t.Cleanup(func() {
		cancel()
		<-done
	})
}

func (p *pipeline) send(d mail.Draft) uuid.UUID {
	p.t.Helper()
	msg, err := mail.Build(d, mail.BuildOptions{Hostname: "relay.test"})
	if err != nil {
		p.t.Fatal(err)
	}
	return p.submit(msg)
}

func (p *pipeline) submit(msg *mail.Message) uuid.UUID {
	p.t.Helper()
	s := intake.Submission{TenantID: p.key.TenantID, APIKeyID: p.key.ID, Ingress: "api", Message: msg}
	r, err := p.in.NewReceipt(s)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := p.in.Submit(context.Background(), r, s); err != nil {
		p.t.Fatal(err)
	}
	return r.ID
}

// wait polls the ledger until the message is no longer pending.
func (p *pipeline) wait(id uuid.UUID, timeout time.Duration) *store.MessageView {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v, err := p.st.GetMessage(context.Background(), p.key.TenantID, id)
		if err != nil {
			p.t.Fatal(err)
		}
		if v.Status != store.StatusPending {
			return v
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("message still pending after %s: %+v", timeout, v.Recipients)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func rcpt(t *testing.T, v *store.MessageView, email string) store.RecipientView {
	t.Helper()
	for _, r := range v.Recipients {
		if r.Email == email {
			return r
		}
	}
	t.Fatalf("no recipient %s in %+v", email, v.Recipients)
	return store.RecipientView{}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// TestDeliverSignedToSeveralDomains: one message to two domains arrives at
// both over STARTTLS, dual-signed (RSA and Ed25519) with signatures that
// go-msgauth verifies against the test DNS, and the ledger records 250, the
// MX host and the TLS version.
func TestDeliverSignedToSeveralDomains(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		net1 := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
		org := p.mx("example.org", "127.0.0.3", testmx.SMTPOptions{})
		p.dkimKey(dkim.AlgorithmRSA2048, "rsa1")
		p.dkimKey(dkim.AlgorithmEd25519, "ed1")
		p.start("w1", nil)
		id := p.send(mail.Draft{From: "Alice <alice@example.com>", To: []string{"bob@example.net", "carol@example.org"},
			Cc: []string{"dave@example.net"}, Subject: "Signed", Text: "Hello\n.\nbye"})
		v := p.wait(id, 20*time.Second)
		if v.Status != store.StatusDelivered {
			t.Fatalf("status %s: %+v", v.Status, v.Recipients)
		}
		for _, email := range []string{"bob@example.net", "carol@example.org", "dave@example.net"} {
			r := rcpt(t, v, email)
			if r.Status != store.RecipientDelivered || deref(r.SMTPCode) != 250 || !strings.HasPrefix(deref(r.MXHost), "mx.") ||
				!strings.HasPrefix(deref(r.TLSVersion), "TLS1.") || r.Attempts != 1 {
				t.Errorf("%s: %+v code=%d mx=%s tls=%s", email, r, deref(r.SMTPCode), deref(r.MXHost), deref(r.TLSVersion))
			}
		}
		// One transaction per domain: example.net got both its recipients at once.
		msgs := net1.Messages()
		if len(msgs) != 1 || len(msgs[0].To) != 2 || !msgs[0].TLS || msgs[0].Helo != "relay.test" {
			t.Fatalf("example.net received %+v", msgs)
		}
		if len(org.Messages()) != 1 {
			t.Fatalf("example.org received %d messages", len(org.Messages()))
		}
		if !bytes.Equal(msgs[0].Data, org.Messages()[0].Data) {
			t.Errorf("the two domains received different bytes: the message was signed twice")
		}
		verifications, err := msgauth.VerifyWithOptions(bytes.NewReader(msgs[0].Data), &msgauth.VerifyOptions{LookupTXT: p.lookupTXT})
		if err != nil {
			t.Fatal(err)
		}
		algos := map[string]bool{}
		for _, ver := range verifications {
			if ver.Err != nil {
				t.Errorf("signature %s by %s does not verify: %v", ver.Domain, ver.Identifier, ver.Err)
			}
			algos[ver.Domain] = true
		}
		if len(verifications) != 2 {
			t.Errorf("%d signatures, want 2 (RSA and Ed25519)", len(verifications))
		}
		if !bytes.Contains(msgs[0].Data, []byte("a=ed25519-sha256")) || !bytes.Contains(msgs[0].Data, []byte("a=rsa-sha256")) {
			t.Errorf("not dual-signed:\n%s", msgs[0].Data)
		}
		events := map[string]int{}
		for _, e := range v.Events {
			events[e.Type]++
		}
		if events["accepted"] != 1 || events["delivered"] != 3 {
			t.Errorf("events %v", events)
		}
	})
}

// lookupTXT asks the test DNS server, as a receiving verifier would.
func (p *pipeline) lookupTXT(name string) ([]string, error) {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, p.dns.Addr())
	}}
	return r.LookupTXT(context.Background(), name)
}

func TestDeliveryOutcomes(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		t.Run("greylisted then delivered", func(t *testing.T) {
			p := newPipeline(t)
			s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
			s.OnRcpt("bob@example.net", "451 4.7.1 greylisted, come back later")
			p.start("w", nil)
			v := p.wait(p.send(mail.Draft{From: "alice@example.com", To: []string{"bob@example.net"}, Text: "hi"}), 20*time.Second)
			r := rcpt(t, v, "bob@example.net")
			if v.Status != store.StatusDelivered || r.Attempts != 2 {
				t.Fatalf("status %s attempts %d", v.Status, r.Attempts)
			}
			var types []string
			for _, e := range v.Events {
				types = append(types, e.Type)
			}
			if strings.Join(types, ",") != "accepted,deferred,delivered" {
				t.Errorf("events %v", types)
			}
		})
		t.Run("550 for one, 250 for another", func(t *testing.T) {
			p := newPipeline(t)
			s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
			s.OnRcpt("nobody@example.net", "550 5.1.1 no such user")
			p.start("w", nil)
			v := p.wait(p.send(mail.Draft{From: "alice@example.com", To: []string{"nobody@example.net", "bob@example.net"}, Text: "hi"}), 20*time.Second)
			if v.Status != store.StatusPartiallyDelivered {
				t.Fatalf("status %s", v.Status)
			}
			bad := rcpt(t, v, "nobody@example.net")
			if bad.Status != store.RecipientBounced || deref(bad.SMTPCode) != 550 || deref(bad.EnhancedCode) != "5.1.1" {
				t.Errorf("nobody: %+v", bad)
			}
			if len(s.Messages()) != 1 || len(s.Messages()[0].To) != 1 {
				t.Errorf("server got %+v", s.Messages())
			}
		})
		t.Run("554 at DATA bounces all", func(t *testing.T) {
			p := newPipeline(t)
			s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
			s.OnData("554 5.7.1 rejected as spam")
			p.start("w", nil)
			v := p.wait(p.send(mail.Draft{From: "alice@example.com", To: []string{"a@example.net", "b@example.net"}, Text: "hi"}), 20*time.Second)
			if v.Status != store.StatusBounced {
				t.Fatalf("status %s", v.Status)
			}
		})
		t.Run("null MX bounces at once", func(t *testing.T) {
			p := newPipeline(t)
			p.dns.MX("example.net", 0, ".")
			p.start("w", nil)
			v := p.wait(p.send(mail.Draft{From: "alice@example.com", To: []string{"bob@example.net"}, Text: "hi"}), 20*time.Second)
			r := rcpt(t, v, "bob@example.net")
			if v.Status != store.StatusBounced || r.Attempts != 1 {
				t.Fatalf("status %s, %+v", v.Status, r)
			}
		})
		t.Run("NXDOMAIN bounces at once", func(t *testing.T) {
			p := newPipeline(t)
			p.dns.NXDOMAIN("example.net")
			p.start("w", nil)
			v := p.wait(p.send(mail.Draft{From: "alice@example.com", To: []string{"bob@example.net"}, Text: "hi"}), 20*time.Second)
			if v.Status != store.StatusBounced || rcpt(t, v, "bob@example.net").Attempts != 1 {
				t.Fatalf("status %s", v.Status)
			}
		})
		t.Run("private MX address refused", func(t *testing.T) {
			p := newPipeline(t)
			s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
			p.router.AllowPrivate = false
			p.start("w", nil)
			v := p.wait(p.send(mail.Draft{From: "alice@example.com", To: []string{"bob@example.net"}, Text: "hi"}), 20*time.Second)
			if v.Status != store.StatusBounced {
				t.Fatalf("status %s", v.Status)
			}
			if accepted, _ := s.Connections(); accepted != 0 {
				t.Errorf("the guard let %d connections through to a loopback MX", accepted)
			}
		})
		t.Run("DNS timeout defers, then expires", func(t *testing.T) {
			p := newPipeline(t)
			p.dns.Timeout("example.net")
			p.router.LookupTimeout = 200 * time.Millisecond
			p.opts.MaxQueueAge = 1500 * time.Millisecond
			p.start("w", nil)
			id := p.send(mail.Draft{From: "alice@example.com", To: []string{"bob@example.net"}, Text: "hi"})
			v := p.wait(id, 20*time.Second)
			r := rcpt(t, v, "bob@example.net")
			if v.Status != store.StatusBounced || r.Attempts < 2 || deref(r.EnhancedCode) != "5.4.7" || !strings.Contains(deref(r.Response), "expired") {
				t.Fatalf("status %s, %+v %s %s", v.Status, r, deref(r.EnhancedCode), deref(r.Response))
			}
			// Every failure is classified: the expiry as expired (soft: the
			// address may be fine), each deferral by its cause.
			if deref(r.BounceClass) != "expired" || deref(r.BounceType) != "soft" {
				t.Errorf("expired recipient: type %q class %q", deref(r.BounceType), deref(r.BounceClass))
			}
			var deferred int
			for _, e := range v.Events {
				if e.Type == "deferred" {
					deferred++
					if deref(e.BounceClass) == "" || deref(e.BounceType) == "" {
						t.Errorf("deferred attempt without a class: %+v", e)
					}
				}
			}
			if deferred == 0 {
				t.Errorf("no deferred attempt before the expiry: %+v", v.Events)
			}
		})
	})
}

// TestCrashedWorkerJobReclaimed: a worker that claimed a job and died
// leaves it leased; once the lease lapses another worker delivers it.
func TestCrashedWorkerJobReclaimed(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
		id := p.send(mail.Draft{From: "alice@example.com", To: []string{"bob@example.net"}, Text: "hi"})
		dead := p.newQueue("dead-worker", 300*time.Millisecond)
		got, err := dead.Claim(context.Background(), 10, time.Second)
		if err != nil || len(got) != 1 {
			t.Fatalf("claim: %v %v", got, err)
		}
		p.start("survivor", func(o *WorkerOptions) {
			o.Queue = p.newQueue("survivor", 300*time.Millisecond)
		})
		v := p.wait(id, 20*time.Second)
		if v.Status != store.StatusDelivered || len(s.Messages()) != 1 {
			t.Fatalf("status %s, %d messages", v.Status, len(s.Messages()))
		}
	})
}

// TestRawBodyArrivesIntact: bare LF, bare CR and dot lines in a raw message
// reach the receiver as the same lines (CRLF-normalised, dot-stuffed on
// the wire and unstuffed by the server), with no early end of data.
func TestRawBodyArrivesIntact(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
		p.start("w", nil)
		raw := "From: alice@example.com\nTo: bob@example.net\nSubject: dots\n\nline1\n.\n..two\rbare-cr\r\n.leading\nlast"
		msg, err := mail.ParseRaw([]byte(raw), nil, mail.BuildOptions{Hostname: "relay.test"})
		if err != nil {
			t.Fatal(err)
		}
		v := p.wait(p.submit(msg), 20*time.Second)
		if v.Status != store.StatusDelivered {
			t.Fatalf("status %s", v.Status)
		}
		got := string(s.Messages()[0].Data)
		want := "\r\n\r\nline1\r\n.\r\n..two\r\nbare-cr\r\n.leading\r\nlast\r\n"
		if !strings.HasSuffix(got, want) {
			t.Errorf("body arrived as %q, want it to end %q", got, want)
		}
	})
}

// TestConcurrentDeliveries: many messages, several domains, all delivered
// exactly once each.
func TestConcurrentDeliveries(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		servers := []*testmx.SMTP{
			p.mx("a.example", "127.0.0.2", testmx.SMTPOptions{}),
			p.mx("b.example", "127.0.0.3", testmx.SMTPOptions{}),
		}
		p.start("w1", func(o *WorkerOptions) { o.PerDestination = 2 })
		p.start("w2", func(o *WorkerOptions) { o.PerDestination = 2 })
		const n = 40
		ids := make([]uuid.UUID, n)
		var wg sync.WaitGroup
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ids[i] = p.send(mail.Draft{From: "alice@example.com", To: []string{fmt.Sprintf("u%d@a.example", i), fmt.Sprintf("u%d@b.example", i)}, Text: "hi"})
			}()
		}
		wg.Wait()
		for _, id := range ids {
			if v := p.wait(id, 30*time.Second); v.Status != store.StatusDelivered {
				t.Fatalf("%s: %s", id, v.Status)
			}
		}
		for _, s := range servers {
			if got := len(s.Messages()); got != n {
				t.Errorf("%s received %d messages, want %d", s.Addr(), got, n)
			}
		}
	})
}

// TestJitteredRetriesStrandNobody: retries are jittered, so the recipients
// of one job come due at different times. After each run every recipient
// still pending must have the job queued for its own time, not only the
// earliest one.
func TestJitteredRetriesStrandNobody(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
		s.OnRcpt("a@example.net", "451 4.7.1 greylisted")
		s.OnRcpt("b@example.net", "451 4.7.1 greylisted")
		var mu sync.Mutex
		calls := 0
		p.start("w", func(o *WorkerOptions) {
			// Every other draw adds 3s: far beyond the due slack, as a 10%
			// jitter on a retry of half an hour would be.
			o.Jitter = func(d time.Duration) time.Duration {
				mu.Lock()
				defer mu.Unlock()
				calls++
				if calls%2 == 0 {
					return d + 3*time.Second
				}
				return d
			}
		})
		id := p.send(mail.Draft{From: "alice@example.com", To: []string{"a@example.net", "b@example.net"}, Text: "hi"})
		v := p.wait(id, 15*time.Second)
		if v.Status != store.StatusDelivered {
			t.Fatalf("status %s: %+v", v.Status, v.Recipients)
		}
		for _, r := range v.Recipients {
			if r.Attempts != 2 {
				t.Errorf("%s: %d attempts, want 2", r.Email, r.Attempts)
			}
		}
	})
}

// TestJobPanicParked: a job whose delivery panics is recovered (the
// worker and its other deliveries carry on), retried, and after three
// panics parked rather than retried for ever.
func TestJobPanicParked(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
		router, err := NewRouter(p.router)
		if err != nil {
			t.Fatal(err)
		}
		// Both are recorded before the worker starts: a panic of a job claimed
		// before its rows commit cannot be counted (parked_jobs refers to the
		// message) and is retried uncounted, which would make it four runs.
		p.send(mail.Draft{From: "alice@example.com", To: []string{"x@poison.example"}, Text: "poison"})
		good := p.send(mail.Draft{From: "alice@example.com", To: []string{"bob@example.net"}, Text: "hi"})
		var mu sync.Mutex
		panics := 0
		p.start("w", func(o *WorkerOptions) {
			o.Route = func(ctx context.Context, domain string) ([]Host, error) {
				if domain == "poison.example" {
					mu.Lock()
					panics++
					mu.Unlock()
					panic("poisoned route")
				}
				return router.Route(ctx, domain)
			}
		})
		if v := p.wait(good, 20*time.Second); v.Status != store.StatusDelivered || len(s.Messages()) != 1 {
			t.Fatalf("a panicking job stopped other deliveries: %s", v.Status)
		}
		p.waitDepth("nothing (the poison job parked)", 20*time.Second, func(d queue.Depth) bool { return d == (queue.Depth{}) })
		mu.Lock()
		defer mu.Unlock()
		if panics != 3 {
			t.Errorf("the poison job ran %d times, want 3 before it was parked", panics)
		}
	})
}

// TestRunClosesPoolAfterJobs: Run returns only after the deliveries in
// flight finished, and then no pooled connection is left open.
func TestRunClosesPoolAfterJobs(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{DataDelay: time.Second})
		opts := p.opts
		opts.Queue = p.newQueue("w", time.Minute)
		router, err := NewRouter(p.router)
		if err != nil {
			t.Fatal(err)
		}
		opts.Route = router.Route
		opts.Client = newClient(t, p.port, nil)
		w, err := NewWorker(opts)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); w.Run(ctx) }()
		id := p.send(mail.Draft{From: "alice@example.com", To: []string{"bob@example.net"}, Text: "hi"})
		wait.For(t, "a delivery", func() bool { return len(s.Messages()) > 0 })
		cancel() // mid-transaction: the 250 comes a second later
		<-done
		if v := p.wait(id, time.Second); v.Status != store.StatusDelivered {
			t.Fatalf("status %s after Run returned", v.Status)
		}
		// The pool closes its connections off the caller's path.
		wait.For(t, "every pooled connection closed after Run returned (the pool must close after the jobs end)",
			func() bool { _, open := s.Connections(); return open == 0 })
	})
}
