package api

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// FieldProblem names one bad field of a request.
type FieldProblem struct {
	Field  string `json:"field"`
	Detail string `json:"detail"`
}

// problem is an RFC 9457 problem detail.
type problem struct {
	Type   string         `json:"type"`
	Title  string         `json:"title"`
	Status int            `json:"status"`
	Detail string         `json:"detail,omitempty"`
	Errors []FieldProblem `json:"errors,omitempty"`

	retryAfter time.Duration
}

func (p *problem) Error() string { return p.Title + ": " + p.Detail }

// kind is one row of the table that maps an error kind to its status and
// problem type. Handlers pick a kind; nothing else chooses status codes.
type kind struct {
	status int
	slug   string
	title  string
}

var (
	kindMalformed    = kind{http.StatusBadRequest, "malformed-request", "Malformed request"}
	kindUnknownField = kind{http.StatusBadRequest, "unknown-fields", "Unknown fields"}
	kindUnauthorized = kind{http.StatusUnauthorized, "unauthorized", "Missing or invalid API key"}
	kindForbidden    = kind{http.StatusForbidden, "sender-not-allowed", "Sender domain not allowed for this key"}
	kindNotFound     = kind{http.StatusNotFound, "not-found", "Not found"}
	kindTooLarge     = kind{http.StatusRequestEntityTooLarge, "too-large", "Message too large"}
	kindUnsupported  = kind{http.StatusUnsupportedMediaType, "unsupported-media-type", "Unsupported media type"}
	kindInvalid      = kind{http.StatusUnprocessableEntity, "invalid-fields", "Invalid fields"}
	kindIdemReused   = kind{http.StatusConflict, "idempotency-key-reused", "Idempotency key reused with a different request"}
	kindRateLimited  = kind{http.StatusTooManyRequests, "rate-limited", "Rate limit exceeded"}
	kindUnavailable  = kind{http.StatusServiceUnavailable, "unavailable", "Service unavailable"}
	kindBusy         = kind{http.StatusServiceUnavailable, "busy", "Too many messages in flight"}
	kindInternal     = kind{http.StatusInternalServerError, "internal", "Internal error"}
	kindNoRoute      = kind{http.StatusNotFound, "not-found", "No such route"}
	kindNoMethod     = kind{http.StatusMethodNotAllowed, "method-not-allowed", "Method not allowed"}
	kindScope        = kind{http.StatusForbidden, "insufficient-scope", "The key may not do this"}
	kindTenantDenied = kind{http.StatusForbidden, "other-tenant", "Another tenant's resource"}
	kindNothingLeft  = kind{http.StatusConflict, "nothing-to-cancel", "Nothing left to cancel"}
	kindTooMany      = kind{http.StatusUnprocessableEntity, "batch-too-large", "Too many messages in the batch"}
)

func newProblem(k kind, detail string, fields ...FieldProblem) *problem {
	return &problem{Type: "/problems/" + k.slug, Title: k.title, Status: k.status, Detail: detail, Errors: fields}
}

func writeProblem(w http.ResponseWriter, p *problem) {
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Cache-Control", "no-store")
	if p.Status == http.StatusUnauthorized {
		h.Set("WWW-Authenticate", `Bearer realm="mailferry"`)
	}
	if p.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int(p.retryAfter.Round(time.Second)/time.Second)))
	}
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
