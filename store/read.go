package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Message statuses, derived from the recipients.
const (
	StatusPending            = "pending"
	StatusDelivered          = "delivered"
	StatusPartiallyDelivered = "partially_delivered"
	StatusBounced            = "bounced"
	StatusCanceled           = "canceled" // every recipient canceled (CancelMessage)
)

// Recipient statuses, as stored in recipients.status.
const (
	RecipientQueued     = "queued"
	RecipientDeferred   = "deferred"
	RecipientDelivered  = "delivered"
	RecipientBounced    = "bounced"
	RecipientSuppressed = "suppressed"
	RecipientCanceled   = "canceled" // DELETE /v1/messages/{id} before it was sent
)

// Message event types besides the attempt outcomes (delivered, deferred,
// bounced).
const (
	EventAccepted  = "accepted"
	EventScheduled = "scheduled"
)

// MessageView is a message as GET /v1/messages/{id} shows it.
type MessageView struct {
	ID         uuid.UUID
	MessageID  string
	From       string
	Subject    string
	Tags       []string
	Metadata   map[string]string
	Status     string // see messageStatus
	CreatedAt  time.Time
	SendAt     *time.Time
	Recipients []RecipientView
	Events     []Event // oldest first
}

// RecipientView is one recipient's state after its latest attempt.
type RecipientView struct {
	Email         string
	Status        string
	Attempts      int
	LastAttemptAt *time.Time
	NextAttemptAt *time.Time
	SMTPCode      *int
	EnhancedCode  *string
	Response      *string
	MXHost        *string
	TLSVersion    *string
	// BounceType and BounceClass classify the latest failure (nil when
	// none failed); SuppressedReason is why a suppressed recipient was on
	// the suppression list at accept. BounceAsync: the latest failure came
	// as a report after the SMTP session.
	BounceType       *string
	BounceClass      *string
	SuppressedReason *string
	BounceAsync      bool
	// TLSPolicy and TLSVerified are those of the latest attempt (nil
	// before one reached a host, or before TLS policies were recorded).
	TLSPolicy   *string
	TLSVerified *bool
	// CanceledAt is when a canceled recipient was canceled (its event).
	CanceledAt *time.Time
}

// Event is one thing that happened to a message: accepted, scheduled, an
// attempt for one recipient with its outcome as Type, or a recipient event
// after the SMTP session (a report's bounced or deferred, complained,
// suppressed).
type Event struct {
	At           time.Time
	Type         string
	Recipient    string // "" for message events
	SMTPCode     *int
	EnhancedCode *string
	Response     *string
	MXHost       *string
	// Attempt details; nil for message events.
	Attempt     *int
	MXIP        *string
	TLSVersion  *string
	TLSCipher   *string
	TLSVerified *bool
	DurationMS  *int
	// The failure's class, for an attempt or a report; nil otherwise.
	BounceType  *string
	BounceClass *string
	// Async: the event came after the SMTP session (a DSN, a complaint),
	// with the report's MTAs (RFC 3464 2.2.2 Reporting-MTA, 2.3.5
	// Remote-MTA) when it named them.
	Async        bool
	ReportingMTA *string
	RemoteMTA    *string
	// The attempt's TLS policy, the failure type when the policy refused
	// hosts, and whether "TLS-Required: No" set policies aside; nil for
	// other events.
	TLSPolicy  *string
	TLSFailure *string
	TLSOptOut  *bool
}

// EventComplained is a recipient's complaint (an ARF report); the other
// recipient event types are recipient statuses.
const EventComplained = "complained"

// The reads of GetMessage, each limited to the tenant so that no row
// of another tenant's message is ever read.
const (
	selectMessage = `SELECT message_id, from_header, subject, tags, metadata, send_at, created_at
FROM messages WHERE id = $1 AND tenant_id = $2`
	selectRecipients = `SELECT r.idx, r.email, r.status, r.attempts, r.last_attempt_at, r.next_attempt_at,
	r.smtp_code, r.enhanced_code, r.response, r.mx_host, r.tls_version,
	r.bounce_type, r.bounce_class, r.suppressed_reason, r.bounce_async, r.tls_policy, r.tls_verified,
	CASE WHEN r.status = 'canceled' THEN r.updated_at END
FROM recipients r JOIN messages m ON m.id = r.message_id
WHERE r.message_id = $1 AND m.tenant_id = $2
ORDER BY r.idx`
	// The lower bound on started_at prunes the monthly partitions older
	// than the message at run time; the hour allows for clock skew between
	// the API and worker machines.
	selectAttemptEvents = `SELECT a.rcpt_idx, a.started_at, a.outcome, a.smtp_code, a.enhanced_code,
	a.response, a.mx_host, a.attempt, host(a.mx_ip), a.tls_version, a.tls_cipher, a.tls_verified, a.duration_ms,
	a.bounce_type, a.bounce_class, a.tls_policy, a.tls_failure, a.tls_opt_out
FROM attempts a
WHERE a.message_id = $1
	AND a.started_at >= (SELECT created_at - interval '1 hour' FROM messages WHERE id = $1 AND tenant_id = $2)
ORDER BY a.started_at, a.rcpt_idx, a.attempt`
	selectRecipientEvents = `SELECT e.rcpt_idx, e.at, e.type, e.async, e.smtp_code, e.enhanced_code, e.response,
	e.reporting_mta, e.remote_mta, e.bounce_type, e.bounce_class
FROM recipient_events e JOIN messages m ON m.id = e.message_id
WHERE e.message_id = $1 AND m.tenant_id = $2
ORDER BY e.at, e.rcpt_idx`
)

