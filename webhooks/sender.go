package webhooks

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailferry/mailferry/store"
)

// Store is what the sender needs of the ledger.
type Store interface {
	ClaimWebhookDeliveries(ctx context.Context, c store.WebhookClaim) ([]store.WebhookDelivery, error)
	RecordWebhookAttempt(ctx context.Context, r store.WebhookResult) (store.WebhookRecorded, error)
	WebhookBacklog(ctx context.Context) (store.WebhookBacklog, error)
}

var _ Store = (*store.Store)(nil)

// DefaultRetrySchedule is MAILFERRY_WEBHOOK_RETRY_SCHEDULE's default: the
// delays after the 1st, 2nd, … failed attempt.
func DefaultRetrySchedule() []time.Duration {
	return []time.Duration{5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 5 * time.Hour,
		10 * time.Hour, 10 * time.Hour}
}

// Options configures a Sender.
type Options struct {
	Store      Store
	Logger     *slog.Logger
	Registerer prometheus.Registerer // required: the metrics register here

	// RetrySchedule is the delay after each failed attempt
	// (MAILFERRY_WEBHOOK_RETRY_SCHEDULE); once used up, the last delay
	// repeats until the delivery is GiveUpAfter old, and then it fails.
	RetrySchedule []time.Duration
	GiveUpAfter   time.Duration // default 72h: retried for at least 3 days
	// DisableAfter disables an endpoint whose deliveries have failed for
	// this long without a success; default 5 days.
	DisableAfter time.Duration
	// Timeout bounds one request, connect to the last byte read; default 10 s.
	Timeout time.Duration
	// MaxResponseBytes of an answer are read, the rest dropped; default 64 KiB.
	MaxResponseBytes int64
	// Concurrency is the requests in flight in this process (default 64),
	// PerEndpoint those to one endpoint (default 4): a slow endpoint holds
	// at most PerEndpoint slots, never the others'.
	Concurrency int
	PerEndpoint int
	// PollEvery is how often due deliveries are looked for without a
	// wake-up (retries come due this way); default 1 s.
	PollEvery time.Duration
	// Wake, when it yields, makes the sender look at once: the store's
	// OnEvents in the same process sends on it.
	Wake <-chan struct{}
	// Lease is how long a claimed delivery stays this sender's; default
	// three times Timeout. A sender that dies leaves its deliveries to
	// others after it.
	Lease time.Duration
	// BacklogEvery is how often the backlog metrics are refreshed; default 5 s.
	BacklogEvery time.Duration
	// Transport carries the requests; default Transport(TransportOptions{})
	// (the private-destination guard on).
	Transport http.RoundTripper
	Now       func() time.Time
}

// Sender delivers webhooks until its context ends.
type Sender struct {
	opts    Options
	client  *http.Client
	owner   string
	metrics *metrics
}

