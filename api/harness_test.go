package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/api"
	"github.com/mailferry/mailferry/budget"
	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/domains"
	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/teststack"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/ratelimit"
	"github.com/mailferry/mailferry/store"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// harness is a running API on real Redis and PostgreSQL.
type harness struct {
	t      *testing.T
	srv    *httptest.Server
	store  *store.Store
	queue  *queue.Queue
	rdb    redis.UniversalClient
	dbURL  string
	db     *pgxpool.Pool // direct SQL, to check what the ledger holds
	spec   *spec
	key    string // secret of a key for tenant "acme", domain example.com
	keyID  string
	tenant string
	opts   api.Options // to start another API process on the same ledger and queue
}

type harnessOptions struct {
	redisURL        string // "" → the shared test server
	maxMessageBytes int64
	maxRecipients   int
	draining        func() bool
	rateLimit       float64
	rateBurst       int
	limiter         ratelimit.Limiter
	quota           api.Quota
	now             func() time.Time
	budget          *budget.Budget
	ledger          func(*store.Store) intake.Ledger // wraps the store under intake
	domains         func(*store.Store) api.Domains   // serves /v1/domains; nil: no such routes
	requireVerified bool                             // MAILFERRY_REQUIRE_VERIFIED_DOMAIN
	maxBatch        int                              // 0: api.DefaultMaxBatch
}

func newHarness(t *testing.T, opts harnessOptions) *harness {
	t.Helper()
	ctx := context.Background()
	ts := teststack.New(t, teststack.Options{
		RedisURL: opts.redisURL,
		Queue:    queue.Options{Consumer: "test"},
		Ledger:   opts.ledger,
	})
	st, q, in, reg, dbURL := ts.Store, ts.Queue, ts.Intake, ts.Registry, ts.DatabaseURL
	if opts.maxMessageBytes == 0 {
		opts.maxMessageBytes = 1 << 20
	}
	if opts.maxRecipients == 0 {
		opts.maxRecipients = 1000
	}
	if opts.budget == nil {
		// As in production, where MAILFERRY_MAX_BYTES_IN_FLIGHT is 128 MiB.
		var err error
		if opts.budget, err = budget.New(128 << 20); err != nil {
			t.Fatal(err)
		}
	}
	// Keys are authenticated as in production: through a cache that
	// listens for revocations.
	keys, err := store.NewKeyCache(st, store.KeyCacheOptions{})
	if err != nil {
		t.Fatal(err)
	}
	listenCtx, stopListening := context.WithCancel(context.Background())
	listening := make(chan error, 1)
	go func() { listening <- keys.Run(listenCtx) }()
	t.Cleanup(func() {
		stopListening()
		if err := <-listening; err != nil {
			t.Errorf("key cache: %v", err)
		}
	})
	for start := time.Now(); !keys.Listening(); time.Sleep(5 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatal("the key cache is not listening after 10 s")
		}
	}
	var doms api.Domains
	if opts.domains != nil {
		doms = opts.domains(st)
	} else {
		// Every route is mounted, as in production; a test that reaches a
		// domain handler brings its own DNS server (domainHarness).
		sealer, err := dkim.NewSealer(nil)
		if err != nil {
			t.Fatal(err)
		}
		svc, err := domains.New(domains.Options{Ledger: st, Sealer: sealer, DNSServer: "127.0.0.1:1"})
		if err != nil {
			t.Fatal(err)
		}
		doms = svc
	}
	apiOpts := api.Options{
		Domains: doms, RequireVerifiedDomain: opts.requireVerified,
		Auth: keys, Reader: st, Intake: in, Registry: reg, Suppressions: st,
		Ready:           []api.Check{{Name: "postgres", Ping: st.Ping}, {Name: "redis", Ping: q.Ping}},
		Hostname:        "relay.test",
		MaxMessageBytes: opts.maxMessageBytes,
		MaxRecipients:   opts.maxRecipients,
		Draining:        opts.draining,
		RateLimit:       opts.rateLimit,
		RateBurst:       opts.rateBurst,
		Limiter:         opts.limiter,
		Quota:           opts.quota,
		Now:             opts.now,
		Budget:          opts.budget,
		Webhooks:        st,
		Keys:            st,
		Cancel:          st,
		MaxBatch:        opts.maxBatch,
	}
	h, err := api.New(apiOpts)
	if err != nil {
		t.Fatalf("api.New: %v", err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	key, secret, err := st.CreateAPIKey(ctx, "acme", []string{"example.com"})
	if err != nil {
		t.Fatalf("create key: %v", err)
	}
	db, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return &harness{t: t, srv: srv, store: st, queue: q, rdb: ts.Redis, dbURL: dbURL, db: db, spec: loadSpec(t), key: secret, keyID: key.ID, tenant: "acme", opts: apiOpts}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// problemDoc is what a refusal carries.
type problemDoc struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	Errors []struct {
		Field  string `json:"field"`
		Detail string `json:"detail"`
	} `json:"errors"`
}

func (r response) problem(t *testing.T) problemDoc {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q, want application/problem+json; body %s", ct, r.body)
	}
	var p problemDoc
	r.json(t, &p)
	if p.Status != r.status {
		t.Errorf("problem status %d != HTTP status %d", p.Status, r.status)
	}
	return p
}

