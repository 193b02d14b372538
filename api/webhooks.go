package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/mailferry/mailferry/store"
	"github.com/mailferry/mailferry/webhooks"
)

// Webhooks is the ledger's side of webhook endpoints and the events feed.
type Webhooks interface {
	CreateWebhookEndpoint(ctx context.Context, n store.NewWebhookEndpoint) (store.WebhookEndpoint, []byte, error)
	ListWebhookEndpoints(ctx context.Context, tenant string) ([]store.WebhookEndpoint, error)
	GetWebhookEndpoint(ctx context.Context, tenant string, id uuid.UUID) (store.WebhookEndpoint, error)
	UpdateWebhookEndpoint(ctx context.Context, tenant string, id uuid.UUID, p store.WebhookEndpointPatch) (store.WebhookEndpoint, error)
	DeleteWebhookEndpoint(ctx context.Context, tenant string, id uuid.UUID) error
	RotateWebhookSecret(ctx context.Context, tenant string, id uuid.UUID, overlap time.Duration) (store.WebhookEndpoint, []byte, error)
	ListWebhookAttempts(ctx context.Context, endpoint uuid.UUID, before int64, limit int) ([]store.WebhookAttempt, int64, error)
	ReplayWebhook(ctx context.Context, tenant string, endpoint uuid.UUID, r store.WebhookReplay) (queued, missing []uuid.UUID, err error)
	ListEvents(ctx context.Context, tenant string, q store.EventQuery) ([]store.StoredEvent, string, error)
}

var _ Webhooks = (*store.Store)(nil)

// secretOverlap is how long the old secret keeps signing after a rotation.
const secretOverlap = 24 * time.Hour

const (
	maxWebhookBody   = 64 << 10
	maxDescription   = 1000
	maxReplayIDs     = 1000
	maxEndpointsList = 1000
)

type endpointState struct {
	ID                      string     `json:"id"`
	URL                     string     `json:"url"`
	Events                  []string   `json:"events"`
	Description             string     `json:"description"`
	Enabled                 bool       `json:"enabled"`
	DisabledAt              *time.Time `json:"disabled_at"`
	DisabledReason          *string    `json:"disabled_reason"`
	FailingSince            *time.Time `json:"failing_since"`
	PreviousSecretExpiresAt *time.Time `json:"previous_secret_expires_at"`
	CreatedAt               time.Time  `json:"created_at"`
	UpdatedAt               time.Time  `json:"updated_at"`
	Secret                  string     `json:"secret,omitempty"` // on create and rotate only
}

func toEndpointState(e store.WebhookEndpoint, secret []byte) endpointState {
	out := endpointState{
		ID: e.ID.String(), URL: e.URL, Events: e.Events, Description: e.Description, Enabled: e.DisabledAt == nil,
		DisabledAt: utcPtr(e.DisabledAt), FailingSince: utcPtr(e.FailingSince),
		PreviousSecretExpiresAt: utcPtr(e.PreviousSecretExpiresAt), CreatedAt: e.CreatedAt.UTC(), UpdatedAt: e.UpdatedAt.UTC(),
	}
	if e.DisabledReason != "" {
		r := e.DisabledReason
		out.DisabledReason = &r
	}
	if secret != nil {
		out.Secret = webhooks.EncodeSecret(secret)
	}
	return out
}

// decodeBody reads a small JSON object into v, refusing unknown fields.
func decodeBody(r *http.Request, v any) *problem {
	if p := checkContentType(r); p != nil {
		return p
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxWebhookBody+1))
	if err != nil {
		return newProblem(kindMalformed, "could not read the request body")
	}
	if len(b) > maxWebhookBody {
		return newProblem(kindTooLarge, fmt.Sprintf("the body is larger than %d bytes", maxWebhookBody))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return malformedJSON(err)
	}
	if dec.More() {
		return newProblem(kindMalformed, "the body holds more than one JSON value")
	}
	return nil
}

// checkEvents validates the "events" list: at least one, each a known type.
func checkEvents(events []string) ([]string, []FieldProblem) {
	if len(events) == 0 {
		return nil, []FieldProblem{{Field: "events", Detail: "name at least one event type: " + strings.Join(store.EventTypes(), ", ")}}
	}
	var bad []FieldProblem
	var out []string
	for i, e := range events {
		if !store.IsEventType(e) {
			bad = append(bad, FieldProblem{Field: fmt.Sprintf("events[%d]", i), Detail: "unknown event type " + strconv.Quote(clip(e, maxListedName))})
			continue
		}
		if !slices.Contains(out, e) {
			out = append(out, e)
		}
	}
	return out, bad
}

