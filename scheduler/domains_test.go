package scheduler_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/domains"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/teststack"
	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/scheduler"
	"github.com/mailferry/mailferry/store"
)

// TestSchedulerRechecksDomains: the scheduler's domain loop re-checks a
// domain on its own; a change becomes a domain.verified, then a
// domain.failed event, each once.
func TestSchedulerRechecksDomains(t *testing.T) {
	ts := teststack.New(t, teststack.Options{Queue: queue.Options{Consumer: "c"}})
	st := ts.Store
	dns := testmx.StartDNS(t)
	sealer, err := dkim.NewSealer(nil)
	if err != nil {
		t.Fatal(err)
	}
	// CheckEvery of a nanosecond: every sweep re-checks every domain.
	svc, err := domains.New(domains.Options{Ledger: st, Sealer: sealer, DNSServer: dns.Addr(),
		CheckEvery: time.Nanosecond, LookupTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	v, err := svc.Create(t.Context(), "acme", "example.com")
	if err != nil {
		t.Fatal(err)
	}
	s, err := scheduler.New(scheduler.Options{Queue: ts.Queue, Ledger: st, Domains: svc, DomainsEvery: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	feed := func() string {
		evs, _, err := st.ListEvents(t.Context(), "acme", store.EventQuery{})
		if err != nil {
			t.Fatal(err)
		}
		var types []string
		for _, e := range evs {
			types = append(types, e.Type)
		}
		return strings.Join(types, ",")
	}
	var names []string
	for _, r := range v.Records {
		if r.Purpose == domains.PurposeDKIM {
			var parts []string
			for val := r.Value; ; val = val[255:] {
				if len(val) <= 255 {
					parts = append(parts, val)
					break
				}
				parts = append(parts, val[:255])
			}
			dns.TXT(r.Name, parts...)
			names = append(names, r.Name)
		}
	}
	wait.For(t, "domain.verified from the scheduler", func() bool { return feed() == "domain.verified" })
	dns.Clear(names[0])
	wait.For(t, "domain.failed from the scheduler", func() bool { return feed() == "domain.verified,domain.failed" })
	// Further sweeps find no change: no more events.
	n := dns.Count(names[0], "TXT")
	wait.For(t, "two more sweeps", func() bool { return dns.Count(names[0], "TXT") >= n+2 })
	if got := feed(); got != "domain.verified,domain.failed" {
		t.Errorf("events %s after unchanged sweeps", got)
	}
}
