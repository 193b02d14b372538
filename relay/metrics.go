package relay

import (
	"strconv"

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
	reg.MustRegister(m.deliveries, m.duration, m.tls, m.replies, m.roundTrips, m.panics, m.parks, m.unrecords)
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