func (s *server) checkEndpointURL(raw string) []FieldProblem {
	if _, err := webhooks.CheckURL(raw, s.opts.AllowPrivateDestinations); err != nil {
		return []FieldProblem{{Field: "url", Detail: err.Error()}}
	}
	return nil
}

func checkDescription(d string) []FieldProblem {
	if utf8.RuneCountInString(d) > maxDescription || !utf8.ValidString(d) || strings.ContainsRune(d, 0) {
		return []FieldProblem{{Field: "description", Detail: fmt.Sprintf("at most %d characters of text", maxDescription)}}
	}
	return nil
}

func (s *server) createWebhook(w http.ResponseWriter, r *http.Request) {
	var req struct {
		URL         string   `json:"url"`
		Events      []string `json:"events"`
		Description string   `json:"description"`
	}
	if p := decodeBody(r, &req); p != nil {
		writeProblem(w, p)
		return
	}
	var bad []FieldProblem
	if req.URL == "" {
		bad = append(bad, FieldProblem{Field: "url", Detail: "required"})
	} else {
		bad = append(bad, s.checkEndpointURL(req.URL)...)
	}
	events, evBad := checkEvents(req.Events)
	bad = append(bad, evBad...)
	bad = append(bad, checkDescription(req.Description)...)
	if len(bad) > 0 {
		writeProblem(w, invalid(bad))
		return
	}
	e, secret, err := s.opts.Webhooks.CreateWebhookEndpoint(r.Context(), store.NewWebhookEndpoint{
		TenantID: principal(r.Context()).TenantID, URL: req.URL, Events: events, Description: req.Description})
	if err != nil {
		s.webhookLedgerError(w, r, err, "")
		return
	}
	writeJSON(w, http.StatusCreated, toEndpointState(e, secret))
}

