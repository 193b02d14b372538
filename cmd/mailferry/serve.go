package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/api"
	"github.com/mailferry/mailferry/budget"
	"github.com/mailferry/mailferry/config"
	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/inbound"
	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/internal/redisconn"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/ratelimit"
	"github.com/mailferry/mailferry/scheduler"
	"github.com/mailferry/mailferry/store"
	"github.com/mailferry/mailferry/webhooks"
)

var allRoles = []string{"api", "worker", "scheduler", "webhooks", "inbound"}

// defaultRoles run without --roles; inbound joins them when a bounce
// domain is configured (defaultRolesFor), so that a machine whose port 25
// is taken, or that has no use for it, runs serve as before.
var defaultRoles = []string{"api", "worker", "scheduler", "webhooks"}

func runServe(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "serve", "serve [--roles api,worker,scheduler,webhooks,inbound]\n\nRuns the HTTP API, the delivery workers, the scheduler, the webhook sender and, with MAILFERRY_BOUNCE_DOMAIN set, the inbound listener for DSNs and complaints (by default all of them) until SIGINT or SIGTERM.")
	rolesFlag := fs.String("roles", "", "comma-separated roles to run: "+strings.Join(allRoles, ", ")+
		" (default "+strings.Join(defaultRoles, ",")+", and inbound when MAILFERRY_BOUNCE_DOMAIN is set)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rolesSet := false
	fs.Visit(func(f *flag.Flag) { rolesSet = rolesSet || f.Name == "roles" })
	var roles map[string]bool
	var err error
	if rolesSet {
		if roles, err = parseRoles(*rolesFlag); err != nil {
			return err
		}
	}
	cfg, err := env.config()
	if err != nil {
		return err
	}
	if !rolesSet {
		roles, _ = parseRoles(strings.Join(defaultRolesFor(cfg), ","))
		*rolesFlag = strings.Join(defaultRolesFor(cfg), ",")
	}
	log := env.logger(cfg)
	fileLimit, err := raiseFileLimit(log)
	if err != nil {
		log.Warn("open-file limit unknown", "error", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// The store wakes this process's webhook sender when it commits
	// events with deliveries; other processes' senders find them by polling.
	wakeWebhooks := make(chan struct{}, 1)
	st, err := openLedger(ctx, cfg, reg, log, func() {
		select {
		case wakeWebhooks <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return err
	}
	defer st.Close()
	if cfg.AutoMigrate {
		applied, err := st.Migrate(ctx)
		if err != nil {
			return fmt.Errorf("migrate (set MAILFERRY_AUTO_MIGRATE=false to skip): %w", err)
		}
		for _, name := range applied {
			log.Info("applied migration", "name", name)
		}
	}

	redis.SetLogger(redisLogger{log})
	rdb, err := redisconn.Open(cfg.RedisMode, cfg.RedisURL.String(), redisconn.Options{})
	if err != nil {
		return fmt.Errorf("MAILFERRY_REDIS_URL: %w", err)
	}
	defer rdb.Close()
	q, err := queue.New(rdb, queue.Options{Shards: cfg.QueueShards, Consumer: consumerName(cfg), VisibilityTimeout: cfg.Leases.Visibility})
	if err != nil {
		return fmt.Errorf("queue: %w", err)
	}

	checks := []api.Check{
		{Name: "postgres", Ping: st.Ping},
		{Name: "redis", Ping: q.Ping},
	}
	reg.MustRegister(newDepthCollector(q, log), newDependencyCollector(checks))

	// Deferred in this order so that on every return, early errors
	// included, the goroutines are told to stop, then waited for, and only
	// then Redis and PostgreSQL (deferred above) are closed.
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Room for every goroutine below to send its end without a reader
	// (there are 11 at most): wg.Wait must never wait on a blocked send.
	errc := make(chan error, 16)

	doms, err := newDomains(cfg, st, log)
	if err != nil {
		return err
	}
	if roles["api"] && cfg.DKIMZoneAddr != "" {
		if err := startDKIMZone(ctx, cfg.DKIMZoneAddr, doms, log.With("component", "dkimzone"), &wg, errc); err != nil {
			return err
		}
	}
	if roles["scheduler"] {
		sch, err := scheduler.New(scheduler.Options{Queue: q, Ledger: st, Logger: log.With("role", "scheduler"),
			AttemptRetention: cfg.AttemptRetention, EventRetention: cfg.EventRetention, Domains: doms})
		if err != nil {
			return err
		}
		rec, err := newReconciler(cfg, st, q, log.With("role", "scheduler"))
		if err != nil {
			return err
		}
		wg.Add(2)
		go func() { defer wg.Done(); errc <- sch.Run(ctx) }()
		go func() { defer wg.Done(); errc <- rec.Run(ctx) }()
	}

	bounces, err := newBounceSetup(ctx, cfg)
	if err != nil {
		return err
	}
	// mailferry_bounces_total is one collector for both kinds: relay
	// counts sync bounces into it, the inbound processor async ones.
	inboundMetrics := inbound.NewMetrics(reg)
	if roles["worker"] {
		// The shaping file (MAILFERRY_SHAPING_FILE) over the built-in
		// provider entries, shared by the fleet through Redis.
		sh, err := newShaper(cfg, rdb, reg, log.With("component", "shaping"))
		if err != nil {
			return err
		}
		w, tlsp, err := newWorker(cfg, st, q, reg, log.With("role", "worker"), workerBounces{bounceSetup: bounces,
			count: func(class string) { inboundMetrics.Bounced(class, inbound.KindSync) }}, sh)
		if err != nil {
			return err
		}
		wg.Add(2)
		go func() { defer wg.Done(); errc <- w.Run(ctx) }()
		go func() { defer wg.Done(); errc <- tlsp.RunCounts(ctx, 10*time.Second) }()
	}

	if roles["webhooks"] {
		sender, err := webhooks.New(webhooks.Options{
			Store: st, Logger: log.With("role", "webhooks"), Registerer: reg,
			RetrySchedule: cfg.WebhookRetrySchedule, Wake: wakeWebhooks,
			Transport: webhooks.Transport(webhooks.TransportOptions{AllowPrivate: cfg.AllowPrivateDestinations, DNSServer: cfg.DNSServer}),
		})
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() { defer wg.Done(); errc <- sender.Run(ctx) }()
	}

	in, err := intake.New(intake.Options{Ledger: st, Queue: q, Logger: log, Metrics: intake.NewMetrics(reg)})
	if err != nil {
		return err
	}
	if roles["scheduler"] && cfg.TLSRPTFrom != "" {
		if err := startTLSRPT(ctx, cfg, st, in, log.With("role", "scheduler"), &wg, errc); err != nil {
			return err
		}
	}
	if roles["scheduler"] && cfg.MTASTS && cfg.Smarthost == nil {
		if err := startPolicyRefresh(ctx, cfg, st, log.With("role", "scheduler"), &wg, errc); err != nil {
			return err
		}
	}
	// One cap on message bytes in flight, shared by the API and submission.
	bodies, err := budget.New(cfg.MaxBytesInFlight)
	if err != nil {
		return err
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "mailferry_body_bytes_in_flight",
		Help: "Message bytes the API and SMTP submission hold now, against MAILFERRY_MAX_BYTES_IN_FLIGHT.",
	}, func() float64 { return float64(bodies.InUse()) }))
	// One per-key budget (MAILFERRY_RATE_LIMIT), shared by the API and
	// submission and by every process of the fleet: a GCRA in Redis.
	// Likewise the tenants' daily quota (MAILFERRY_TENANT_DAILY_QUOTA).
	var limiter ratelimit.Limiter
	if cfg.RateLimit > 0 {
		l, err := ratelimit.NewRedis(rdb, ratelimit.RedisOptions{Limit: ratelimit.Limit{Rate: float64(cfg.RateLimit)}}) // bursts of twice the rate
		if err != nil {
			return fmt.Errorf("MAILFERRY_RATE_LIMIT: %w", err)
		}
		limiter = l
	}
	var quota *ratelimit.Quota
	if cfg.TenantDailyQuota > 0 {
		if quota, err = ratelimit.NewQuota(rdb, ratelimit.QuotaOptions{PerDay: int64(cfg.TenantDailyQuota)}); err != nil {
			return fmt.Errorf("MAILFERRY_TENANT_DAILY_QUOTA: %w", err)
		}
	}
	stopInbound := func(context.Context) error { return nil }
	if roles["inbound"] {
		stopInbound, err = startInbound(ctx, cfg, inboundDeps{store: st, bounces: bounces, metrics: inboundMetrics, bodies: bodies,
			log: log.With("role", "inbound")}, &wg, errc)
		if err != nil {
			return err
		}
	}
	// The API and submission authenticate through a cache of verified keys that listens
	// for revocations; until its listener connects it asks PostgreSQL.
	keys, err := store.NewKeyCache(st, store.KeyCacheOptions{Logger: log.With("component", "keycache")})
	if err != nil {
		return err
	}
	stopSubmission := func(context.Context) error { return nil }
	if roles["api"] {
		// Through the cache, as the API: it also records each key's last use.
		deps := submissionDeps{intake: in, auth: keys, bodies: bodies, limiter: limiter, quota: quota, reg: reg, log: log.With("role", "submission")}
		if cfg.RequireVerifiedDomain {
			deps.verified = verifiedForSubmission(doms)
		}
		stopSubmission, err = startSubmission(ctx, cfg, deps)
		if err != nil {
			return err
		}
	}
	if roles["api"] {
		wg.Add(1)
		go func() { defer wg.Done(); errc <- keys.Run(ctx) }()
	}
	var draining atomic.Bool
	var apiQuota api.Quota // not a nil *ratelimit.Quota in an interface
	if quota != nil {
		apiQuota = quota
	}
	handler, err := api.New(api.Options{
		Quota:    apiQuota,
		Draining: draining.Load,
		Auth:     keys, Reader: st, Intake: in, Suppressions: st, Registry: reg, Logger: log,
		Ready:           checks,
		Hostname:        cfg.Hostname,
		MaxMessageBytes: cfg.MaxMessageBytes,
		MaxRecipients:   cfg.MaxRecipients,
		Limiter:         limiter,
		Warn:            newDKIMWarner(st, log).warn,
		Budget:          bodies,
		Webhooks:        st,
		Keys:            st,
		Cancel:          st,
		MaxBatch:        cfg.MaxBatch,
		Domains:         doms,

		RequireVerifiedDomain:    cfg.RequireVerifiedDomain,
		AllowPrivateDestinations: cfg.AllowPrivateDestinations,
	})
	if err != nil {
		return err
	}
	if !roles["api"] {
		// Workers still answer probes and scrapes, never /v1.
		handler = probesOnly(handler)
	}
	srv := newHTTPServer(handler, httpOptions{
		ReadHeaderTimeout: 10 * time.Second,
		// Longer than the usual load balancer's idle timeout (60 s), so
		// the balancer, not us, closes a kept-alive connection first.
		IdleTimeout: 2 * time.Minute,
		Logger:      log,
	})
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on MAILFERRY_HTTP_ADDR %s: %w", cfg.HTTPAddr, err)
	}
	ln = limitListener(ln, httpConnectionCap(cfg.HTTPMaxConnections, fileLimit, log))
	log.Info("mailferry started", "version", version, "http", ln.Addr().String(), "roles", *rolesFlag, "hostname", cfg.Hostname)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	}()

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down: draining")
	case runErr = <-errc:
		log.Error("stopping", "error", runErr)
	}
	// Readiness turns false first, so a load balancer stops sending while
	// the listener still answers; then HTTP stops accepting and finishes
	// what it has; then workers stop claiming, finish their SMTP
	// transactions (up to their grace) and requeue what is left.
	draining.Store(true)
	shutdownCtx, stop := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer stop()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		log.Warn("http shutdown", "error", err)
	}
	if err := stopSubmission(shutdownCtx); err != nil {
		log.Warn("smtp submission shutdown", "error", err)
	}
	if err := stopInbound(shutdownCtx); err != nil {
		log.Warn("inbound listener shutdown", "error", err)
	}
	cancel()
	wg.Wait()
	log.Info("stopped")
	return runErr
}