func (p problemDoc) fields() []string {
	var out []string
	for _, e := range p.Errors {
		out = append(out, e.Field)
	}
	return out
}

// do sends a request and checks the response against openapi.yaml.
func (h *harness) do(method, path, key string, body io.Reader, header map[string]string) response {
	h.t.Helper()
	req, err := http.NewRequest(method, h.srv.URL+path, body)
	if err != nil {
		h.t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := h.srv.Client().Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	b := readBody(h.t, resp)
	h.spec.validate(h.t, method, path, resp, b)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func (h *harness) post(body any, header map[string]string) response {
	h.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			h.t.Fatal(err)
		}
		r = bytes.NewReader(j)
	}
	return h.do(http.MethodPost, "/v1/messages", h.key, r, header)
}

type sendAnswer struct {
	ID         string `json:"id"`
	MessageID  string `json:"message_id"`
	Recipients []struct {
		Email  string `json:"email"`
		Status string `json:"status"`
	} `json:"recipients"`
	Warnings []string `json:"warnings"`
}

type messageAnswer struct {
	ID         string `json:"id"`
	MessageID  string `json:"message_id"`
	Status     string `json:"status"`
	Recipients []struct {
		Email         string  `json:"email"`
		Status        string  `json:"status"`
		Attempts      int     `json:"attempts"`
		NextAttemptAt *string `json:"next_attempt_at"`
	} `json:"recipients"`
	Events []struct {
		Type string `json:"type"`
	} `json:"events"`
}

func (h *harness) get(id, key string) response {
	h.t.Helper()
	return h.do(http.MethodGet, "/v1/messages/"+id, key, nil, nil)
}

// messageCount counts messages in the ledger, to prove a refusal stored nothing.
func (h *harness) messageCount() int {
	h.t.Helper()
	var n int
	if err := h.db.QueryRow(context.Background(), "SELECT count(*) FROM messages").Scan(&n); err != nil {
		h.t.Fatalf("count messages: %v", err)
	}
	return n
}

func (h *harness) depth() queue.Depth {
	h.t.Helper()
	d, err := h.queue.Depth(context.Background())
	if err != nil {
		h.t.Fatalf("queue depth: %v", err)
	}
	return d
}

func mustUUID(t *testing.T, s string) uuid.UUID {
	t.Helper()
	id, err := uuid.Parse(s)
	if err != nil {
		t.Fatalf("id %q is not a UUID: %v", s, err)
	}
	return id
}