// GetMessage returns a message of tenantID with its recipients and events,
// in one round trip. Another tenant's message is ErrNotFound.
func (s *Store) GetMessage(ctx context.Context, tenantID string, id uuid.UUID) (*MessageView, error) {
	v := &MessageView{ID: id}
	var emails []string // by recipient idx, for the attempt events
	var attempts []Event

	b := &pgx.Batch{}
	b.Queue(selectMessage, id, tenantID).QueryRow(func(row pgx.Row) error {
		return row.Scan(&v.MessageID, &v.From, &v.Subject, &v.Tags, &v.Metadata, &v.SendAt, &v.CreatedAt)
	})
	b.Queue(selectRecipients, id, tenantID).Query(func(rows pgx.Rows) error {
		var err error
		v.Recipients, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (RecipientView, error) {
			var r RecipientView
			var idx int
			err := row.Scan(&idx, &r.Email, &r.Status, &r.Attempts, &r.LastAttemptAt, &r.NextAttemptAt,
				&r.SMTPCode, &r.EnhancedCode, &r.Response, &r.MXHost, &r.TLSVersion,
				&r.BounceType, &r.BounceClass, &r.SuppressedReason, &r.BounceAsync, &r.TLSPolicy, &r.TLSVerified, &r.CanceledAt)
			for len(emails) <= idx {
				emails = append(emails, "")
			}
			emails[idx] = r.Email
			return r, err
		})
		return err
	})
	b.Queue(selectAttemptEvents, id, tenantID).Query(func(rows pgx.Rows) error {
		var err error
		attempts, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Event, error) {
			var e Event
			var idx int
			err := row.Scan(&idx, &e.At, &e.Type, &e.SMTPCode, &e.EnhancedCode, &e.Response, &e.MXHost,
				&e.Attempt, &e.MXIP, &e.TLSVersion, &e.TLSCipher, &e.TLSVerified, &e.DurationMS,
				&e.BounceType, &e.BounceClass, &e.TLSPolicy, &e.TLSFailure, &e.TLSOptOut)
			if err == nil && idx < len(emails) {
				e.Recipient = emails[idx]
			}
			return e, err
		})
		return err
	})
	var later []Event
	suppressedEvent := map[int]bool{}
	b.Queue(selectRecipientEvents, id, tenantID).Query(func(rows pgx.Rows) error {
		var err error
		later, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Event, error) {
			var e Event
			var idx int
			err := row.Scan(&idx, &e.At, &e.Type, &e.Async, &e.SMTPCode, &e.EnhancedCode, &e.Response,
				&e.ReportingMTA, &e.RemoteMTA, &e.BounceType, &e.BounceClass)
			if err == nil && idx < len(emails) {
				e.Recipient = emails[idx]
			}
			if e.Type == RecipientSuppressed {
				suppressedEvent[idx] = true
			}
			return e, err
		})
		return err
	})
	err := s.pool.SendBatch(ctx, b).Close()
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("get message %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get message %s: %w", id, err)
	}

	v.Status = messageStatus(v.Recipients)
	v.Events = append(v.Events, Event{At: v.CreatedAt, Type: EventAccepted})
	if v.SendAt != nil && v.SendAt.After(v.CreatedAt) {
		v.Events = append(v.Events, Event{At: v.CreatedAt, Type: EventScheduled})
	}
	// A recipient suppressed at accept has its event at the accept, unless
	// one was written for it.
	rest := attempts
	for idx, r := range v.Recipients {
		if r.CanceledAt != nil {
			rest = append(rest, Event{At: *r.CanceledAt, Type: RecipientCanceled, Recipient: r.Email})
		}
		if r.Status == RecipientSuppressed && r.Attempts == 0 && !suppressedEvent[idx] {
			rest = append(rest, Event{At: v.CreatedAt, Type: RecipientSuppressed, Recipient: r.Email,
				BounceType: r.BounceType, BounceClass: r.BounceClass})
		}
	}
	// The message's own events first, then what happened to the
	// recipients, by time (stable: the attempts' order is kept).
	rest = append(rest, later...)
	slices.SortStableFunc(rest, func(a, b Event) int { return a.At.Compare(b.At) })
	v.Events = append(v.Events, rest...)
	return v, nil
}

// messageStatus is pending while any recipient is queued or deferred;
// then delivered if all were delivered, canceled if all were canceled,
// bounced if none was delivered (suppressed and canceled count as not
// delivered), else partially_delivered.
func messageStatus(rs []RecipientView) string {
	delivered, canceled := 0, 0
	for _, r := range rs {
		switch r.Status {
		case RecipientQueued, RecipientDeferred:
			return StatusPending
		case RecipientDelivered:
			delivered++
		case RecipientCanceled:
			canceled++
		}
	}
	switch {
	case len(rs) == 0:
		return StatusPending // cannot happen: accept requires a recipient
	case delivered == len(rs):
		return StatusDelivered
	case canceled == len(rs):
		return StatusCanceled
	case delivered == 0:
		return StatusBounced
	default:
		return StatusPartiallyDelivered
	}
}
