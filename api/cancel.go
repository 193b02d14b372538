package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/mailferry/mailferry/store"
)

// Canceler cancels messages (store.Store).
type Canceler interface {
	CancelMessage(ctx context.Context, tenant string, id uuid.UUID) (store.Canceled, error)
}

// cancelMessage is DELETE /v1/messages/{id}: every recipient still queued
// or deferred, scheduled ones included, becomes canceled. 200 with the
// message as GET shows it; 409 when nothing was left to cancel (all
// final, or the rest in an SMTP transaction now, whose outcome stands;
// should it defer, the recipient is canceled then).
func (s *server) cancelMessage(w http.ResponseWriter, r *http.Request) {
	key := principal(r.Context())
	id, err := uuid.Parse(chi.URLParam(r, "id"))
	if err != nil {
		writeProblem(w, newProblem(kindNotFound, "no message with this id"))
		return
	}
	c, err := s.opts.Cancel.CancelMessage(r.Context(), key.TenantID, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeProblem(w, newProblem(kindNotFound, "no message with this id"))
		return
	case err != nil:
		s.opts.Logger.ErrorContext(r.Context(), "cancel message", "message_id", id.String(), "error", err)
		p := newProblem(kindUnavailable, "the ledger is unavailable, nothing was canceled; try again")
		p.retryAfter = 5 * time.Second
		writeProblem(w, p)
		return
	case len(c.Recipients) == 0 && c.InFlight > 0:
		writeProblem(w, newProblem(kindNothingLeft, fmt.Sprintf(
			"%d recipient(s) are in an SMTP transaction now: its outcome stands, and a deferral will be canceled", c.InFlight)))
		return
	case len(c.Recipients) == 0:
		writeProblem(w, newProblem(kindNothingLeft, "every recipient is delivered, bounced, suppressed or canceled already"))
		return
	}
	s.opts.Logger.LogAttrs(r.Context(), slog.LevelInfo, "message canceled", slog.String("message_id", id.String()),
		slog.String("tenant", key.TenantID), slog.Int("recipients", len(c.Recipients)), slog.Int("in_flight", c.InFlight))
	m, err := s.opts.Reader.GetMessage(r.Context(), key.TenantID, id)
	if err != nil {
		s.internal(w, r, fmt.Errorf("read message %s after cancel: %w", id, err))
		return
	}
	writeJSON(w, http.StatusOK, toState(m))
}