// defaultRolesFor is what serve runs without --roles: the inbound role
// too when there is a bounce domain to receive reports for and a listener
// address.
func defaultRolesFor(cfg config.Config) []string {
	roles := slices.Clone(defaultRoles)
	if cfg.BounceDomain != "" && cfg.InboundAddr != "" {
		roles = append(roles, "inbound")
	}
	return roles
}

func parseRoles(s string) (map[string]bool, error) {
	roles := map[string]bool{}
	for _, r := range strings.Split(s, ",") {
		r = strings.TrimSpace(r)
		if r == "" {
			continue
		}
		if !slices.Contains(allRoles, r) {
			return nil, fmt.Errorf("--roles: unknown role %q (use %s)", r, strings.Join(allRoles, ", "))
		}
		roles[r] = true
	}
	if len(roles) == 0 {
		return nil, errors.New("--roles: name at least one role")
	}
	return roles, nil
}

// openLedger waits a little for PostgreSQL: in a compose stack or after a
// reboot the database may come up seconds after Mailferry. The store's
// metrics go to reg once Open succeeds (Open pings), so a retry never
// registers them twice. onEvents wakes this process's webhook sender.
func openLedger(ctx context.Context, cfg config.Config, reg prometheus.Registerer, log *slog.Logger, onEvents func()) (*store.Store, error) {
	// Webhook signing secrets are sealed like DKIM keys.
	sealer, err := dkim.NewSealer(cfg.SecretKey)
	if err != nil {
		return nil, fmt.Errorf("MAILFERRY_SECRET_KEY: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := store.Open(ctx, store.Options{URL: cfg.DatabaseURL.String(), Pooler: cfg.DatabasePooler,
			DirectURL: urlString(cfg.DatabaseDirectURL), SoftBounceLimit: cfg.SoftBounceLimit, Registerer: reg, OnEvents: onEvents, Secrets: sealer})
		if err == nil {
			return st, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("connect to MAILFERRY_DATABASE_URL %s: %w", cfg.DatabaseURL.Redacted(), err)
		}
		log.Warn("waiting for PostgreSQL", "url", cfg.DatabaseURL.Redacted(), "error", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// consumerName must differ between processes: containers share
// MAILFERRY_HOSTNAME and often pid 1, and two workers under one name
// would renew and reclaim each other's jobs.
func consumerName(cfg config.Config) string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = cfg.Hostname
	}
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), rand.Text()[:8])
}

func probesOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/") {
			http.NotFound(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// depthCollector reads the queue depth from Redis at scrape time.
type depthCollector struct {
	q    *queue.Queue
	log  *slog.Logger
	desc *prometheus.Desc
}

func newDepthCollector(q *queue.Queue, log *slog.Logger) *depthCollector {
	return &depthCollector{q: q, log: log, desc: prometheus.NewDesc("mailferry_queue_depth",
		"Jobs in the Redis queue by state.", []string{"state"}, nil)}
}

func (c *depthCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *depthCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	d, err := c.q.Depth(ctx)
	if err != nil {
		// Leave the series out rather than fail the scrape: the other
		// metrics, mailferry_dependency_up among them, must still arrive.
		c.log.Warn("queue depth", "error", err)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(d.Ready), "ready")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(d.Scheduled), "scheduled")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(d.Inflight), "inflight")
}

// redisLogger sends go-redis's own messages (reconnects, pool errors) to
// the structured log instead of bare lines on stderr.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, fmt.Sprintf(format, v...), "component", "redis")
}

// dependencyCollector reports whether Redis and PostgreSQL answer, at
// scrape time, so alerts need no probe of their own.
type dependencyCollector struct {
	checks []api.Check
	desc   *prometheus.Desc
}

func newDependencyCollector(checks []api.Check) *dependencyCollector {
	return &dependencyCollector{checks: checks, desc: prometheus.NewDesc("mailferry_dependency_up",
		"1 if the dependency answered a ping at scrape time, else 0.", []string{"dependency"}, nil)}
}

func (c *dependencyCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *dependencyCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, chk := range c.checks {
		up := 1.0
		if err := chk.Ping(ctx); err != nil {
			up = 0
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, up, chk.Name)
	}
}

// urlString is u as a string, "" for nil.
func urlString(u *url.URL) string {
	if u == nil {
		return ""
	}
	return u.String()
}