// New checks opts and registers the metrics.
func New(opts Options) (*Sender, error) {
	if opts.Store == nil || opts.Registerer == nil {
		return nil, errors.New("webhooks: Store and Registerer are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if len(opts.RetrySchedule) == 0 {
		opts.RetrySchedule = DefaultRetrySchedule()
	}
	for _, d := range opts.RetrySchedule {
		if d <= 0 {
			return nil, errors.New("webhooks: RetrySchedule has a delay that is not positive")
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&opts.GiveUpAfter, 72*time.Hour)
	def(&opts.DisableAfter, 5*24*time.Hour)
	def(&opts.Timeout, 10*time.Second)
	def(&opts.PollEvery, time.Second)
	def(&opts.Lease, 3*opts.Timeout)
	def(&opts.BacklogEvery, 5*time.Second)
	if opts.Lease <= opts.Timeout {
		return nil, errors.New("webhooks: Lease must be longer than Timeout")
	}
	if opts.MaxResponseBytes <= 0 {
		opts.MaxResponseBytes = 64 << 10
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 64
	}
	if opts.PerEndpoint <= 0 {
		opts.PerEndpoint = 4
	}
	if opts.Transport == nil {
		opts.Transport = Transport(TransportOptions{})
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("webhooks: %w", err)
	}
	var b [8]byte
	rand.Read(b[:])
	return &Sender{
		opts: opts,
		client: &http.Client{
			Transport: opts.Transport,
			Timeout:   opts.Timeout,
			// A redirect is an answer like any other non-2xx: following it
			// would let an endpoint send us somewhere the URL check never saw.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		owner:   "webhooks-" + hex.EncodeToString(b[:]),
		metrics: m,
	}, nil
}

// Run claims due deliveries and sends them until ctx ends; it then waits
// for the requests in flight, which ctx cancels. A canceled attempt is not
// recorded: its lease lapses and it is sent again, with the same
// webhook-id.
func (s *Sender) Run(ctx context.Context) error {
	done := make(chan uuid.UUID, s.opts.Concurrency)
	inflight := map[uuid.UUID]int{}
	total := 0
	defer func() {
		for ; total > 0; total-- {
			<-done
		}
	}()
	poll := time.NewTicker(s.opts.PollEvery)
	defer poll.Stop()
	backlog := time.NewTicker(s.opts.BacklogEvery)
	defer backlog.Stop()
	s.refreshBacklog(ctx)
	for {
		if free := s.opts.Concurrency - total; free > 0 && ctx.Err() == nil {
			ds, err := s.opts.Store.ClaimWebhookDeliveries(ctx, store.WebhookClaim{
				Owner: s.owner, Lease: s.opts.Lease, Limit: free, PerEndpoint: s.opts.PerEndpoint, InFlight: inflight})
			if err != nil && ctx.Err() == nil {
				s.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "claim webhook deliveries", slog.Any("error", err))
			}
			for _, d := range ds {
				inflight[d.EndpointID]++
				total++
				go func() {
					s.deliver(ctx, d)
					done <- d.EndpointID
				}()
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case id := <-done:
			s.finished(inflight, id)
			total--
			// Take every other finished request before claiming again.
			for more := true; more; {
				select {
				case id := <-done:
					s.finished(inflight, id)
					total--
				default:
					more = false
				}
			}
		case <-s.opts.Wake:
		case <-poll.C:
		case <-backlog.C:
			s.refreshBacklog(ctx)
		}
	}
}

func (s *Sender) finished(inflight map[uuid.UUID]int, id uuid.UUID) {
	if inflight[id]--; inflight[id] <= 0 {
		delete(inflight, id)
	}
}

func (s *Sender) refreshBacklog(ctx context.Context) {
	b, err := s.opts.Store.WebhookBacklog(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "read webhook backlog", slog.Any("error", err))
		}
		return
	}
	s.metrics.pending.Set(float64(b.Pending))
	age := 0.0
	if !b.OldestPending.IsZero() {
		age = max(0, s.opts.Now().Sub(b.OldestPending).Seconds())
	}
	s.metrics.oldest.Set(age)
}

// deliver makes one attempt and records it.
func (s *Sender) deliver(ctx context.Context, d store.WebhookDelivery) {
	body := d.Event.Payload()
	id := d.Event.ID.String()
	r := store.WebhookResult{DeliveryID: d.ID, EndpointID: d.EndpointID, Owner: s.owner, Attempt: d.Attempt,
		StartedAt: s.opts.Now()}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.URL, bytes.NewReader(body))
	if err == nil {
		h := req.Header
		h.Set("Content-Type", "application/json")
		h.Set("User-Agent", "Mailferry-Webhooks/1")
		h.Set(HeaderID, id)
		h.Set(HeaderTimestamp, fmt.Sprint(r.StartedAt.Unix()))
		h.Set(HeaderSignature, Sign(d.Secrets, id, r.StartedAt, body))
		start := time.Now()
		var resp *http.Response
		resp, err = s.client.Do(req)
		if err == nil {
			// Read a bounded part so the connection can be reused; a
			// receiver cannot make us hold more than this.
			_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, s.opts.MaxResponseBytes))
			resp.Body.Close()
			r.StatusCode = resp.StatusCode
			if err != nil && resp.StatusCode/100 == 2 {
				err = nil // the answer counts; a body cut short does not undo it
			}
		}
		r.Latency = time.Since(start)
	}
	if ctx.Err() != nil {
		return // shutting down: the lease lapses and another attempt follows
	}
	s.metrics.duration.Observe(r.Latency.Seconds())
	switch {
	case r.StatusCode/100 == 2:
		r.Outcome = store.WebhookDelivered
	case r.StatusCode == http.StatusGone:
		// The receiver says the endpoint is gone for good: stop at once.
		r.Error = "410 Gone"
		r.DisableReason = "the endpoint answered 410 Gone"
		r.Outcome, r.NextAttemptAt = store.WebhookRetry, r.StartedAt.Add(s.opts.RetrySchedule[0])
	default:
		if err != nil {
			r.Error = scrub(err)
		} else {
			r.Error = fmt.Sprintf("answered %d", r.StatusCode)
		}
		r.Outcome, r.NextAttemptAt = s.retry(d)
		r.DisableAfter = s.opts.DisableAfter
	}
	s.metrics.deliveries.WithLabelValues(r.Outcome).Inc()
	// Record even if the process is asked to stop now: the attempt was made.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	rec, err := s.opts.Store.RecordWebhookAttempt(rctx, r)
	if err != nil {
		s.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "record webhook attempt", slog.Int64("delivery_id", d.ID), slog.Any("error", err))
		return
	}
	if rec.Disabled {
		// The API has no event type for this, so it is a log line and
		// the endpoint's disabled_reason (GET /v1/webhooks/{id}).
		s.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "webhook endpoint disabled",
			slog.String("endpoint_id", d.EndpointID.String()), slog.String("reason", rec.DisabledReason))
	}
}

// retry decides what follows the failed attempt d.Attempt.
func (s *Sender) retry(d store.WebhookDelivery) (outcome string, next time.Time) {
	now := s.opts.Now()
	sched := s.opts.RetrySchedule
	if d.Attempt <= len(sched) {
		return store.WebhookRetry, now.Add(sched[d.Attempt-1])
	}
	if now.Sub(d.CreatedAt) < s.opts.GiveUpAfter {
		return store.WebhookRetry, now.Add(sched[len(sched)-1])
	}
	return store.WebhookFailed, time.Time{}
}

type metrics struct {
	deliveries *prometheus.CounterVec
	duration   prometheus.Histogram
	pending    prometheus.Gauge
	oldest     prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailferry_webhook_deliveries_total",
			Help: "Webhook delivery attempts by result: delivered, retry (will be tried again) or failed (given up).",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mailferry_webhook_delivery_duration_seconds",
			Help:    "Time of one webhook request, connect to the answer read.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mailferry_events_pending",
			Help: "Webhook deliveries waiting to be sent to enabled endpoints.",
		}),
		oldest: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mailferry_webhook_oldest_pending_seconds",
			Help: "Age of the oldest webhook delivery still pending to an enabled endpoint: the lag to alert on.",
		}),
	}
	for _, c := range []prometheus.Collector{m.deliveries, m.duration, m.pending, m.oldest} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, r := range []string{store.WebhookDelivered, store.WebhookRetry, store.WebhookFailed} {
		m.deliveries.WithLabelValues(r)
	}
	return m, nil
}
