package submission_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailferry/mailferry/api"
	"github.com/mailferry/mailferry/budget"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/teststack"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/ratelimit"
	"github.com/mailferry/mailferry/store"
	"github.com/mailferry/mailferry/submission"
)

func TestMain(m *testing.M) { testenv.Main(m) }

const (
	hostname = "relay.test"
	tenant   = "acme"
)

// harness is a submission server on both listeners, over a real intake on
// real Redis and PostgreSQL, and the HTTP API on the same intake.
type harness struct {
	t       *testing.T
	srv     *submission.Server
	store   *store.Store
	queue   *queue.Queue
	db      *pgxpool.Pool
	reg     *prometheus.Registry
	api     *httptest.Server
	clock   *clock
	addr    string // 587: STARTTLS
	addrTLS string // 465: implicit TLS
	tls     *tls.Config
	secret  string // a key of tenant acme for example.com
	keyID   string
	served  chan error // what the two Serve calls returned
}

type harnessOptions struct {
	redisURL        string // "" → the shared test server
	maxMessageBytes int64
	maxRecipients   int
	maxConnections  int
	maxPerIP        int // 0 → 1000: most tests open many connections from 127.0.0.1
	greetingTimeout time.Duration
	tlsHandshake    time.Duration
	authFailures    int
	commandTimeout  time.Duration
	dataTimeout     time.Duration
	budget          *budget.Budget
	hideClient      bool
	requireVerified func(ctx context.Context, tenant, domain string) (string, error)
	// rateLimit, when set, is one per-key budget shared by the API and
	// submission, on the harness clock.
	rateLimit *ratelimit.Limit
	// quota, when set, is the tenants' daily quota shared by the API and
	// submission (in Redis), on the harness clock.
	quota int64
	// logger receives the submission server's log lines.
	logger *slog.Logger
	// auth wraps the store the server checks keys against.
	auth func(submission.Authenticator) submission.Authenticator
}

