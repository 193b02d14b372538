package webhooks_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/netguard"
	"github.com/mailferry/mailferry/store"
	"github.com/mailferry/mailferry/webhooks"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// env is a migrated store on a fresh database with one tenant, "acme".
type env struct {
	st   *store.Store
	db   *pgxpool.Pool // direct SQL, to move the clock of a row
	key  store.APIKey
	wake chan struct{}
}

func newEnv(t *testing.T) *env {
	t.Helper()
	url := testenv.Database(t)
	e := &env{wake: make(chan struct{}, 1)}
	st, err := store.Open(t.Context(), store.Options{URL: url, OnEvents: func() {
		select {
		case e.wake <- struct{}{}:
		default:
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	db, err := pgxpool.New(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	k, _, err := st.CreateAPIKey(t.Context(), "acme", []string{"example.com"})
	if err != nil {
		t.Fatal(err)
	}
	e.st, e.db, e.key = st, db, k
	return e
}

// message accepts a message to n recipients. The events accept writes
// (and their deliveries) are deleted, and the recipients' numbering
// restarted, so that each test sends exactly the events it appends
// (store's tests cover what accept writes).
func (e *env) message(t *testing.T, n int) uuid.UUID {
	t.Helper()
	id := uuid.Must(uuid.NewV7())
	m := store.NewMessage{ID: id, TenantID: "acme", APIKeyID: e.key.ID, Ingress: "api", MessageID: id.String() + "@relay.test",
		MailFrom: "a@example.com", From: "a@example.com", Subject: "hi", Tags: []string{"t"}, Body: []byte("Subject: hi\r\n\r\nhi\r\n"),
		CreatedAt: time.Now()}
	for i := range n {
		m.Recipients = append(m.Recipients, store.NewRecipient{Email: fmt.Sprintf("r%d@dest.example", i)})
	}
	if err := e.st.AcceptBatch(t.Context(), []store.NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`DELETE FROM events WHERE message_id = $1`, `UPDATE recipients SET event_seq = 0 WHERE message_id = $1`} {
		if _, err := e.db.Exec(t.Context(), q, id); err != nil {
			t.Fatal(err)
		}
	}
	return id
}

// events appends, for each of the message's n recipients in turn, the
// types given, and returns the event ids in the feed's order.
func (e *env) events(t *testing.T, msg uuid.UUID, n int, types ...string) []uuid.UUID {
	t.Helper()
	var evs []store.NewEvent
	var ids []uuid.UUID
	for _, typ := range types {
		for i := range n {
			id := uuid.Must(uuid.NewV7())
			ids = append(ids, id)
			evs = append(evs, store.NewEvent{ID: id, Type: typ, MessageID: msg, RcptIdx: i,
				Detail: store.EventDetail{Attempt: 1, SMTPCode: 250, Response: "ok"}})
		}
	}
	if err := e.st.AppendEvents(t.Context(), evs); err != nil {
		t.Fatal(err)
	}
	return ids
}

func (e *env) endpoint(t *testing.T, url string) (store.WebhookEndpoint, string) {
	t.Helper()
	ep, secret, err := e.st.CreateWebhookEndpoint(t.Context(), store.NewWebhookEndpoint{TenantID: "acme", URL: url, Events: store.EventTypes()})
	if err != nil {
		t.Fatal(err)
	}
	return ep, webhooks.EncodeSecret(secret)
}

// run starts a sender; it stops when the test ends.
func (e *env) run(t *testing.T, opts webhooks.Options) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts.Store, opts.Registerer, opts.Wake = e.st, reg, e.wake
	if opts.Transport == nil {
		opts.Transport = webhooks.Transport(webhooks.TransportOptions{AllowPrivate: true})
	}
	if opts.RetrySchedule == nil {
		opts.RetrySchedule = []time.Duration{10 * time.Millisecond}
		opts.GiveUpAfter = time.Hour
	}
	if opts.PollEvery == 0 {
		opts.PollEvery = 10 * time.Millisecond
	}
	s, err := webhooks.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return reg
}

// request is one request a receiver got.
type request struct {
	header http.Header
	body   []byte
	status int
}

// receiver is a real HTTP server on 127.0.0.1 answering with answer().
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	got    []request
	answer func(r *http.Request) int
}

func newReceiver(t *testing.T, answer func(r *http.Request) int) *receiver {
	t.Helper()
	rc := &receiver{answer: answer}
	if rc.answer == nil {
		rc.answer = func(*http.Request) int { return http.StatusNoContent }
	}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		code := rc.answer(r)
		rc.mu.Lock()
		rc.got = append(rc.got, request{header: r.Header.Clone(), body: b, status: code})
		rc.mu.Unlock()
		w.WriteHeader(code)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) requests() []request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.got)
}

// delivered returns the webhook-ids answered 2xx, in order.
func (rc *receiver) delivered() []string {
	var ids []string
	for _, r := range rc.requests() {
		if r.status/100 == 2 {
			ids = append(ids, r.header.Get(webhooks.HeaderID))
		}
	}
	return ids
}

func verifier(t *testing.T, secret string) *standardwebhooks.Webhook {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	return wh
}

func TestSignaturesVerifyWithStandardWebhooks(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rc := newReceiver(t, nil)
	_, secret := e.endpoint(t, rc.srv.URL+"/hook?token=abc")
	msg := e.message(t, 1)
	ids := e.events(t, msg, 1, store.EventMessageDelivered)
	reg := e.run(t, webhooks.Options{})
	wait.For(t, "the webhook", func() bool { return len(rc.delivered()) == 1 })
	r := rc.requests()[0]
	if r.header.Get(webhooks.HeaderID) != ids[0].String() {
		t.Errorf("webhook-id %q, want the event id %s", r.header.Get(webhooks.HeaderID), ids[0])
	}
	if !strings.Contains(string(r.body), `"type":"message.delivered"`) || !strings.Contains(string(r.body), `"sequence":1`) {
		t.Errorf("body %s", r.body)
	}
	other := webhooks.EncodeSecret([]byte("a different secret of 32 bytes!!"))
	altered := append(slices.Clone(r.body[:len(r.body)-1]), ' ', '}')
	for _, c := range []struct {
		name   string
		secret string
		body   []byte
		want   error
	}{
		{"valid", secret, r.body, nil},
		{"altered body", secret, altered, standardwebhooks.ErrNoMatchingSignature},
		{"wrong secret", other, r.body, standardwebhooks.ErrNoMatchingSignature},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := verifier(t, c.secret).Verify(c.body, r.header)
			if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
				t.Errorf("Verify = %v, want %v", err, c.want)
			}
		})
	}
	// The receiver has the request before the sender has counted its answer.
	wait.For(t, "the delivery to be counted", func() bool {
		return testutil.ToFloat64(mustCounter(t, reg, store.WebhookDelivered)) >= 1
	})
	if n := testutil.ToFloat64(mustCounter(t, reg, store.WebhookDelivered)); n != 1 {
		t.Errorf("mailferry_webhook_deliveries_total{result=delivered} = %v, want 1", n)
	}

	t.Run("old timestamp", func(t *testing.T) {
		e2 := newEnv(t)
		rc2 := newReceiver(t, nil)
		_, secret2 := e2.endpoint(t, rc2.srv.URL)
		e2.events(t, e2.message(t, 1), 1, store.EventMessageDelivered)
		e2.run(t, webhooks.Options{Now: func() time.Time { return time.Now().Add(-10 * time.Minute) }})
		wait.For(t, "the webhook", func() bool { return len(rc2.delivered()) == 1 })
		r := rc2.requests()[0]
		if err := verifier(t, secret2).Verify(r.body, r.header); !errors.Is(err, standardwebhooks.ErrMessageTooOld) {
			t.Errorf("Verify = %v, want ErrMessageTooOld", err)
		}
	})
}

