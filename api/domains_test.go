package api_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mailferry/mailferry/api"
	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/domains"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/store"
)

type domainAnswer struct {
	Name     string           `json:"name"`
	Status   string           `json:"status"`
	DKIMMode string           `json:"dkim_mode"`
	Records  []domains.Record `json:"records"`
}

func domainHarness(t *testing.T, dns *testmx.DNS, requireVerified bool) *harness {
	t.Helper()
	return newHarness(t, harnessOptions{requireVerified: requireVerified, domains: func(st *store.Store) api.Domains {
		sealer, err := dkim.NewSealer(nil)
		if err != nil {
			t.Fatal(err)
		}
		svc, err := domains.New(domains.Options{Ledger: st, Sealer: sealer, DNSServer: dns.Addr(),
			SPFInclude: "spf.relay.test", LookupTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}})
}

func TestDomainRoutes(t *testing.T) {
	dns := testmx.StartDNS(t)
	h := domainHarness(t, dns, false)
	post := func(body string, key string) response {
		return h.do(http.MethodPost, "/v1/domains", key, strings.NewReader(body), nil)
	}
	// The harness key may send from example.com only.
	r := post(`{"name":"Example.COM"}`, h.key)
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var d domainAnswer
	r.json(t, &d)
	if d.Name != "example.com" || d.Status != "pending" || d.DKIMMode != "direct" {
		t.Errorf("created %+v", d)
	}
	purposes := map[string]int{}
	for _, rec := range d.Records {
		purposes[rec.Purpose]++
	}
	for p, n := range map[string]int{"dkim": 2, "spf": 1, "return_path": 1, "dmarc": 1, "mx": 1, "mta_sts": 1, "tls_rpt": 1} {
		if purposes[p] != n {
			t.Errorf("%d %s records, want %d", purposes[p], p, n)
		}
	}
	for _, tc := range []struct {
		name, body, key string
		status          int
		field           string
	}{
		{"again", `{"name":"example.com"}`, h.key, http.StatusConflict, ""},
		{"other domain for this key", `{"name":"other.test"}`, h.key, http.StatusForbidden, "name"},
		{"bad name", `{"name":"not a domain"}`, h.key, http.StatusUnprocessableEntity, "name"},
		{"unknown field", `{"name":"example.com","x":1}`, h.key, http.StatusBadRequest, ""},
		{"no key", `{"name":"example.com"}`, "", http.StatusUnauthorized, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := post(tc.body, tc.key)
			if r.status != tc.status {
				t.Fatalf("%d %s, want %d", r.status, r.body, tc.status)
			}
			if p := r.problem(t); tc.field != "" && strings.Join(p.fields(), ",") != tc.field {
				t.Errorf("fields %v, want %s", p.fields(), tc.field)
			}
		})
	}

	// Another tenant sees none of it, and cannot take the domain.
	_, other, err := h.store.CreateAPIKey(t.Context(), "globex", []string{"example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if r := h.do(http.MethodGet, "/v1/domains/example.com", other, nil, nil); r.status != http.StatusNotFound {
		t.Errorf("other tenant's GET: %d", r.status)
	}
	if r := h.do(http.MethodPost, "/v1/domains/example.com/dkim/rotate", other, nil, nil); r.status != http.StatusNotFound {
		t.Errorf("other tenant's rotate: %d", r.status)
	}
	if r := h.do(http.MethodDelete, "/v1/domains/example.com", other, nil, nil); r.status != http.StatusNotFound {
		t.Errorf("other tenant's DELETE: %d", r.status)
	}
	if r := post(`{"name":"example.com"}`, other); r.status != http.StatusConflict {
		t.Errorf("other tenant's POST: %d", r.status)
	}
	var list struct{ Data []domainAnswer }
	h.do(http.MethodGet, "/v1/domains", other, nil, nil).json(t, &list)
	if len(list.Data) != 0 {
		t.Errorf("other tenant lists %d domains", len(list.Data))
	}

	// Publish the DKIM records: GET checks live.
	for _, rec := range d.Records {
		if rec.Purpose == "dkim" {
			dns.TXT(rec.Name, splitTXT(rec.Value)...)
		}
	}
	r = h.do(http.MethodGet, "/v1/domains/example.com", h.key, nil, nil)
	r.json(t, &d)
	if r.status != http.StatusOK || d.Status != "verified" {
		t.Fatalf("GET after publishing: %d %s", r.status, r.body)
	}
	h.do(http.MethodGet, "/v1/domains", h.key, nil, nil).json(t, &list)
	if len(list.Data) != 1 || list.Data[0].Status != "verified" {
		t.Errorf("list %+v", list.Data)
	}

	// Rotate: 202, then 409 while it waits for DNS.
	r = h.do(http.MethodPost, "/v1/domains/example.com/dkim/rotate", h.key, nil, nil)
	if r.status != http.StatusAccepted {
		t.Fatalf("rotate: %d %s", r.status, r.body)
	}
	r.json(t, &d)
	pending := 0
	for _, rec := range d.Records {
		if rec.KeyState == "pending" {
			pending++
		}
	}
	if pending != 2 {
		t.Errorf("%d pending DKIM records after rotate, want 2", pending)
	}
	if r := h.do(http.MethodPost, "/v1/domains/example.com/dkim/rotate", h.key, nil, nil); r.status != http.StatusConflict {
		t.Errorf("second rotate: %d %s", r.status, r.body)
	}

	// The feed has domain.verified.
	var feed struct {
		Data []struct {
			Type string         `json:"type"`
			Data map[string]any `json:"data"`
		} `json:"data"`
	}
	h.do(http.MethodGet, "/v1/events", h.key, nil, nil).json(t, &feed)
	if len(feed.Data) != 1 || feed.Data[0].Type != "domain.verified" || feed.Data[0].Data["domain"] != "example.com" {
		t.Errorf("events %+v", feed.Data)
	}

	if r := h.do(http.MethodDelete, "/v1/domains/example.com", h.key, nil, nil); r.status != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
	if r := h.do(http.MethodGet, "/v1/domains/example.com", h.key, nil, nil); r.status != http.StatusNotFound {
		t.Errorf("GET after DELETE: %d", r.status)
	}
	if n := len(mustKeys(t, h.store)); n != 0 {
		t.Errorf("%d DKIM keys left after DELETE", n)
	}
}

func mustKeys(t *testing.T, st *store.Store) []store.DKIMKey {
	t.Helper()
	keys, err := st.ListDKIMKeys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func splitTXT(v string) []string {
	var out []string
	for len(v) > 255 {
		out = append(out, v[:255])
		v = v[255:]
	}
	return append(out, v)
}

func TestRequireVerifiedDomain(t *testing.T) {
	dns := testmx.StartDNS(t)
	h := domainHarness(t, dns, true)
	// Not a sending domain: 403 saying how to add it.
	r := h.post(basic(), nil)
	if r.status != http.StatusForbidden {
		t.Fatalf("send from an unknown domain: %d %s", r.status, r.body)
	}
	if p := r.problem(t); !strings.Contains(p.Detail, "POST /v1/domains") || p.Type != "/problems/domain-not-verified" {
		t.Errorf("problem %+v", p)
	}
	// Added, not published: 403 naming the DKIM record.
	var d domainAnswer
	h.do(http.MethodPost, "/v1/domains", h.key, strings.NewReader(`{"name":"example.com"}`), nil).json(t, &d)
	r = h.post(basic(), nil)
	p := r.problem(t)
	if r.status != http.StatusForbidden || !strings.Contains(p.Detail, "._domainkey.example.com") || len(p.Errors) != 1 || p.Errors[0].Field != "from" {
		t.Fatalf("send from an unverified domain: %d %s", r.status, r.body)
	}
	if h.messageCount() != 0 {
		t.Errorf("a refused message was stored")
	}
	// Published and checked: accepted.
	for _, rec := range d.Records {
		if rec.Purpose == "dkim" {
			dns.TXT(rec.Name, splitTXT(rec.Value)...)
		}
	}
	h.do(http.MethodGet, "/v1/domains/example.com", h.key, nil, nil)
	if r := h.post(basic(), nil); r.status != http.StatusAccepted {
		t.Fatalf("send from a verified domain: %d %s", r.status, r.body)
	}
}
