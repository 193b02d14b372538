package api

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/mailferry/mailferry/store"
)

// routeDef is one route of /v1 and what a key needs to use it. Every /v1
// route is in v1Routes, and is mounted only through it, so none can go
// without a scope check (TestEveryRouteChecksItsScope walks the table).
type routeDef struct {
	method, pattern string
	scope           string // store.Scope*: the key must carry it
	admin           bool   // operator keys only (store.APIKey.Admin)
	handle          func(*server, http.ResponseWriter, *http.Request)
	// needs says whether the options serve the route; nil: always.
	needs func(Options) bool
}

func hasSuppressions(o Options) bool { return o.Suppressions != nil }
func hasWebhooks(o Options) bool     { return o.Webhooks != nil }
func hasKeys(o Options) bool         { return o.Keys != nil }
func hasCancel(o Options) bool       { return o.Cancel != nil }
func hasDomains(o Options) bool      { return o.Domains != nil }

// v1Routes is the table of /v1 routes. read covers what only looks;
// manage what changes the tenant's set-up (webhooks, suppressions, keys).
func v1Routes() []routeDef {
	return []routeDef{
		{http.MethodPost, "/messages", store.ScopeSend, false, (*server).sendMessage, nil},
		{http.MethodPost, "/messages/batch", store.ScopeSend, false, (*server).sendBatch, nil},
		{http.MethodGet, "/messages", store.ScopeRead, false, (*server).listMessages, nil},
		{http.MethodGet, "/messages/{id}", store.ScopeRead, false, (*server).getMessage, nil},
		{http.MethodDelete, "/messages/{id}", store.ScopeSend, false, (*server).cancelMessage, hasCancel},

		{http.MethodGet, "/suppressions", store.ScopeRead, false, (*server).listSuppressions, hasSuppressions},
		{http.MethodGet, "/suppressions/{email}", store.ScopeRead, false, (*server).getSuppression, hasSuppressions},
		{http.MethodPut, "/suppressions/{email}", store.ScopeManage, false, (*server).putSuppression, hasSuppressions},
		{http.MethodDelete, "/suppressions/{email}", store.ScopeManage, false, (*server).deleteSuppression, hasSuppressions},

		{http.MethodPost, "/webhooks", store.ScopeManage, false, (*server).createWebhook, hasWebhooks},
		{http.MethodGet, "/webhooks", store.ScopeRead, false, (*server).listWebhooks, hasWebhooks},
		{http.MethodGet, "/webhooks/{id}", store.ScopeRead, false, (*server).getWebhook, hasWebhooks},
		{http.MethodPatch, "/webhooks/{id}", store.ScopeManage, false, (*server).patchWebhook, hasWebhooks},
		{http.MethodDelete, "/webhooks/{id}", store.ScopeManage, false, (*server).deleteWebhook, hasWebhooks},
		{http.MethodPost, "/webhooks/{id}/rotate-secret", store.ScopeManage, false, (*server).rotateWebhookSecret, hasWebhooks},
		{http.MethodGet, "/webhooks/{id}/deliveries", store.ScopeRead, false, (*server).listWebhookDeliveries, hasWebhooks},
		{http.MethodPost, "/webhooks/{id}/replay", store.ScopeManage, false, (*server).replayWebhook, hasWebhooks},
		{http.MethodGet, "/events", store.ScopeRead, false, (*server).listEvents, hasWebhooks},

		{http.MethodPost, "/tenants", store.ScopeManage, true, (*server).createTenant, hasKeys},
		{http.MethodPost, "/keys", store.ScopeManage, false, (*server).createKey, hasKeys},
		{http.MethodGet, "/keys", store.ScopeManage, false, (*server).listKeys, hasKeys},
		{http.MethodDelete, "/keys/{id}", store.ScopeManage, false, (*server).revokeKey, hasKeys},

		// Sending domains are the tenant's set-up: manage, reads included
		// (a GET checks DNS and records what it found).
		{http.MethodPost, "/domains", store.ScopeManage, false, (*server).createDomain, hasDomains},
		{http.MethodGet, "/domains", store.ScopeManage, false, (*server).listDomains, hasDomains},
		{http.MethodGet, "/domains/{name}", store.ScopeManage, false, (*server).getDomain, hasDomains},
		{http.MethodDelete, "/domains/{name}", store.ScopeManage, false, (*server).deleteDomain, hasDomains},
		{http.MethodPost, "/domains/{name}/dkim/rotate", store.ScopeManage, false, (*server).rotateDomainKeys, hasDomains},
	}
}

// Route describes one /v1 route for tests and documentation.
type Route struct {
	Method  string
	Pattern string // with the /v1 prefix
	Scope   string
	Admin   bool
}

// Routes lists every /v1 route with the scope it needs, whether or not
// given Options serve it.
func Routes() []Route {
	defs := v1Routes()
	out := make([]Route, len(defs))
	for i, d := range defs {
		out[i] = Route{Method: d.method, Pattern: "/v1" + d.pattern, Scope: d.scope, Admin: d.admin}
	}
	return out
}

// mountV1 mounts the routes the options serve, each behind its scope
// check.
func (s *server) mountV1(r chi.Router) {
	for _, d := range v1Routes() {
		if d.needs != nil && !d.needs(s.opts) {
			continue
		}
		r.Method(d.method, d.pattern, s.requireScope(d))
	}
}

// requireScope answers 403 unless the key may use the route, before the
// handler reads anything of the request: RFC 6750 3.1, insufficient_scope,
// with the scope needed in WWW-Authenticate.
func (s *server) requireScope(d routeDef) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := principal(r.Context())
		if (d.admin && !key.Admin) || !key.Has(d.scope) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="mailferry", error="insufficient_scope", scope="`+d.scope+`"`)
		}
		switch {
		case d.admin && !key.Admin:
			writeProblem(w, newProblem(kindScope, d.method+" /v1"+d.pattern+" needs an operator key (mailferry keys create --admin)",
				FieldProblem{Field: "Authorization", Detail: "not an operator key"}))
			return
		case !key.Has(d.scope):
			writeProblem(w, newProblem(kindScope, d.method+" /v1"+d.pattern+" needs a key with the "+d.scope+" scope",
				FieldProblem{Field: "Authorization", Detail: "key lacks the " + d.scope + " scope"}))
			return
		}
		d.handle(s, w, r)
	})
}
