package api_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailferry/mailferry/api"
	"github.com/mailferry/mailferry/domains"
	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/store"
)

// TestNoRouteOutsideTheTable walks what api.New mounts: every /v1 route
// must come from the route table (api.Routes), which gives each its scope
// check. A route mounted any other way would skip it.
func TestNoRouteOutsideTheTable(t *testing.T) {
	t.Parallel()
	var st *store.Store // never called: the handler is only walked
	h, err := api.New(api.Options{
		Auth: st, Reader: st, Intake: (*intake.Intake)(nil), Registry: prometheus.NewRegistry(),
		Suppressions: st, Webhooks: st, Keys: st, Cancel: st, Domains: (*domains.Service)(nil),
		Hostname: "relay.test", MaxMessageBytes: 1 << 20, MaxRecipients: 10,
	})
	if err != nil {
		t.Fatal(err)
	}
	table := map[string]bool{}
	for _, r := range api.Routes() {
		table[r.Method+" "+r.Pattern] = true
	}
	mounted := map[string]bool{}
	err = chi.Walk(h.(chi.Routes), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		route = strings.TrimSuffix(strings.ReplaceAll(route, "/*/", "/"), "/")
		if !strings.HasPrefix(route, "/v1/") {
			return nil
		}
		mounted[method+" "+route] = true
		if !table[method+" "+route] {
			t.Errorf("%s %s is mounted outside the route table: no scope check", method, route)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for r := range table {
		if !mounted[r] {
			t.Errorf("%s is in the table but not mounted with every option set", r)
		}
	}
}
