package store

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Suppression reasons, as suppressions.reason and recipients.suppressed_reason
// hold them.
const (
	SuppressedHardBounce      = "hard_bounce"
	SuppressedComplaint       = "complaint"
	SuppressedSoftBounceLimit = "soft_bounce_limit"
	SuppressedManual          = "manual"
)

// SuppressionReasons lists the reasons in a stable order.
func SuppressionReasons() []string {
	return []string{SuppressedHardBounce, SuppressedComplaint, SuppressedSoftBounceLimit, SuppressedManual}
}

// NormalizeEmail gives an address the form the suppression list keys it
// by: the local part exactly as written, the domain in lower case (RFC
// 5321 2.4: a local part may be case-sensitive, a domain is not). It is
// the form mail.Address.Addr already has for an A-label domain; an address
// without "@" comes back as it is.
func NormalizeEmail(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return addr
	}
	return addr[:i+1] + strings.ToLower(addr[i+1:])
}

// suppressionAddr is NormalizeEmail in SQL over recipients r: the greedy
// match ends the local part at the last "@", as LastIndexByte does.
const suppressionAddr = `(substring(r.email from '^(.*)@') || '@' || lower(substring(r.email from '[^@]*$')))`

// metrics are the store's Prometheus collectors; a nil *metrics counts
// nothing.
type metrics struct {
	suppressions *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{
		suppressions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailferry_suppressions_total",
			Help: "Addresses added to a suppression list, by reason.",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.suppressions)
	for _, r := range SuppressionReasons() {
		m.suppressions.WithLabelValues(r)
	}
	return m
}

// suppressed counts n suppressions added for reason.
func (m *metrics) suppressed(reason string, n int64) {
	if m != nil && n > 0 {
		m.suppressions.WithLabelValues(reason).Add(float64(n))
	}
}