func newHarness(t *testing.T, opts harnessOptions) *harness {
	t.Helper()
	ctx := context.Background()
	stack := teststack.New(t, teststack.Options{RedisURL: opts.redisURL, Queue: queue.Options{Consumer: "test"}})
	st, q, reg, in := stack.Store, stack.Queue, stack.Registry, stack.Intake
	dbURL := stack.DatabaseURL
	if opts.maxMessageBytes == 0 {
		opts.maxMessageBytes = 1 << 20
	}
	if opts.maxRecipients == 0 {
		opts.maxRecipients = 100
	}
	if opts.commandTimeout == 0 {
		opts.commandTimeout = 30 * time.Second
	}
	if opts.maxPerIP == 0 {
		opts.maxPerIP = 1000
	}
	if opts.authFailures == 0 {
		opts.authFailures = 1000 // only the rate-limit test meets the limit
	}

	ca := testmx.NewCA(t)
	cert := ca.Issue(t, hostname, "127.0.0.1")
	clk := &clock{now: time.Now()}
	var limiter ratelimit.Limiter
	if opts.rateLimit != nil {
		l, err := ratelimit.NewLocal(*opts.rateLimit, clk.Now)
		if err != nil {
			t.Fatal(err)
		}
		limiter = l
	}
	var quota *ratelimit.Quota
	var apiQuota api.Quota
	if opts.quota > 0 {
		q, err := ratelimit.NewQuota(stack.Redis, ratelimit.QuotaOptions{PerDay: opts.quota, Prefix: stack.Prefix, Now: clk.Now})
		if err != nil {
			t.Fatal(err)
		}
		quota, apiQuota = q, q
	}
	var auth submission.Authenticator = st
	if opts.auth != nil {
		auth = opts.auth(st)
	}
	srv, err := submission.New(submission.Options{
		Intake:              in,
		Auth:                auth,
		Logger:              opts.logger,
		Limiter:             limiter,
		Quota:               quota,
		TLSConfig:           &tls.Config{Certificates: []tls.Certificate{cert}},
		Hostname:            hostname,
		MaxMessageBytes:     opts.maxMessageBytes,
		MaxRecipients:       opts.maxRecipients,
		Metrics:             submission.NewMetrics(reg),
		MaxConnections:      opts.maxConnections,
		MaxConnectionsPerIP: opts.maxPerIP,
		GreetingTimeout:     opts.greetingTimeout,
		TLSHandshakeTimeout: opts.tlsHandshake,
		CommandTimeout:      opts.commandTimeout,
		DataTimeout:         opts.dataTimeout,
		AuthFailures:        opts.authFailures,
		AuthBlock:           time.Minute,
		Now:                 clk.Now,
		Budget:              opts.budget,
		HideClient:          opts.hideClient,
		RequireVerified:     opts.requireVerified,
	})
	if err != nil {
		t.Fatalf("submission.New: %v", err)
	}
	h := &harness{t: t, srv: srv, store: st, queue: q, reg: reg, clock: clk,
		tls: &tls.Config{RootCAs: ca.Pool, ServerName: hostname}, served: make(chan error, 2)}
	ln := listen(t)
	lnTLS := listen(t)
	h.addr, h.addrTLS = ln.Addr().String(), lnTLS.Addr().String()
	go func() { h.served <- srv.ServeSubmission(ln) }()
	go func() { h.served <- srv.ServeSubmissions(lnTLS) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})

	handler, err := api.New(api.Options{Auth: st, Reader: st, Intake: in, Registry: prometheus.NewRegistry(),
		Hostname: hostname, MaxMessageBytes: opts.maxMessageBytes, MaxRecipients: opts.maxRecipients, Limiter: limiter, Quota: apiQuota})
	if err != nil {
		t.Fatalf("api.New: %v", err)
	}
	h.api = httptest.NewServer(handler)
	t.Cleanup(h.api.Close)

	key, secret, err := st.CreateAPIKey(ctx, tenant, []string{"example.com"})
	if err != nil {
		t.Fatalf("create key: %v", err)
	}
	h.secret, h.keyID = secret, key.ID
	db, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	h.db = db
	return h
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// clock is the failed-login limiter's time, moved by the test.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// client dials 587 and starts TLS.
func (h *harness) client() *smtp.Client {
	h.t.Helper()
	c, err := smtp.DialStartTLS(h.addr, h.tls)
	if err != nil {
		h.t.Fatalf("dial %s with STARTTLS: %v", h.addr, err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

// login dials 587, starts TLS and authenticates as acme.
func (h *harness) login() *smtp.Client {
	h.t.Helper()
	c := h.client()
	if err := c.Auth(sasl.NewPlainClient("", tenant, h.secret)); err != nil {
		h.t.Fatalf("AUTH PLAIN: %v", err)
	}
	return c
}

var queuedAs = regexp.MustCompile(`^2\.0\.0 queued as ([0-9a-f-]{36})$`)

// send runs one transaction and returns the id from the 250 reply, or the
// first error.
func send(c *smtp.Client, from string, to []string, msg string) (uuid.UUID, error) {
	return sendWith(c, nil, from, to, msg)
}

// sendWith is send with MAIL parameters.
func sendWith(c *smtp.Client, opts *smtp.MailOptions, from string, to []string, msg string) (uuid.UUID, error) {
	if err := c.Mail(from, opts); err != nil {
		return uuid.Nil, err
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt, nil); err != nil {
			return uuid.Nil, err
		}
	}
	w, err := c.Data()
	if err != nil {
		return uuid.Nil, err
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		return uuid.Nil, err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return uuid.Nil, err
	}
	m := queuedAs.FindStringSubmatch(resp.StatusText)
	if m == nil {
		return uuid.Nil, fmt.Errorf("reply to DATA %q does not say queued as <id>", resp.StatusText)
	}
	return uuid.Parse(m[1])
}

// wantSMTPError checks that err is an SMTP reply with code and enhanced code.
func wantSMTPError(t *testing.T, what string, err error, code int, enhanced smtp.EnhancedCode) *smtp.SMTPError {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("%s: got %v, want %d %d.%d.%d", what, err, code, enhanced[0], enhanced[1], enhanced[2])
	}
	if se.Code != code || se.EnhancedCode != enhanced {
		t.Fatalf("%s: got %d %v %q, want %d %d.%d.%d", what, se.Code, se.EnhancedCode, se.Message, code, enhanced[0], enhanced[1], enhanced[2])
	}
	return se
}

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

func (h *harness) counter(name string, labels ...string) float64 {
	h.t.Helper()
	families, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			if m.Counter != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	h.t.Fatalf("no metric %s%v", name, labels)
	return 0
}

// raw is a line-level SMTP conversation, for what go-smtp's client will
// not do: AUTH without TLS, pipelining, odd sequences.
type raw struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dialRaw(t *testing.T, addr string, tlsConfig *tls.Config) *raw {
	t.Helper()
	var conn net.Conn
	var err error
	if tlsConfig != nil {
		conn, err = tls.Dial("tcp", addr, tlsConfig)
	} else {
		conn, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	r := &raw{t: t, conn: conn, r: bufio.NewReader(conn)}
	if got := r.reply(); !strings.HasPrefix(got, "220 ") {
		t.Fatalf("greeting %q", got)
	}
	return r
}

func (r *raw) write(lines ...string) {
	r.t.Helper()
	if _, err := r.conn.Write([]byte(strings.Join(lines, ""))); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// reply reads one (possibly multi-line) reply and returns it with the
// lines joined by "\n".
func (r *raw) reply() string {
	r.t.Helper()
	var lines []string
	for {
		line, err := r.r.ReadString('\n')
		if err != nil {
			r.t.Fatalf("read reply (after %q): %v", lines, err)
		}
		line = strings.TrimRight(line, "\r\n")
		lines = append(lines, line)
		if len(line) < 4 || line[3] != '-' {
			return strings.Join(lines, "\n")
		}
	}
}

// cmd sends one command and returns its reply.
func (r *raw) cmd(line string) string {
	r.t.Helper()
	r.write(line + "\r\n")
	return r.reply()
}

func (r *raw) startTLS(config *tls.Config) {
	r.t.Helper()
	if got := r.cmd("STARTTLS"); !strings.HasPrefix(got, "220 ") {
		r.t.Fatalf("STARTTLS: %q", got)
	}
	tc := tls.Client(r.conn, config)
	if err := tc.Handshake(); err != nil {
		r.t.Fatalf("TLS handshake: %v", err)
	}
	r.conn, r.r = tc, bufio.NewReader(tc)
}

func plainIR(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
}

func message(from, to, subject string) string {
	return "From: " + from + "\r\nTo: " + to + "\r\nSubject: " + subject + "\r\n\r\nHello.\r\n"
}
