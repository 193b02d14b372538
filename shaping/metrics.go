package shaping

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are labelled by entry name, or "other" for destinations no
// entry matches: the label set is bounded by the configuration.
type metrics struct {
	throttledTotal *prometheus.CounterVec
	s              *Shaper
	suspended      *prometheus.Desc
	rate           *prometheus.Desc
}

func newMetrics(reg prometheus.Registerer, s *Shaper) *metrics {
	m := &metrics{
		throttledTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailferry_destination_throttled_total",
			Help: "Automation rules applied to a destination (throttle or suspend), by shaping entry (\"other\": no entry).",
		}, []string{"destination"}),
		s: s,
		suspended: prometheus.NewDesc("mailferry_destination_suspended",
			"1 while a shaping entry's destinations are suspended by a rule, as this process last read it.", []string{"destination"}, nil),
		rate: prometheus.NewDesc("mailferry_destination_rate",
			"The message rate a shaping entry allows now, in messages a second, fleet-wide (halved by throttle rules).", []string{"destination"}, nil),
	}
	if reg != nil {
		reg.MustRegister(m.throttledTotal, m)
	}
	return m
}

func (m *metrics) throttled(label string) { m.throttledTotal.WithLabelValues(label).Inc() }

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.suspended
	ch <- m.rate
}

// Collect reports every entry, from this process's copy of its state.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	s := m.s
	now := s.now()
	s.mu.Lock()
	states := make(map[string]State, len(s.states))
	for unit, c := range s.states {
		if name, ok := strings.CutPrefix(unit, "e:"); ok {
			states[name] = c.st
		}
	}
	s.mu.Unlock()
	for _, e := range s.cfg.Entries {
		st, ok := states[e.Name]
		if !ok {
			st = State{Factor: 1}
		}
		susp := 0.0
		if st.Suspended(now) {
			susp = 1
		}
		ch <- prometheus.MustNewConstMetric(m.suspended, prometheus.GaugeValue, susp, e.Name)
		lim := s.cfg.Default.over(e.Limits)
		if !lim.MaxMessageRate.IsZero() {
			ch <- prometheus.MustNewConstMetric(m.rate, prometheus.GaugeValue, lim.MaxMessageRate.PerSecond()*st.FactorAt(now), e.Name)
		}
	}
}
