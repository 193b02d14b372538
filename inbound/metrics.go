package inbound

import "github.com/prometheus/client_golang/prometheus"

// Results, the label values of mailferry_inbound_messages_total.
const (
	ResultAccepted    = "accepted"    // a report stored (after DATA, before the 250)
	ResultRejected    = "rejected"    // a RCPT refused: not a return path of ours, forged, or not the FBL address
	ResultProcessed   = "processed"   // a report applied to its message
	ResultUnparseable = "unparseable" // kept with a reason for `mailferry inbound list`
	ResultUnmatched   = "unmatched"   // a report that names no message of ours
)

// Kinds of bounce, the kind label of mailferry_bounces_total.
const (
	KindSync  = "sync"  // the next hop's reply in the SMTP session (relay)
	KindAsync = "async" // a DSN after the session (this package)
)

// Metrics are the inbound listener's and processor's collectors, and
// mailferry_bounces_total, which relay counts into too (Bounced, wired in
// main): one collector, so both kinds are one series set.
type Metrics struct {
	messages   *prometheus.CounterVec
	bounces    *prometheus.CounterVec
	complaints prometheus.Counter
}

// NewMetrics registers the collectors with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailferry_inbound_messages_total",
			Help: "Reports (DSNs, complaints) at the inbound listener, by result: accepted, rejected (per RCPT), processed, unparseable, unmatched.",
		}, []string{"result"}),
		bounces: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailferry_bounces_total",
			Help: "Recipients bounced, by class and kind (sync: the SMTP reply; async: a DSN after it).",
		}, []string{"class", "kind"}),
		complaints: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mailferry_complaints_total",
			Help: "Complaints (ARF reports) applied to a recipient.",
		}),
	}
	reg.MustRegister(m.messages, m.bounces, m.complaints)
	for _, r := range []string{ResultAccepted, ResultRejected, ResultProcessed, ResultUnparseable, ResultUnmatched} {
		m.messages.WithLabelValues(r)
	}
	return m
}

func (m *Metrics) message(result string) {
	if m != nil {
		m.messages.WithLabelValues(result).Inc()
	}
}

// Bounced counts one bounced recipient of class, kind KindSync or
// KindAsync.
func (m *Metrics) Bounced(class, kind string) {
	if m != nil {
		m.bounces.WithLabelValues(class, kind).Inc()
	}
}

func (m *Metrics) complained() {
	if m != nil {
		m.complaints.Inc()
	}
}
