package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/mailferry/mailferry/store"
)

// KeyManager keeps tenants and API keys (store.Store).
type KeyManager interface {
	CreateTenant(ctx context.Context, id string) (store.Tenant, bool, error)
	GetTenant(ctx context.Context, id string) (store.Tenant, error)
	CreateKey(ctx context.Context, spec store.KeySpec) (store.APIKey, string, error)
	ListKeys(ctx context.Context, tenant string) ([]store.APIKey, error)
	RevokeAPIKey(ctx context.Context, id string) error
	RevokeTenantKey(ctx context.Context, tenant, id string) error
}

// keyState is a key as the API shows it; Secret only in the answer that
// created it.
type keyState struct {
	ID         string     `json:"id"`
	Tenant     string     `json:"tenant"`
	Domains    []string   `json:"domains"`
	Scopes     []string   `json:"scopes"`
	Admin      bool       `json:"admin"`
	CreatedAt  time.Time  `json:"created_at"`
	RevokedAt  *time.Time `json:"revoked_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	Secret     string     `json:"secret,omitempty"`
}

func toKeyState(k store.APIKey, secret string) keyState {
	return keyState{ID: k.ID, Tenant: k.TenantID, Domains: nonNilStrings(k.Domains), Scopes: nonNilStrings(k.Scopes),
		Admin: k.Admin, CreatedAt: k.CreatedAt, RevokedAt: k.RevokedAt, LastUsedAt: k.LastUsedAt, Secret: secret}
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// createTenant is POST /v1/tenants, for operator keys: 201 for a new
// tenant, 200 for one that exists (creating it again changes nothing).
func (s *server) createTenant(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ID string `json:"id"`
	}
	if p := decodeBody(r, &req); p != nil {
		writeProblem(w, p)
		return
	}
	if err := store.CheckTenant(strings.TrimSpace(req.ID)); err != nil {
		writeProblem(w, invalid([]FieldProblem{{Field: "id", Detail: err.Error()}}))
		return
	}
	t, created, err := s.opts.Keys.CreateTenant(r.Context(), req.ID)
	if err != nil {
		s.webhookLedgerError(w, r, err, "")
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	writeJSON(w, status, map[string]any{"id": t.ID, "created_at": t.CreatedAt})
}

// createKey is POST /v1/keys. A tenant's key with the manage scope makes
// keys for its own tenant only, with no scope and no sender domain it
// lacks itself: managing keys must not widen what the tenant's keys may
// do. An operator key makes keys for any existing tenant.
func (s *server) createKey(w http.ResponseWriter, r *http.Request) {
	caller := principal(r.Context())
	var req struct {
		Tenant  string   `json:"tenant"`
		Domains []string `json:"domains"`
		Scopes  []string `json:"scopes"`
	}
	if p := decodeBody(r, &req); p != nil {
		writeProblem(w, p)
		return
	}
	req.Tenant = strings.TrimSpace(req.Tenant)
	if req.Tenant == "" {
		req.Tenant = caller.TenantID
	}
	if !caller.Admin && req.Tenant != caller.TenantID {
		writeProblem(w, newProblem(kindTenantDenied, "this key manages the keys of its own tenant only",
			FieldProblem{Field: "tenant", Detail: "not this key's tenant"}))
		return
	}
	var bad []FieldProblem
	for _, sc := range req.Scopes {
		if !slices.Contains(store.Scopes(), sc) {
			bad = append(bad, FieldProblem{Field: "scopes", Detail: "unknown scope " + strconv.Quote(clip(sc, 64)) + ": scopes are send, read and manage"})
		} else if !caller.Admin && !caller.Has(sc) {
			bad = append(bad, FieldProblem{Field: "scopes", Detail: "this key cannot grant " + sc + ", which it lacks"})
		}
	}
	if !caller.Admin && len(req.Scopes) == 0 {
		req.Scopes = caller.Scopes // no more than the caller's own
	}
	if !caller.Admin {
		for _, d := range req.Domains {
			d = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
			if !slices.Contains(caller.Domains, d) {
				bad = append(bad, FieldProblem{Field: "domains", Detail: "this key cannot grant " + strconv.Quote(clip(d, 64)) + ", which it may not send from"})
			}
		}
	}
	if len(req.Domains) == 0 && (len(req.Scopes) == 0 || slices.Contains(req.Scopes, store.ScopeSend)) {
		bad = append(bad, FieldProblem{Field: "domains", Detail: "a key with the send scope needs at least one sender domain"})
	}
	if len(bad) > 0 {
		writeProblem(w, invalid(bad))
		return
	}
	if caller.Admin {
		if _, err := s.opts.Keys.GetTenant(r.Context(), req.Tenant); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				writeProblem(w, invalid([]FieldProblem{{Field: "tenant", Detail: "no such tenant; create it with POST /v1/tenants"}}))
				return
			}
			s.webhookLedgerError(w, r, err, "")
			return
		}
	}
	k, secret, err := s.opts.Keys.CreateKey(r.Context(), store.KeySpec{Tenant: req.Tenant, Domains: req.Domains, Scopes: req.Scopes})
	if errors.Is(err, store.ErrRejected) {
		writeProblem(w, invalid([]FieldProblem{{Field: "domains", Detail: strings.TrimPrefix(err.Error(), "create api key: rejected: ")}}))
		return
	}
	if err != nil {
		s.webhookLedgerError(w, r, err, "")
		return
	}
	s.opts.Logger.LogAttrs(r.Context(), slog.LevelInfo, "api key created", slog.String("key", k.ID), slog.String("tenant", k.TenantID), slog.String("by", caller.ID))
	writeJSON(w, http.StatusCreated, toKeyState(k, secret))
}

// listKeys is GET /v1/keys: the caller's tenant's keys, or, for an
// operator key, every key (?tenant= narrows). Secrets are never shown.
func (s *server) listKeys(w http.ResponseWriter, r *http.Request) {
	caller := principal(r.Context())
	tenant := caller.TenantID
	if caller.Admin {
		tenant = r.URL.Query().Get("tenant")
	}
	keys, err := s.opts.Keys.ListKeys(r.Context(), tenant)
	if err != nil {
		s.webhookLedgerError(w, r, err, "")
		return
	}
	out := make([]keyState, len(keys))
	for i, k := range keys {
		out[i] = toKeyState(k, "")
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
}

// revokeKey is DELETE /v1/keys/{id}: 204. Another tenant's key is 404 to
// a tenant's key, as if it did not exist.
func (s *server) revokeKey(w http.ResponseWriter, r *http.Request) {
	caller := principal(r.Context())
	id := chi.URLParam(r, "id")
	var err error
	if caller.Admin {
		err = s.opts.Keys.RevokeAPIKey(r.Context(), id)
	} else {
		err = s.opts.Keys.RevokeTenantKey(r.Context(), caller.TenantID, id)
	}
	if err != nil {
		s.webhookLedgerError(w, r, err, "no key "+strconv.Quote(clip(id, 64))+" for this tenant")
		return
	}
	s.opts.Logger.LogAttrs(r.Context(), slog.LevelInfo, "api key revoked", slog.String("key", id), slog.String("by", caller.ID))
	w.WriteHeader(http.StatusNoContent)
}