func (s *server) listWebhooks(w http.ResponseWriter, r *http.Request) {
	es, err := s.opts.Webhooks.ListWebhookEndpoints(r.Context(), principal(r.Context()).TenantID)
	if err != nil {
		s.webhookLedgerError(w, r, err, "")
		return
	}
	out := make([]endpointState, 0, min(len(es), maxEndpointsList))
	for _, e := range es {
		out = append(out, toEndpointState(e, nil))
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": out})
}

// endpointID parses {id}; a malformed id is a 404 like an unknown one.
func endpointID(w http.ResponseWriter, r *http.Request) (uuid.UUID, bool) {
	id, err := uuid.Parse(chi.URLParam(r, "id"))
	if err != nil {
		writeProblem(w, newProblem(kindNotFound, "no webhook with this id"))
		return uuid.Nil, false
	}
	return id, true
}

func (s *server) getWebhook(w http.ResponseWriter, r *http.Request) {
	id, ok := endpointID(w, r)
	if !ok {
		return
	}
	e, err := s.opts.Webhooks.GetWebhookEndpoint(r.Context(), principal(r.Context()).TenantID, id)
	if err != nil {
		s.webhookLedgerError(w, r, err, "no webhook with this id")
		return
	}
	writeJSON(w, http.StatusOK, toEndpointState(e, nil))
}

func (s *server) patchWebhook(w http.ResponseWriter, r *http.Request) {
	id, ok := endpointID(w, r)
	if !ok {
		return
	}
	var req struct {
		URL         *string  `json:"url"`
		Events      []string `json:"events"`
		Description *string  `json:"description"`
		Enabled     *bool    `json:"enabled"`
	}
	if p := decodeBody(r, &req); p != nil {
		writeProblem(w, p)
		return
	}
	var bad []FieldProblem
	patch := store.WebhookEndpointPatch{URL: req.URL, Description: req.Description, Enabled: req.Enabled}
	if req.URL != nil {
		bad = append(bad, s.checkEndpointURL(*req.URL)...)
	}
	if req.Events != nil {
		var evBad []FieldProblem
		patch.Events, evBad = checkEvents(req.Events)
		bad = append(bad, evBad...)
	}
	if req.Description != nil {
		bad = append(bad, checkDescription(*req.Description)...)
	}
	if len(bad) > 0 {
		writeProblem(w, invalid(bad))
		return
	}
	e, err := s.opts.Webhooks.UpdateWebhookEndpoint(r.Context(), principal(r.Context()).TenantID, id, patch)
	if err != nil {
		s.webhookLedgerError(w, r, err, "no webhook with this id")
		return
	}
	writeJSON(w, http.StatusOK, toEndpointState(e, nil))
}

func (s *server) deleteWebhook(w http.ResponseWriter, r *http.Request) {
	id, ok := endpointID(w, r)
	if !ok {
		return
	}
	if err := s.opts.Webhooks.DeleteWebhookEndpoint(r.Context(), principal(r.Context()).TenantID, id); err != nil {
		s.webhookLedgerError(w, r, err, "no webhook with this id")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": id.String(), "deleted": true})
}

func (s *server) rotateWebhookSecret(w http.ResponseWriter, r *http.Request) {
	id, ok := endpointID(w, r)
	if !ok {
		return
	}
	e, secret, err := s.opts.Webhooks.RotateWebhookSecret(r.Context(), principal(r.Context()).TenantID, id, secretOverlap)
	if err != nil {
		s.webhookLedgerError(w, r, err, "no webhook with this id")
		return
	}
	writeJSON(w, http.StatusOK, toEndpointState(e, secret))
}

type attemptState struct {
	ID             string    `json:"id"`
	DeliveryID     string    `json:"delivery_id"`
	EventID        string    `json:"event_id"`
	EventType      string    `json:"event_type"`
	Attempt        int       `json:"attempt"`
	StartedAt      time.Time `json:"started_at"`
	StatusCode     *int      `json:"status_code"`
	LatencyMS      int       `json:"latency_ms"`
	Error          *string   `json:"error"`
	Outcome        string    `json:"outcome"`
	DeliveryStatus string    `json:"delivery_status"`
}

func (s *server) listWebhookDeliveries(w http.ResponseWriter, r *http.Request) {
	id, ok := endpointID(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	var before int64
	if c := q.Get("cursor"); c != "" {
		n, err := strconv.ParseInt(c, 10, 64)
		if err != nil || n <= 0 {
			writeProblem(w, invalid([]FieldProblem{{Field: "cursor", Detail: "not a cursor this API returned"}}))
			return
		}
		before = n
	}
	limit, p := limitParam(q.Get("limit"))
	if p != nil {
		writeProblem(w, p)
		return
	}
	tenant := principal(r.Context()).TenantID
	if _, err := s.opts.Webhooks.GetWebhookEndpoint(r.Context(), tenant, id); err != nil {
		s.webhookLedgerError(w, r, err, "no webhook with this id")
		return
	}
	atts, next, err := s.opts.Webhooks.ListWebhookAttempts(r.Context(), id, before, limit)
	if err != nil {
		s.webhookLedgerError(w, r, err, "")
		return
	}
	out := make([]attemptState, len(atts))
	for i, a := range atts {
		out[i] = attemptState{ID: strconv.FormatInt(a.ID, 10), DeliveryID: strconv.FormatInt(a.DeliveryID, 10),
			EventID: a.EventID.String(), EventType: a.EventType, Attempt: a.Attempt, StartedAt: a.StartedAt.UTC(),
			StatusCode: a.StatusCode, LatencyMS: a.LatencyMS, Error: a.Error, Outcome: a.Outcome, DeliveryStatus: a.DeliveryStatus}
	}
	var nextCursor *string
	if next > 0 {
		c := strconv.FormatInt(next, 10)
		nextCursor = &c
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": out, "next_cursor": nextCursor})
}

func limitParam(v string) (int, *problem) {
	if v == "" {
		return 100, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 1000 {
		return 0, invalid([]FieldProblem{{Field: "limit", Detail: "a whole number from 1 to 1000"}})
	}
	return n, nil
}

func (s *server) replayWebhook(w http.ResponseWriter, r *http.Request) {
	id, ok := endpointID(w, r)
	if !ok {
		return
	}
	var req struct {
		Since    *time.Time `json:"since"`
		Until    *time.Time `json:"until"`
		EventIDs []string   `json:"event_ids"`
	}
	if p := decodeBody(r, &req); p != nil {
		writeProblem(w, p)
		return
	}
	var rp store.WebhookReplay
	var bad []FieldProblem
	switch {
	case req.EventIDs != nil && (req.Since != nil || req.Until != nil):
		bad = append(bad, FieldProblem{Field: "event_ids", Detail: "give either since/until or event_ids, not both"})
	case req.EventIDs != nil:
		if len(req.EventIDs) == 0 || len(req.EventIDs) > maxReplayIDs {
			bad = append(bad, FieldProblem{Field: "event_ids", Detail: fmt.Sprintf("1 to %d event ids", maxReplayIDs)})
		}
		for i, s := range req.EventIDs {
			u, err := uuid.Parse(s)
			if err != nil {
				bad = append(bad, FieldProblem{Field: fmt.Sprintf("event_ids[%d]", i), Detail: "not an event id"})
				continue
			}
			if !slices.Contains(rp.EventIDs, u) {
				rp.EventIDs = append(rp.EventIDs, u)
			}
		}
	case req.Since == nil:
		bad = append(bad, FieldProblem{Field: "since", Detail: "required unless event_ids is given"})
	default:
		rp.Since, rp.Until = *req.Since, s.opts.Now()
		if req.Until != nil {
			rp.Until = *req.Until
		}
		if !rp.Since.Before(rp.Until) {
			bad = append(bad, FieldProblem{Field: "until", Detail: "must be after since"})
		}
	}
	if len(bad) > 0 {
		writeProblem(w, invalid(bad))
		return
	}
	queued, missing, err := s.opts.Webhooks.ReplayWebhook(r.Context(), principal(r.Context()).TenantID, id, rp)
	if err != nil {
		s.webhookLedgerError(w, r, err, "no webhook with this id")
		return
	}
	if len(missing) > 0 {
		for _, m := range missing {
			i := slices.IndexFunc(req.EventIDs, func(s string) bool { u, _ := uuid.Parse(s); return u == m })
			bad = append(bad, FieldProblem{Field: fmt.Sprintf("event_ids[%d]", i), Detail: "no such event (or past retention)"})
		}
		writeProblem(w, newProblem(kindInvalid, "unknown event ids; nothing was replayed", bad...))
		return
	}
	ids := make([]string, len(queued))
	for i, q := range queued {
		ids[i] = q.String()
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"replayed": len(ids), "event_ids": ids})
}

func (s *server) listEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var types []string
	var bad []FieldProblem
	for _, v := range q["types"] {
		for t := range strings.SplitSeq(v, ",") {
			if t = strings.TrimSpace(t); t == "" {
				continue
			}
			if !store.IsEventType(t) {
				bad = append(bad, FieldProblem{Field: "types", Detail: "unknown event type " + strconv.Quote(clip(t, maxListedName))})
				continue
			}
			types = append(types, t)
		}
	}
	limit, p := limitParam(q.Get("limit"))
	if p != nil {
		writeProblem(w, p)
		return
	}
	if len(bad) > 0 {
		writeProblem(w, invalid(bad))
		return
	}
	evs, next, err := s.opts.Webhooks.ListEvents(r.Context(), principal(r.Context()).TenantID,
		store.EventQuery{After: q.Get("after"), Types: types, Limit: limit})
	if errors.Is(err, store.ErrBadCursor) {
		writeProblem(w, invalid([]FieldProblem{{Field: "after", Detail: "not a cursor this API returned"}}))
		return
	}
	if err != nil {
		s.webhookLedgerError(w, r, err, "")
		return
	}
	data := make([]json.RawMessage, len(evs))
	for i, e := range evs {
		data[i] = e.Payload()
	}
	var nextCursor *string
	if next != "" {
		nextCursor = &next
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": data, "next_cursor": nextCursor})
}

// webhookLedgerError answers a store error: notFound (when not "") for
// ErrNotFound, 422 for a refused write, 503 for an outage.
func (s *server) webhookLedgerError(w http.ResponseWriter, r *http.Request, err error, notFound string) {
	switch {
	case notFound != "" && errors.Is(err, store.ErrNotFound):
		writeProblem(w, newProblem(kindNotFound, notFound))
	case errors.Is(err, store.ErrRejected):
		writeProblem(w, newProblem(kindInvalid, "the ledger refused the request's data"))
	case r.Context().Err() != nil:
		// The client went away; nothing to answer.
	default:
		s.opts.Logger.ErrorContext(r.Context(), "webhooks request", "route", r.URL.Path, "error", err)
		p := newProblem(kindUnavailable, "the ledger is unavailable, try again")
		p.retryAfter = 5 * time.Second
		writeProblem(w, p)
	}
}
