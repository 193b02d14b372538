package api_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailferry/mailferry/api"
	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/store"
)

// jsonBody encodes v for h.do.
func jsonBody(t *testing.T, v any) *bytes.Reader {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.NewReader(b)
}

// newKey makes a key straight in the store.
func (h *harness) newKey(spec store.KeySpec) (store.APIKey, string) {
	h.t.Helper()
	k, secret, err := h.store.CreateKey(h.t.Context(), spec)
	if err != nil {
		h.t.Fatalf("create key %+v: %v", spec, err)
	}
	return k, secret
}

// TestEveryRouteChecksItsScope walks the route table: every /v1 route
// names a scope, and a key lacking it (or, for operator routes, a tenant's
// key with every scope) gets 403 before the handler looks at anything.
func TestEveryRouteChecksItsScope(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	routes := api.Routes()
	if len(routes) < 20 {
		t.Fatalf("api.Routes() lists %d routes; the table is incomplete", len(routes))
	}
	seen := map[string]bool{}
	for _, rt := range routes {
		if !slices.Contains(store.Scopes(), rt.Scope) {
			t.Errorf("%s %s: scope %q is not one of %v", rt.Method, rt.Pattern, rt.Scope, store.Scopes())
		}
		if seen[rt.Method+" "+rt.Pattern] {
			t.Errorf("%s %s listed twice", rt.Method, rt.Pattern)
		}
		seen[rt.Method+" "+rt.Pattern] = true
	}
	for _, want := range []string{"POST /v1/messages", "POST /v1/messages/batch", "DELETE /v1/messages/{id}",
		"GET /v1/messages", "POST /v1/tenants", "POST /v1/keys", "GET /v1/keys", "DELETE /v1/keys/{id}"} {
		if !seen[want] {
			t.Errorf("route table lacks %s", want)
		}
	}
	for _, rt := range routes {
		t.Run(rt.Method+" "+rt.Pattern, func(t *testing.T) {
			var scopes []string
			for _, sc := range store.Scopes() {
				if rt.Admin || sc != rt.Scope {
					scopes = append(scopes, sc)
				}
			}
			_, secret := h.newKey(store.KeySpec{Tenant: "acme", Domains: []string{"example.com"}, Scopes: scopes})
			path := strings.NewReplacer("{id}", "0190b6a4-8f1e-7c3a-9d2b-4e5f6a7b8c9d", "{email}", "bob@example.net", "{name}", "example.com").Replace(rt.Pattern)
			var body *bytes.Reader
			if rt.Method == http.MethodPost || rt.Method == http.MethodPut || rt.Method == http.MethodPatch {
				body = bytes.NewReader([]byte(`{}`))
			}
			var r response
			if body != nil {
				r = h.do(rt.Method, path, secret, body, nil)
			} else {
				r = h.do(rt.Method, path, secret, nil, nil)
			}
			if r.status != http.StatusForbidden {
				t.Fatalf("%s %s with scopes %v: status %d, want 403; body %s", rt.Method, path, scopes, r.status, r.body)
			}
			if p := r.problem(t); p.Type != "/problems/insufficient-scope" {
				t.Errorf("problem type %q, want /problems/insufficient-scope", p.Type)
			}
			if wa := r.header.Get("WWW-Authenticate"); !strings.Contains(wa, `error="insufficient_scope"`) || !strings.Contains(wa, `scope="`+rt.Scope+`"`) {
				t.Errorf("WWW-Authenticate %q, want insufficient_scope and scope %q (RFC 6750 3.1)", wa, rt.Scope)
			}
		})
	}
}

func TestScopes(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	_, sendOnly := h.newKey(store.KeySpec{Tenant: "acme", Domains: []string{"example.com"}, Scopes: []string{store.ScopeSend}})
	_, readOnly := h.newKey(store.KeySpec{Tenant: "acme", Scopes: []string{store.ScopeRead}})

	tests := []struct {
		name, method, path, key string
		body                    any
		want                    int
	}{
		{"send-only key lists messages", http.MethodGet, "/v1/messages", sendOnly, nil, http.StatusForbidden},
		{"send-only key sends", http.MethodPost, "/v1/messages", sendOnly, basic(), http.StatusAccepted},
		{"send-only key lists keys", http.MethodGet, "/v1/keys", sendOnly, nil, http.StatusForbidden},
		{"send-only key lists events", http.MethodGet, "/v1/events", sendOnly, nil, http.StatusForbidden},
		{"read-only key lists messages", http.MethodGet, "/v1/messages", readOnly, nil, http.StatusOK},
		{"read-only key sends", http.MethodPost, "/v1/messages", readOnly, basic(), http.StatusForbidden},
		{"read-only key adds a webhook", http.MethodPost, "/v1/webhooks", readOnly, map[string]any{"url": "https://hooks.example.net/", "events": []string{"message.delivered"}}, http.StatusForbidden},
		{"read-only key reads suppressions", http.MethodGet, "/v1/suppressions", readOnly, nil, http.StatusOK},
		{"old key (all scopes) lists messages", http.MethodGet, "/v1/messages", h.key, nil, http.StatusOK},
		{"tenant key creates a tenant", http.MethodPost, "/v1/tenants", h.key, map[string]string{"id": "initech"}, http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r response
			if tt.body != nil {
				r = h.do(tt.method, tt.path, tt.key, jsonBody(t, tt.body), nil)
			} else {
				r = h.do(tt.method, tt.path, tt.key, nil, nil)
			}
			if r.status != tt.want {
				t.Fatalf("status %d, want %d; body %s", r.status, tt.want, r.body)
			}
		})
	}
}

