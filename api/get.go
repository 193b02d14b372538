package api

import (
	"errors"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/mailferry/mailferry/store"
)

type recipientState struct {
	Email         string     `json:"email"`
	Status        string     `json:"status"`
	Attempts      int        `json:"attempts"`
	LastAttemptAt *time.Time `json:"last_attempt_at"`
	NextAttemptAt *time.Time `json:"next_attempt_at"`
	SMTPCode      *int       `json:"smtp_code"`
	EnhancedCode  *string    `json:"enhanced_code"`
	Response      *string    `json:"response"`
	MXHost        *string    `json:"mx_host"`
	TLSVersion    *string    `json:"tls_version"`
	// null when the recipient has not failed / is not suppressed
	BounceType       *string `json:"bounce_type"`
	BounceClass      *string `json:"bounce_class"`
	SuppressedReason *string `json:"suppressed_reason"`
	// The latest attempt's TLS policy and whether its certificate verified.
	TLSPolicy   *string `json:"tls_policy,omitempty"`
	TLSVerified *bool   `json:"tls_verified,omitempty"`
}

type eventState struct {
	At           time.Time `json:"at"`
	Type         string    `json:"type"`
	Recipient    *string   `json:"recipient"`
	SMTPCode     *int      `json:"smtp_code"`
	EnhancedCode *string   `json:"enhanced_code"`
	Response     *string   `json:"response"`
	MXHost       *string   `json:"mx_host"`
	Attempt      *int      `json:"attempt,omitempty"`
	MXIP         *string   `json:"mx_ip,omitempty"`
	TLSVersion   *string   `json:"tls_version,omitempty"`
	TLSCipher    *string   `json:"tls_cipher,omitempty"`
	TLSVerified  *bool     `json:"tls_verified,omitempty"`
	DurationMS   *int      `json:"duration_ms,omitempty"`
	BounceType   *string   `json:"bounce_type"`
	BounceClass  *string   `json:"bounce_class"`
	Async        bool      `json:"async"`
	ReportingMTA *string   `json:"reporting_mta,omitempty"`
	RemoteMTA    *string   `json:"remote_mta,omitempty"`
	TLSPolicy    *string   `json:"tls_policy,omitempty"`
	TLSFailure   *string   `json:"tls_failure,omitempty"`
	TLSOptOut    *bool     `json:"tls_opt_out,omitempty"`
}

type messageState struct {
	ID         string            `json:"id"`
	MessageID  string            `json:"message_id"`
	Status     string            `json:"status"`
	From       string            `json:"from"`
	Subject    string            `json:"subject"`
	Tags       []string          `json:"tags"`
	Metadata   map[string]string `json:"metadata"`
	CreatedAt  time.Time         `json:"created_at"`
	SendAt     *time.Time        `json:"send_at"`
	Recipients []recipientState  `json:"recipients"`
	Events     []eventState      `json:"events"`
}

func (s *server) getMessage(w http.ResponseWriter, r *http.Request) {
	key := principal(r.Context())
	id, err := uuid.Parse(chi.URLParam(r, "id"))
	if err != nil {
		writeProblem(w, newProblem(kindNotFound, "no message with this id"))
		return
	}
	m, err := s.opts.Reader.GetMessage(r.Context(), key.TenantID, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		// Another tenant's message is indistinguishable from none.
		writeProblem(w, newProblem(kindNotFound, "no message with this id"))
		return
	case err != nil:
		s.opts.Logger.ErrorContext(r.Context(), "read message", "message_id", id.String(), "error", err)
		p := newProblem(kindUnavailable, "the ledger is unavailable, try again")
		p.retryAfter = 5 * time.Second
		writeProblem(w, p)
		return
	}
	writeJSON(w, http.StatusOK, toState(m))
}

func toState(m *store.MessageView) messageState {
	out := messageState{
		ID: m.ID.String(), MessageID: m.MessageID, Status: m.Status, From: m.From, Subject: m.Subject,
		Tags: m.Tags, Metadata: m.Metadata, CreatedAt: m.CreatedAt.UTC(), SendAt: utcPtr(m.SendAt),
		Recipients: make([]recipientState, len(m.Recipients)), Events: make([]eventState, len(m.Events)),
	}
	if out.Tags == nil {
		out.Tags = []string{}
	}
	if out.Metadata == nil {
		out.Metadata = map[string]string{}
	}
	for i, r := range m.Recipients {
		out.Recipients[i] = recipientState{
			Email: r.Email, Status: r.Status, Attempts: r.Attempts,
			LastAttemptAt: utcPtr(r.LastAttemptAt), NextAttemptAt: utcPtr(r.NextAttemptAt),
			SMTPCode: r.SMTPCode, EnhancedCode: r.EnhancedCode, Response: r.Response,
			MXHost: r.MXHost, TLSVersion: r.TLSVersion,
			BounceType: r.BounceType, BounceClass: r.BounceClass, SuppressedReason: r.SuppressedReason,
			TLSPolicy: r.TLSPolicy, TLSVerified: r.TLSVerified,
		}
	}
	for i, e := range m.Events {
		ev := eventState{At: e.At.UTC(), Type: e.Type, SMTPCode: e.SMTPCode, EnhancedCode: e.EnhancedCode, Response: e.Response, MXHost: e.MXHost,
			Attempt: e.Attempt, MXIP: e.MXIP, TLSVersion: e.TLSVersion, TLSCipher: e.TLSCipher, TLSVerified: e.TLSVerified, DurationMS: e.DurationMS,
			BounceType: e.BounceType, BounceClass: e.BounceClass, Async: e.Async, ReportingMTA: e.ReportingMTA, RemoteMTA: e.RemoteMTA,
			TLSPolicy: e.TLSPolicy, TLSFailure: e.TLSFailure, TLSOptOut: e.TLSOptOut}
		if e.Recipient != "" {
			rc := e.Recipient
			ev.Recipient = &rc
		}
		out.Events[i] = ev
	}
	return out
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}