func mustCounter(t *testing.T, reg *prometheus.Registry, result string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "mailferry_webhook_deliveries_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == result {
				return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x"}, func() float64 { return m.GetCounter().GetValue() })
			}
		}
	}
	t.Fatalf("no mailferry_webhook_deliveries_total{result=%q}", result)
	return nil
}

func TestReceiverDownThenUp(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var down atomic.Bool
	down.Store(true)
	rc := newReceiver(t, func(*http.Request) int {
		if down.Load() {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	ep, secret := e.endpoint(t, rc.srv.URL)
	msg := e.message(t, 4)
	ids := e.events(t, msg, 4, store.EventMessageAccepted, store.EventMessageDeferred, store.EventMessageDelivered)
	e.run(t, webhooks.Options{PerEndpoint: 8})
	// Each recipient's first event fails a few times; the later ones wait
	// behind it.
	wait.For(t, "failed attempts", func() bool { return len(rc.requests()) >= 12 })
	down.Store(false)
	wait.For(t, "every event", func() bool { return len(rc.delivered()) >= len(ids) })

	got := rc.delivered()
	want := make([]string, len(ids))
	for i, id := range ids {
		want[i] = id.String()
	}
	if s1, s2 := slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want)); !slices.Equal(s1, s2) {
		t.Fatalf("delivered %v, want each event once: %v", got, want)
	}
	wh := verifier(t, secret)
	firstBody := map[string]string{}
	for _, r := range rc.requests() {
		id := r.header.Get(webhooks.HeaderID)
		if !slices.Contains(want, id) {
			t.Errorf("a request with unknown id %q", id)
		}
		if err := wh.Verify(r.body, r.header); err != nil {
			t.Errorf("request %s: %v", id, err)
		}
		if b, ok := firstBody[id]; ok && b != string(r.body) {
			t.Errorf("a repeat of %s carries another body", id)
		}
		firstBody[id] = string(r.body)
	}
	// Per recipient, events arrived in their order: accepted (ids[0:4]),
	// deferred, delivered.
	pos := map[string]int{}
	for i, id := range got {
		pos[id] = i
	}
	for r := range 4 {
		if !(pos[want[r]] < pos[want[4+r]] && pos[want[4+r]] < pos[want[8+r]]) {
			t.Errorf("recipient %d: events out of order in %v", r, got)
		}
	}
	// The last answers may still be on their way into the ledger.
	wait.For(t, "every request's attempt recorded", func() bool {
		atts, _, err := e.st.ListWebhookAttempts(t.Context(), ep.ID, 0, 1000)
		return err == nil && len(atts) >= len(rc.requests())
	})
	atts, _, err := e.st.ListWebhookAttempts(t.Context(), ep.ID, 0, 1000)
	if err != nil || len(atts) != len(rc.requests()) {
		t.Errorf("%d attempts recorded for %d requests (%v)", len(atts), len(rc.requests()), err)
	}
}

func TestSlowEndpointDoesNotDelayOthers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	release := make(chan struct{})
	var inSlow atomic.Int32
	slow := newReceiver(t, func(*http.Request) int {
		inSlow.Add(1)
		<-release // a receiver that takes as long as the test does
		return http.StatusOK
	})
	t.Cleanup(func() { close(release) }) // runs before slow's Close
	fast := newReceiver(t, nil)
	e.endpoint(t, slow.srv.URL)
	e.endpoint(t, fast.srv.URL)
	msg := e.message(t, 20)
	ids := e.events(t, msg, 20, store.EventMessageDelivered)
	e.run(t, webhooks.Options{Concurrency: 6, PerEndpoint: 2, Timeout: time.Minute})
	wait.For(t, "every event at the fast endpoint", func() bool { return len(fast.delivered()) == len(ids) })
	if n := inSlow.Load(); n != 2 {
		t.Errorf("%d requests in flight to the slow endpoint, want its cap of 2", n)
	}
}

func TestGoneDisablesTheEndpoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rc := newReceiver(t, func(*http.Request) int { return http.StatusGone })
	ep, _ := e.endpoint(t, rc.srv.URL)
	e.events(t, e.message(t, 3), 3, store.EventMessageDelivered)
	e.run(t, webhooks.Options{PerEndpoint: 1})
	wait.For(t, "the endpoint disabled", func() bool {
		got, err := e.st.GetWebhookEndpoint(t.Context(), "acme", ep.ID)
		return err == nil && got.DisabledAt != nil
	})
	got, _ := e.st.GetWebhookEndpoint(t.Context(), "acme", ep.ID)
	if !strings.Contains(got.DisabledReason, "410") {
		t.Errorf("disabled_reason %q", got.DisabledReason)
	}
	if n := len(rc.requests()); n != 1 {
		t.Errorf("%d requests, want 1: nothing after the 410", n)
	}
}

// A sender that died holding deliveries (kill -9) leaves them to others
// once its lease lapses.
func TestDeliveriesOfADeadSenderAreSent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rc := newReceiver(t, nil)
	e.endpoint(t, rc.srv.URL)
	ids := e.events(t, e.message(t, 3), 3, store.EventMessageDelivered)
	taken, err := e.st.ClaimWebhookDeliveries(t.Context(), store.WebhookClaim{Owner: "dead", Lease: 200 * time.Millisecond, Limit: 10, PerEndpoint: 10})
	if err != nil || len(taken) != 3 {
		t.Fatalf("claim: %d, %v", len(taken), err)
	}
	e.run(t, webhooks.Options{})
	wait.For(t, "the dead sender's deliveries", func() bool { return len(rc.delivered()) == len(ids) })
}