type keyDoc struct {
	ID         string   `json:"id"`
	Tenant     string   `json:"tenant"`
	Domains    []string `json:"domains"`
	Scopes     []string `json:"scopes"`
	Admin      bool     `json:"admin"`
	Secret     string   `json:"secret"`
	LastUsedAt *string  `json:"last_used_at"`
}

func (h *harness) listKeys(t *testing.T, key, query string) []keyDoc {
	t.Helper()
	r := h.do(http.MethodGet, "/v1/keys"+query, key, nil, nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET /v1/keys%s: %d %s", query, r.status, r.body)
	}
	var out struct{ Data []keyDoc }
	r.json(t, &out)
	return out.Data
}

// TestKeysTenantIsolation: a tenant's manage key manages its own
// tenant's keys and cannot touch another tenant's; an operator key can.
func TestKeysTenantIsolation(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	admin, adminSecret := h.newKey(store.KeySpec{Tenant: "operator", Scopes: []string{store.ScopeRead, store.ScopeManage}, Admin: true})

	// The operator creates tenant globex and a send-only key for it.
	if r := h.do(http.MethodPost, "/v1/tenants", adminSecret, jsonBody(t, map[string]string{"id": "globex"}), nil); r.status != http.StatusCreated {
		t.Fatalf("POST /v1/tenants: %d %s", r.status, r.body)
	}
	if r := h.do(http.MethodPost, "/v1/tenants", adminSecret, jsonBody(t, map[string]string{"id": "globex"}), nil); r.status != http.StatusOK {
		t.Fatalf("POST /v1/tenants again: %d %s, want 200", r.status, r.body)
	}
	if r := h.do(http.MethodPost, "/v1/keys", adminSecret, jsonBody(t, map[string]any{"tenant": "nobody", "domains": []string{"x.test"}}), nil); r.status != http.StatusUnprocessableEntity {
		t.Fatalf("POST /v1/keys for an unknown tenant: %d %s, want 422", r.status, r.body)
	}
	r := h.do(http.MethodPost, "/v1/keys", adminSecret, jsonBody(t, map[string]any{"tenant": "globex", "domains": []string{"globex.test"}, "scopes": []string{"send"}}), nil)
	if r.status != http.StatusCreated {
		t.Fatalf("admin POST /v1/keys: %d %s", r.status, r.body)
	}
	var globex keyDoc
	r.json(t, &globex)
	if globex.Tenant != "globex" || !slices.Equal(globex.Scopes, []string{"send"}) || !strings.HasPrefix(globex.Secret, "mf_"+globex.ID+"_") {
		t.Fatalf("created key %+v", globex)
	}
	var hash []byte
	if err := h.db.QueryRow(t.Context(), `SELECT secret_hash FROM api_keys WHERE id = $1`, globex.ID).Scan(&hash); err != nil || bytes.Contains(hash, []byte(globex.Secret)) || len(hash) != 32 {
		t.Fatalf("stored secret_hash %x, %v: want a 32-byte hash, not the secret", hash, err)
	}
	// The new key sends from its domain, and reads nothing.
	if r := h.do(http.MethodPost, "/v1/messages", globex.Secret, jsonBody(t, with("from", "x@globex.test")), nil); r.status != http.StatusAccepted {
		t.Fatalf("globex send: %d %s", r.status, r.body)
	}
	if r := h.do(http.MethodGet, "/v1/messages", globex.Secret, nil, nil); r.status != http.StatusForbidden {
		t.Fatalf("globex send-only key GET /v1/messages: %d, want 403", r.status)
	}

	// acme's manage key (h.key, all scopes) cannot touch globex.
	if r := h.do(http.MethodPost, "/v1/keys", h.key, jsonBody(t, map[string]any{"tenant": "globex", "domains": []string{"example.com"}}), nil); r.status != http.StatusForbidden {
		t.Fatalf("acme POST /v1/keys for globex: %d %s, want 403", r.status, r.body)
	}
	if r := h.do(http.MethodDelete, "/v1/keys/"+globex.ID, h.key, nil, nil); r.status != http.StatusNotFound {
		t.Fatalf("acme DELETE globex key: %d %s, want 404", r.status, r.body)
	}
	for _, k := range h.listKeys(t, h.key, "?tenant=globex") {
		if k.Tenant != "acme" {
			t.Fatalf("acme's GET /v1/keys shows %s's key %s", k.Tenant, k.ID)
		}
		if k.Secret != "" {
			t.Fatalf("GET /v1/keys shows a secret")
		}
	}
	// acme grants no domain or scope it lacks.
	if r := h.do(http.MethodPost, "/v1/keys", h.key, jsonBody(t, map[string]any{"domains": []string{"globex.test"}}), nil); r.status != http.StatusUnprocessableEntity {
		t.Fatalf("acme grants globex.test: %d %s, want 422", r.status, r.body)
	}
	_, acmeManage := h.newKey(store.KeySpec{Tenant: "acme", Scopes: []string{store.ScopeManage}})
	if r := h.do(http.MethodPost, "/v1/keys", acmeManage, jsonBody(t, map[string]any{"scopes": []string{"read"}}), nil); r.status != http.StatusUnprocessableEntity {
		t.Fatalf("manage-only key grants read: %d %s, want 422", r.status, r.body)
	}
	// acme manages its own keys.
	r = h.do(http.MethodPost, "/v1/keys", h.key, jsonBody(t, map[string]any{"domains": []string{"example.com"}, "scopes": []string{"send", "read"}}), nil)
	if r.status != http.StatusCreated {
		t.Fatalf("acme POST /v1/keys: %d %s", r.status, r.body)
	}
	var own keyDoc
	r.json(t, &own)
	if own.Tenant != "acme" {
		t.Fatalf("acme's new key is %s's", own.Tenant)
	}
	if r := h.do(http.MethodGet, "/v1/messages", own.Secret, nil, nil); r.status != http.StatusOK {
		t.Fatalf("new acme key GET /v1/messages: %d", r.status)
	}
	if r := h.do(http.MethodDelete, "/v1/keys/"+own.ID, h.key, nil, nil); r.status != http.StatusNoContent {
		t.Fatalf("acme DELETE own key: %d %s", r.status, r.body)
	}
	// Refused in every process once the NOTIFY flushed the key caches.
	wait.Within(t, 2*time.Second, "the revoked key refused", func() bool {
		return h.do(http.MethodGet, "/v1/messages", own.Secret, nil, nil).status == http.StatusUnauthorized
	})

	// The operator sees and revokes globex's key; the revocation holds at once.
	found := false
	for _, k := range h.listKeys(t, adminSecret, "?tenant=globex") {
		if k.Tenant != "globex" {
			t.Fatalf("GET /v1/keys?tenant=globex shows %s's key", k.Tenant)
		}
		if k.ID == globex.ID {
			found = true
			if k.LastUsedAt == nil {
				t.Errorf("globex key used, but last_used_at is null")
			}
		}
	}
	if !found {
		t.Fatalf("operator's GET /v1/keys?tenant=globex lacks %s", globex.ID)
	}
	if r := h.do(http.MethodDelete, "/v1/keys/"+globex.ID, adminSecret, nil, nil); r.status != http.StatusNoContent {
		t.Fatalf("admin DELETE: %d %s", r.status, r.body)
	}
	wait.Within(t, 2*time.Second, "the revoked globex key refused", func() bool {
		return h.do(http.MethodPost, "/v1/messages", globex.Secret, jsonBody(t, with("from", "x@globex.test")), nil).status == http.StatusUnauthorized
	})
	// The operator key itself is listed as one.
	for _, k := range h.listKeys(t, adminSecret, "?tenant=operator") {
		if k.ID == admin.ID && !k.Admin {
			t.Errorf("operator key listed with admin false")
		}
	}
}

// newKeyFor makes an all-scope key for tenant, sending from example.com.
func (h *harness) newKeyFor(tenant string) (store.APIKey, string) {
	h.t.Helper()
	return h.newKey(store.KeySpec{Tenant: tenant, Domains: []string{"example.com"}})
}

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }

func containsString(s, sub string) bool { return strings.Contains(s, sub) }
