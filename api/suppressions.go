package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/store"
)

// Suppressions is the ledger's suppression list.
type Suppressions interface {
	ListSuppressions(ctx context.Context, tenantID string, p store.SuppressionPage) ([]store.Suppression, error)
	GetSuppression(ctx context.Context, tenantID, email string) (store.Suppression, error)
	PutSuppression(ctx context.Context, sup store.Suppression) (store.Suppression, bool, error)
	DeleteSuppression(ctx context.Context, tenantID, email string) error
}

// defaultSuppressionPage is the page size when the client names none.
const defaultSuppressionPage = 100

type suppressionState struct {
	Email     string     `json:"email"`
	Reason    string     `json:"reason"`
	MessageID *uuid.UUID `json:"message_id"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at"`
}

type suppressionList struct {
	Data       []suppressionState `json:"data"`
	NextCursor *string            `json:"next_cursor"`
}

func toSuppressionState(s store.Suppression) suppressionState {
	return suppressionState{Email: s.Email, Reason: s.Reason, MessageID: s.MessageID,
		CreatedAt: s.CreatedAt.UTC(), ExpiresAt: utcPtr(s.ExpiresAt)}
}

// The cursor is the last address of the page, base64url-encoded: opaque
// to the client, and free of characters a query string would mangle.
func encodeCursor(email string) string { return base64.RawURLEncoding.EncodeToString([]byte(email)) }

func decodeCursor(c string) (string, bool) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	return string(b), err == nil && c != ""
}

func (s *server) listSuppressions(w http.ResponseWriter, r *http.Request) {
	key := principal(r.Context())
	q := r.URL.Query()
	var fields []FieldProblem
	page := store.SuppressionPage{Reason: q.Get("reason"), Limit: defaultSuppressionPage}
	if page.Reason != "" && !slices.Contains(store.SuppressionReasons(), page.Reason) {
		fields = append(fields, FieldProblem{Field: "reason", Detail: "not one of " + strings.Join(store.SuppressionReasons(), ", ")})
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > store.MaxSuppressionPage {
			fields = append(fields, FieldProblem{Field: "limit", Detail: fmt.Sprintf("an integer from 1 to %d", store.MaxSuppressionPage)})
		}
		page.Limit = n
	}
	if v := q.Get("cursor"); v != "" {
		after, ok := decodeCursor(v)
		if !ok {
			fields = append(fields, FieldProblem{Field: "cursor", Detail: "not a cursor this API gave"})
		}
		page.After = after
	}
	if len(fields) > 0 {
		writeProblem(w, invalid(fields))
		return
	}
	want := page.Limit
	page.Limit++ // one more tells whether a next page exists
	list, err := s.opts.Suppressions.ListSuppressions(r.Context(), key.TenantID, page)
	if err != nil {
		s.ledgerError(w, r, "list suppressions", err)
		return
	}
	out := suppressionList{Data: make([]suppressionState, 0, min(len(list), want))}
	for i, e := range list {
		if i == want {
			c := encodeCursor(list[want-1].Email)
			out.NextCursor = &c
			break
		}
		out.Data = append(out.Data, toSuppressionState(e))
	}
	writeJSON(w, http.StatusOK, out)
}

// suppressionEmail reads {email} from the path: one mailbox, parsed by
// package mail, in the form the list keys it by. It writes the 422 itself.
func suppressionEmail(w http.ResponseWriter, r *http.Request) (string, bool) {
	raw := chi.URLParam(r, "email")
	if r.URL.RawPath != "" {
		// chi matched the escaped path: undo it once.
		u, err := url.PathUnescape(raw)
		if err != nil {
			writeProblem(w, invalid([]FieldProblem{{Field: "email", Detail: "not a valid percent-encoded path segment"}}))
			return "", false
		}
		raw = u
	}
	a, err := mail.ParseAddress(raw)
	if err == nil && a.Name != "" {
		err = errors.New("a bare address is wanted, without a display name")
	}
	if err != nil {
		writeProblem(w, invalid([]FieldProblem{{Field: "email", Detail: err.Error()}}))
		return "", false
	}
	return store.NormalizeEmail(a.Addr), true
}

func (s *server) getSuppression(w http.ResponseWriter, r *http.Request) {
	key := principal(r.Context())
	email, ok := suppressionEmail(w, r)
	if !ok {
		return
	}
	sup, err := s.opts.Suppressions.GetSuppression(r.Context(), key.TenantID, email)
	if err != nil {
		s.ledgerError(w, r, "get suppression", err)
		return
	}
	writeJSON(w, http.StatusOK, toSuppressionState(sup))
}

type putSuppressionRequest struct {
	Reason    *string    `json:"reason"`
	ExpiresAt *time.Time `json:"expires_at"`
}

// maxSuppressionBody bounds a PUT body: two short fields.
const maxSuppressionBody = 4 << 10

// putSuppression lists an address by hand. It answers 200 with the entry
// whether it was new or not, so a repeat answers the same.
func (s *server) putSuppression(w http.ResponseWriter, r *http.Request) {
	key := principal(r.Context())
	email, ok := suppressionEmail(w, r)
	if !ok {
		return
	}
	var req putSuppressionRequest
	if r.ContentLength != 0 {
		if p := checkContentType(r); p != nil {
			writeProblem(w, p)
			return
		}
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxSuppressionBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil && !errors.Is(err, io.EOF) {
			writeProblem(w, newProblem(kindMalformed, "the body is not a JSON object of reason and expires_at: "+err.Error()))
			return
		}
	}
	var fields []FieldProblem
	reason := store.SuppressedManual
	if req.Reason != nil && *req.Reason != store.SuppressedManual {
		fields = append(fields, FieldProblem{Field: "reason", Detail: `only "manual" can be set by a client`})
	}
	if req.ExpiresAt != nil && !req.ExpiresAt.After(s.opts.Now()) {
		fields = append(fields, FieldProblem{Field: "expires_at", Detail: "is not in the future"})
	}
	if len(fields) > 0 {
		writeProblem(w, invalid(fields))
		return
	}
	sup, _, err := s.opts.Suppressions.PutSuppression(r.Context(), store.Suppression{
		TenantID: key.TenantID, Email: email, Reason: reason, ExpiresAt: req.ExpiresAt})
	if err != nil {
		s.ledgerError(w, r, "put suppression", err)
		return
	}
	writeJSON(w, http.StatusOK, toSuppressionState(sup))
}

func (s *server) deleteSuppression(w http.ResponseWriter, r *http.Request) {
	key := principal(r.Context())
	email, ok := suppressionEmail(w, r)
	if !ok {
		return
	}
	if err := s.opts.Suppressions.DeleteSuppression(r.Context(), key.TenantID, email); err != nil {
		s.ledgerError(w, r, "delete suppression", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// ledgerError answers a store error: 404 for ErrNotFound (another
// tenant's entry is indistinguishable from none), 422 for a write the
// ledger refused, else 503.
func (s *server) ledgerError(w http.ResponseWriter, r *http.Request, what string, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeProblem(w, newProblem(kindNotFound, "the address is not on the suppression list"))
	case errors.Is(err, store.ErrRejected):
		writeProblem(w, newProblem(kindInvalid, "the ledger refused the request"))
	default:
		s.opts.Logger.ErrorContext(r.Context(), what, "error", err)
		p := newProblem(kindUnavailable, "the ledger is unavailable, try again")
		p.retryAfter = 5 * time.Second
		writeProblem(w, p)
	}
}
