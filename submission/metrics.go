package submission

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the submission server's Prometheus collectors. Messages
// accepted are counted by intake (mailferry_messages_accepted_total with
// ingress="smtp").
type Metrics struct {
	sessions     *prometheus.CounterVec
	connections  prometheus.Gauge
	authFailures *prometheus.CounterVec
	refusals     *prometheus.CounterVec
}

// Listener names, the label values of mailferry_smtp_sessions_total.
const (
	listenerSubmission  = "submission"  // port 587, STARTTLS
	listenerSubmissions = "submissions" // port 465, implicit TLS
)

// Refusal reasons, the label values of mailferry_smtp_refusals_total.
const (
	refusedConnectionLimit = "connection_limit"
	refusedClientLimit     = "client_connection_limit" // MaxConnectionsPerIP
	refusedAuthRequired    = "auth_required"
	refusedSenderDomain    = "sender_domain"
	refusedBadAddress      = "bad_address"
	refusedTooLarge        = "too_large"
	refusedInvalidMessage  = "invalid_message"
	refusedUnavailable     = "unavailable"
	refusedBusy            = "bytes_in_flight"
	refusedRateLimited     = "rate_limited" // the key's MAILFERRY_RATE_LIMIT budget, shared with the API
)

// Reasons for mailferry_smtp_auth_failures_total.
const (
	authFailCredentials = "credentials"  // wrong, revoked or unknown key, or another tenant's
	authFailRateLimited = "rate_limited" // refused without checking: too many failures from the address
	authFailPlaintext   = "plaintext"    // AUTH before TLS
)

// NewMetrics registers the submission server's collectors with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailferry_smtp_sessions_total",
			Help: "SMTP submission connections accepted, by listener (submission: 587 STARTTLS, submissions: 465 implicit TLS).",
		}, []string{"listener"}),
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mailferry_smtp_connections",
			Help: "SMTP submission connections open now.",
		}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailferry_smtp_auth_failures_total",
			Help: "SMTP AUTH attempts refused, by reason (credentials, rate_limited, plaintext).",
		}, []string{"reason"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailferry_smtp_refusals_total",
			Help: "SMTP submission commands and connections refused, by reason.",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.sessions, m.connections, m.authFailures, m.refusals)
	// Every series shows from the start, so rate() and alerts have a zero.
	for _, l := range []string{listenerSubmission, listenerSubmissions} {
		m.sessions.WithLabelValues(l)
	}
	for _, r := range []string{authFailCredentials, authFailRateLimited, authFailPlaintext} {
		m.authFailures.WithLabelValues(r)
	}
	for _, r := range []string{refusedConnectionLimit, refusedClientLimit, refusedAuthRequired, refusedSenderDomain, refusedBadAddress,
		refusedTooLarge, refusedInvalidMessage, refusedUnavailable, refusedBusy, refusedRateLimited} {
		m.refusals.WithLabelValues(r)
	}
	return m
}

func (m *Metrics) session(listener string) {
	if m != nil {
		m.sessions.WithLabelValues(listener).Inc()
	}
}

func (m *Metrics) open(delta float64) {
	if m != nil {
		m.connections.Add(delta)
	}
}

func (m *Metrics) authFailure(reason string) {
	if m != nil {
		m.authFailures.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) refused(reason string) {
	if m != nil {
		m.refusals.WithLabelValues(reason).Inc()
	}
}