func TestReplaySendsExactlyWhatWasAsked(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rc := newReceiver(t, nil)
	ep, _ := e.endpoint(t, rc.srv.URL)
	ids := e.events(t, e.message(t, 3), 3, store.EventMessageDelivered)
	e.run(t, webhooks.Options{})
	wait.For(t, "the events", func() bool { return len(rc.delivered()) == 3 })
	if _, _, err := e.st.ReplayWebhook(t.Context(), "acme", ep.ID, store.WebhookReplay{EventIDs: []uuid.UUID{ids[1]}}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the replay", func() bool { return len(rc.delivered()) == 4 })
	wait.For(t, "nothing pending", func() bool {
		b, err := e.st.WebhookBacklog(t.Context())
		return err == nil && b.Pending == 0
	})
	if got := rc.delivered(); len(got) != 4 || got[3] != ids[1].String() {
		t.Errorf("delivered %v, want the 3 events and then %s again", got, ids[1])
	}
}

func TestSecretRotation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rc := newReceiver(t, nil)
	ep, oldSecret := e.endpoint(t, rc.srv.URL)
	msg := e.message(t, 3)
	e.run(t, webhooks.Options{})
	send := func(n int, rcpt int) request {
		t.Helper()
		if err := e.st.AppendEvents(t.Context(), []store.NewEvent{{Type: store.EventMessageDelivered, MessageID: msg, RcptIdx: rcpt}}); err != nil {
			t.Fatal(err)
		}
		wait.For(t, "the webhook", func() bool { return len(rc.delivered()) == n })
		return rc.requests()[n-1]
	}
	verifies := func(r request, secret string) bool { return verifier(t, secret).Verify(r.body, r.header) == nil }

	r := send(1, 0)
	if !verifies(r, oldSecret) {
		t.Fatal("before the rotation the secret does not verify")
	}
	_, raw, err := e.st.RotateWebhookSecret(t.Context(), "acme", ep.ID, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	newSecret := webhooks.EncodeSecret(raw)
	r = send(2, 1)
	if !verifies(r, oldSecret) || !verifies(r, newSecret) {
		t.Errorf("during the overlap: old %v, new %v; want both to verify (%s)", verifies(r, oldSecret), verifies(r, newSecret), r.header.Get(webhooks.HeaderSignature))
	}
	if _, err := e.db.Exec(t.Context(), `UPDATE webhook_endpoints SET previous_expires_at = now() - interval '1 second' WHERE id = $1`, ep.ID); err != nil {
		t.Fatal(err)
	}
	r = send(3, 2)
	if verifies(r, oldSecret) || !verifies(r, newSecret) {
		t.Errorf("after the overlap: old %v, new %v; want only the new one", verifies(r, oldSecret), verifies(r, newSecret))
	}
}

// The guard refuses private destinations under the strict setting, on
// the address the name resolves to at send time, before any connect.
func TestGuardRefusesPrivateDestinations(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dns := testmx.StartDNS(t)
	var accepted atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	// Names are checked on the addresses they resolve to when the request
	// is made (no check at creation can be trusted after a rebinding): one
	// resolving to loopback, where a listener counts connections, and one
	// into 10/8, to which no packet may go (the refusal comes before any
	// connect, so the test sends none).
	dns.A("rebind.test", "127.0.0.1")
	dns.A("ten.test", "10.0.0.1")
	strict := webhooks.Transport(webhooks.TransportOptions{DNSServer: dns.Addr()})

	for _, host := range []string{"rebind.test", "ten.test", "127.0.0.1", "[::1]"} {
		t.Run(host, func(t *testing.T) {
			c, err := strict.DialContext(t.Context(), "tcp", net.JoinHostPort(strings.Trim(host, "[]"), fmt.Sprint(port)))
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			if !errors.Is(err, netguard.ErrPrivateAddress) {
				t.Errorf("dial error %v does not wrap ErrPrivateAddress", err)
			}
		})
	}

	ep, _ := e.endpoint(t, fmt.Sprintf("https://rebind.test:%d/hook", port))
	ep10, _ := e.endpoint(t, fmt.Sprintf("https://ten.test:%d/hook", port))
	e.events(t, e.message(t, 1), 1, store.EventMessageDelivered)
	e.run(t, webhooks.Options{Transport: strict})
	for _, id := range []uuid.UUID{ep.ID, ep10.ID} {
		wait.For(t, "a refused attempt", func() bool {
			atts, _, err := e.st.ListWebhookAttempts(t.Context(), id, 0, 10)
			return err == nil && len(atts) > 0
		})
		atts, _, _ := e.st.ListWebhookAttempts(t.Context(), id, 0, 10)
		if a := atts[0]; a.StatusCode != nil || a.Error == nil || !strings.Contains(*a.Error, "not public") {
			t.Errorf("attempt %+v, want a refusal naming the private address", a)
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("%d connections reached the private listener", n)
	}
}

func TestCheckURL(t *testing.T) {
	tests := []struct {
		url          string
		allowPrivate bool
		ok           bool
	}{
		{"https://hooks.example.com/mailferry", false, true},
		{"https://hooks.example.com:8443/x?token=1", false, true},
		{"http://hooks.example.com/", false, false},
		{"http://127.0.0.1:8080/", true, true},
		{"https://127.0.0.1/", false, false},
		{"https://10.0.0.1/", false, false},
		{"https://[::1]/", false, false},
		{"https://user:pw@hooks.example.com/", false, false},
		{"ftp://hooks.example.com/", false, false},
		{"/relative", false, false},
		{"https:///nohost", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			_, err := webhooks.CheckURL(tt.url, tt.allowPrivate)
			if (err == nil) != tt.ok {
				t.Errorf("CheckURL(%q, %v) = %v, want ok %v", tt.url, tt.allowPrivate, err, tt.ok)
			}
		})
	}
}

func TestSignMatchesTheLibraryForEachSecret(t *testing.T) {
	keys := [][]byte{[]byte("first secret, 32 bytes long ...."), []byte("second secret, 32 bytes long ...")}
	ts := time.Unix(1700000000, 0)
	sig := webhooks.Sign(keys, "evt", ts, []byte(`{"a":1}`))
	parts := strings.Split(sig, " ")
	if len(parts) != 2 {
		t.Fatalf("signature %q, want two space-separated", sig)
	}
	for i, k := range keys {
		wh, _ := standardwebhooks.NewWebhookRaw(k)
		want, _ := wh.Sign("evt", ts, []byte(`{"a":1}`))
		if parts[i] != want {
			t.Errorf("signature %d = %q, the library says %q", i, parts[i], want)
		}
	}
	if b, err := webhooks.DecodeSecret(webhooks.EncodeSecret(keys[0])); err != nil || string(b) != string(keys[0]) {
		t.Errorf("secret round trip: %q, %v", b, err)
	}
}
