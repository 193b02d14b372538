package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/mailferry/mailferry/domains"
	"github.com/mailferry/mailferry/store"
)

// Domains is the sending-domain service (domains.Service).
type Domains interface {
	Create(ctx context.Context, tenant, name string) (domains.View, error)
	Check(ctx context.Context, tenant, name string) (domains.View, error)
	List(ctx context.Context, tenant string) ([]domains.View, error)
	Delete(ctx context.Context, tenant, name string) error
	Rotate(ctx context.Context, tenant, name string) (domains.View, error)
	RequireVerified(ctx context.Context, tenant, domain string) error
}

var _ Domains = (*domains.Service)(nil)

var (
	kindDomainConflict = kind{http.StatusConflict, "domain-conflict", "Domain conflict"}
	kindUnverified     = kind{http.StatusForbidden, "domain-not-verified", "Sender domain not verified"}
)

// keyMayUse: a key limited to sender domains manages only those (and
// their subdomains), as it may send only from them.
func keyMayUse(key store.APIKey, name string) bool {
	if len(key.Domains) == 0 {
		return true
	}
	name = strings.ToLower(name)
	for _, d := range key.Domains {
		if name == d || strings.HasSuffix(name, "."+d) {
			return true
		}
	}
	return false
}

func (s *server) createDomain(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"name"`
	}
	if p := decodeBody(r, &req); p != nil {
		writeProblem(w, p)
		return
	}
	name, err := domains.Normalize(req.Name)
	if err != nil {
		writeProblem(w, invalid([]FieldProblem{{Field: "name", Detail: strings.TrimPrefix(err.Error(), domains.ErrInvalid.Error()+": ")}}))
		return
	}
	key := principal(r.Context())
	if !keyMayUse(key, name) {
		writeProblem(w, newProblem(kindForbidden, "this key may manage "+strings.Join(key.Domains, ", ")+" only",
			FieldProblem{Field: "name", Detail: "this key may not send from " + name}))
		return
	}
	v, err := s.opts.Domains.Create(r.Context(), key.TenantID, name)
	if err != nil {
		s.domainError(w, r, err, name)
		return
	}
	writeJSON(w, http.StatusCreated, v)
}

func (s *server) listDomains(w http.ResponseWriter, r *http.Request) {
	vs, err := s.opts.Domains.List(r.Context(), principal(r.Context()).TenantID)
	if err != nil {
		s.domainError(w, r, err, "")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": vs})
}

// getDomain checks the records live: the answer is what DNS says now.
func (s *server) getDomain(w http.ResponseWriter, r *http.Request) {
	name := strings.ToLower(chi.URLParam(r, "name"))
	v, err := s.opts.Domains.Check(r.Context(), principal(r.Context()).TenantID, name)
	if err != nil {
		s.domainError(w, r, err, name)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *server) deleteDomain(w http.ResponseWriter, r *http.Request) {
	name := strings.ToLower(chi.URLParam(r, "name"))
	if err := s.opts.Domains.Delete(r.Context(), principal(r.Context()).TenantID, name); err != nil {
		s.domainError(w, r, err, name)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// rotateDomainKeys answers 202: the new keys sign once DNS shows them.
func (s *server) rotateDomainKeys(w http.ResponseWriter, r *http.Request) {
	name := strings.ToLower(chi.URLParam(r, "name"))
	v, err := s.opts.Domains.Rotate(r.Context(), principal(r.Context()).TenantID, name)
	if err != nil {
		s.domainError(w, r, err, name)
		return
	}
	writeJSON(w, http.StatusAccepted, v)
}

func (s *server) domainError(w http.ResponseWriter, r *http.Request, err error, name string) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeProblem(w, newProblem(kindNotFound, "no sending domain "+name+" for this tenant"))
	case errors.Is(err, store.ErrExists):
		writeProblem(w, newProblem(kindDomainConflict, name+" is already a sending domain of this tenant"))
	case errors.Is(err, store.ErrTaken):
		writeProblem(w, newProblem(kindDomainConflict, name+" is a sending domain of another tenant"))
	case errors.Is(err, store.ErrRotating):
		writeProblem(w, newProblem(kindDomainConflict, "a DKIM rotation of "+name+" already waits for its keys to show in DNS"))
	case errors.Is(err, domains.ErrRetiring):
		writeProblem(w, newProblem(kindDomainConflict, err.Error()))
	case r.Context().Err() != nil:
	default:
		s.opts.Logger.LogAttrs(r.Context(), slog.LevelError, "domains request", slog.String("route", r.URL.Path), slog.Any("error", err))
		p := newProblem(kindUnavailable, "the ledger or DNS is unavailable, try again")
		p.retryAfter = 5 * time.Second
		writeProblem(w, p)
	}
}

// requireVerified refuses mail from a From domain that is not a verified
// sending domain of the tenant (MAILFERRY_REQUIRE_VERIFIED_DOMAIN), naming
// the record that is not.
func (s *server) requireVerified(ctx context.Context, tenant, domain string) *problem {
	if !s.opts.RequireVerifiedDomain || s.opts.Domains == nil {
		return nil
	}
	err := s.opts.Domains.RequireVerified(ctx, tenant, domain)
	var ue *domains.UnverifiedError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ue):
		fp := FieldProblem{Field: "from", Detail: ue.Error()}
		if ue.Record != nil {
			fp.Detail = ue.Record.Type + " " + ue.Record.Name + ": " + ue.Record.Status
		}
		return newProblem(kindUnverified, ue.Error(), fp)
	default:
		s.opts.Logger.LogAttrs(ctx, slog.LevelError, "domain verification lookup", slog.Any("error", err))
		p := newProblem(kindUnavailable, "the ledger is unavailable; nothing was accepted")
		p.retryAfter = 5 * time.Second
		return p
	}
}
