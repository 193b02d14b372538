package relay

import (
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailferry/mailferry/store"
)

// Metrics are the delivery side's Prometheus collectors.
type Metrics struct {
	deliveries *prometheus.CounterVec
	duration   prometheus.Histogram
	tls        *prometheus.CounterVec
	replies    *prometheus.CounterVec
	roundTrips prometheus.Counter
	panics     prometheus.Counter
	parks      prometheus.Counter
	unrecords  prometheus.Counter
	dests      *destCollector
	ledger     *ledgerCollector
}

// NewMetrics registers the delivery metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailferry_deliveries_total",
			Help: "Delivery outcomes per recipient and attempt.",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mailferry_delivery_duration_seconds",
			Help:    "Time per SMTP transaction, connection to QUIT, over every host tried.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}),
		tls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailferry_tls_connections_total",
			Help: "SMTP transactions by TLS version (\"none\" for plaintext).",
		}, []string{"version"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailferry_smtp_replies_total",
			Help: "Per-recipient SMTP outcomes by reply class (2xx, 4xx, 5xx, or none for network and DNS failures).",
		}, []string{"class"}),
		roundTrips: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailferry_smtp_round_trips_total",
			Help: "SMTP replies waited for over the network, on every host tried; with PIPELINING, MAIL, RCPT and DATA count once.",
		}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailferry_job_panics_total",
			Help: "Jobs whose delivery panicked (recovered; the job retried or parked).",
		}),
		parks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailferry_jobs_parked_total",
			Help: "Jobs parked (taken out of delivery) after repeated panics or outcomes the ledger refused.",
		}),
		unrecords: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailferry_outcomes_unrecorded_total",
			Help: "Jobs parked because the ledger refused their delivery outcomes: recipients may have been delivered though the ledger shows them pending. Alert on any increase.",
		}),
	}
	m.dests = &destCollector{
		inflight: prometheus.NewDesc("mailferry_destination_inflight",
			"SMTP transactions in flight per destination (next hop), for the busiest destinations and \"other\".",
			[]string{"destination"}, nil),
		queued: prometheus.NewDesc("mailferry_destination_queued",
			"Jobs claimed and routed that wait for a transaction to their destination, for the same destinations as mailferry_destination_inflight.",
			[]string{"destination"}, nil),
		limit: prometheus.NewDesc("mailferry_destination_concurrency_limit",
			"The concurrency each busy destination has earned, for the same destinations as mailferry_destination_inflight.",
			[]string{"destination"}, nil),
	}
	m.ledger = newLedgerCollector()
	reg.MustRegister(m.deliveries, m.duration, m.tls, m.replies, m.roundTrips, m.panics, m.parks, m.unrecords, m.dests, m.ledger)
	for _, r := range []string{store.RecipientDelivered, store.RecipientDeferred, store.RecipientBounced} {
		m.deliveries.WithLabelValues(r)
	}
	return m
}

func (m *Metrics) attempt(a Attempt) {
	if m == nil {
		return
	}
	m.roundTrips.Add(float64(a.RoundTrips))
	if a.Host != "" {
		m.duration.Observe(a.Duration.Seconds())
		v := "none"
		if a.TLS != nil {
			v = a.TLS.Version
		}
		m.tls.WithLabelValues(v).Inc()
	}
	for _, r := range a.Results {
		class := "none"
		if r.Code >= 200 && r.Code < 600 {
			class = strconv.Itoa(r.Code/100) + "xx"
		}
		m.replies.WithLabelValues(class).Inc()
	}
}

func (m *Metrics) outcome(result string) {
	if m != nil {
		m.deliveries.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) panicked() {
	if m != nil {
		m.panics.Inc()
	}
}

func (m *Metrics) parked() {
	if m != nil {
		m.parks.Inc()
	}
}

func (m *Metrics) unrecorded() {
	if m != nil {
		m.unrecords.Inc()
	}
}

// watch adds a worker's destinations to the destination gauges.
func (m *Metrics) watch(d *destGate) {
	if m != nil {
		m.dests.mu.Lock()
		m.dests.sources = append(m.dests.sources, d)
		m.dests.mu.Unlock()
	}
}

// topDestinations is how many destinations get their own label; the rest
// are summed under "other", so the series stay bounded however many
// destinations there are.
const topDestinations = 20

// destCollector reads the workers' destination slots at scrape time.
type destCollector struct {
	inflight, queued, limit *prometheus.Desc

	mu      sync.Mutex
	sources []*destGate
}

func (c *destCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.inflight
	ch <- c.queued
	ch <- c.limit
}

func (c *destCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	sources := c.sources
	c.mu.Unlock()
	sum := map[string]destLoad{}
	for _, s := range sources {
		for _, l := range s.loads() {
			t := sum[l.dest]
			// The limit is the fleet's, as each worker last saw it.
			t.dest, t.inflight, t.queued, t.limit = l.dest, t.inflight+l.inflight, t.queued+l.queued, max(t.limit, l.limit)
			sum[l.dest] = t
		}
	}
	all := make([]destLoad, 0, len(sum))
	for _, l := range sum {
		all = append(all, l)
	}
	sortLoads(all)
	other, otherQueued := 0, 0
	for i, l := range all {
		if i >= topDestinations {
			other += l.inflight
			otherQueued += l.queued
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.inflight, prometheus.GaugeValue, float64(l.inflight), l.dest)
		ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(l.queued), l.dest)
		ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, float64(l.limit), l.dest)
	}
	ch <- prometheus.MustNewConstMetric(c.inflight, prometheus.GaugeValue, float64(other), "other")
	ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(otherQueued), "other")
}
