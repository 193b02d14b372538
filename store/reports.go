package store

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Types of an asynchronous report for one recipient (recipient_events.type),
// with EventComplained (an ARF complaint).
const (
	EventBounced  = RecipientBounced  // a DSN with action failed
	EventDeferred = RecipientDeferred // a DSN with action delayed: an event, no change of state
)

// AsyncReport is what a DSN or a complaint says about one recipient of one
// of our messages.
type AsyncReport struct {
	InboundID    uuid.UUID // the inbound_messages row it came in; uuid.Nil if none
	MessageID    uuid.UUID
	RcptIdx      int
	Type         string // EventBounced, EventDeferred or EventComplained
	SMTPCode     int    // the remote server's reply code, 0 if none
	EnhancedCode string // the DSN's Status, "5.1.1"
	Response     string // the diagnostic code, or the feedback type of a complaint
	ReportingMTA string
	RemoteMTA    string
	BounceType   string // hard or soft; "" for a complaint
	BounceClass  string
	// Suppress adds the address to its tenant's suppression list
	// (hard_bounce) for a bounce; a complaint always does (complaint).
	Suppress bool
}

// AsyncResult is what ApplyReport did.
type AsyncResult struct {
	Applied    bool   // false: this report was applied before (a repeat) or the recipient was never sent (suppressed)
	Email      string // the recipient's address
	Suppressed bool   // a new suppression entry was added (not one already there)
}

// ReportMessage is one of our messages as a report is matched against it.
type ReportMessage struct {
	ID         uuid.UUID
	TenantID   string
	MessageID  string // RFC 5322 Message-ID without <>
	Recipients []ReportRecipient
}

// ReportRecipient is one envelope recipient of a ReportMessage.
type ReportRecipient struct {
	Idx    int
	Email  string
	Status string
}

const (
	selectReportMessage    = `SELECT tenant_id, message_id FROM messages WHERE id = $1`
	selectReportRecipients = `SELECT idx, email, status FROM recipients WHERE message_id = $1 ORDER BY idx`
	selectByMessageID      = `SELECT id FROM messages WHERE message_id = $1 ORDER BY created_at DESC LIMIT 10`

	// bounceAsync makes a recipient bounced whatever it was, but
	// suppressed or canceled (never sent, so nothing to bounce): from delivered (a
	// DSN after a 250), and from queued or deferred, its next attempt and
	// lease cleared so that it is not sent again; a worker holding the
	// lease then records nothing (RecordOutcomes moves no final
	// recipient).
	bounceAsync = `UPDATE recipients SET status = 'bounced', bounce_async = true, smtp_code = $3, enhanced_code = $4,
	response = $5, bounce_type = $6, bounce_class = $7, next_attempt_at = NULL, lease_owner = NULL, lease_until = NULL,
	updated_at = now()
WHERE message_id = $1 AND idx = $2 AND status NOT IN ('suppressed', 'canceled')
AND NOT (status IN ('queued', 'deferred') AND lease_owner IS NOT NULL AND lease_until > now())
RETURNING email`
	// recipientLeased: a worker holds the recipient, in an SMTP
	// transaction or recording its outcome.
	recipientLeased = `SELECT EXISTS (SELECT FROM recipients WHERE message_id = $1 AND idx = $2
	AND status IN ('queued', 'deferred') AND lease_owner IS NOT NULL AND lease_until > now())`
	selectRecipientEmail = `SELECT email FROM recipients WHERE message_id = $1 AND idx = $2 AND status NOT IN ('suppressed', 'canceled')`
	insertRecipientEvent = `INSERT INTO recipient_events (message_id, rcpt_idx, type, async, smtp_code, enhanced_code,
	response, reporting_mta, remote_mta, bounce_type, bounce_class, inbound_id)
VALUES ($1, $2, $3, true, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (inbound_id, message_id, rcpt_idx, type) WHERE inbound_id IS NOT NULL DO NOTHING
RETURNING true`
	insertSuppression = `INSERT INTO suppressions (tenant_id, email, reason, message_id)
SELECT tenant_id, $2, $3, id FROM messages WHERE id = $1
ON CONFLICT (tenant_id, email) DO NOTHING
RETURNING true`
)

// LoadReportMessage reads a message's tenant and recipients, to match a
// report's addresses against. ErrNotFound: no such message.
func (s *Store) LoadReportMessage(ctx context.Context, id uuid.UUID) (*ReportMessage, error) {
	m := &ReportMessage{ID: id}
	b := &pgx.Batch{}
	b.Queue(selectReportMessage, id).QueryRow(func(row pgx.Row) error {
		return row.Scan(&m.TenantID, &m.MessageID)
	})
	b.Queue(selectReportRecipients, id).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var r ReportRecipient
			var idx int16
			if err := rows.Scan(&idx, &r.Email, &r.Status); err != nil {
				return err
			}
			r.Idx = int(idx)
			m.Recipients = append(m.Recipients, r)
		}
		return rows.Err()
	})
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("load report message %s: %w", id, ErrNotFound)
		}
		return nil, fmt.Errorf("load report message %s: %w", id, err)
	}
	return m, nil
}

// FindMessages returns the ids of our messages with an RFC 5322
// Message-ID (without <>), newest first: how a complaint without a return
// path is traced back.
func (s *Store) FindMessages(ctx context.Context, messageID string) ([]uuid.UUID, error) {
	messageID = strings.Trim(strings.TrimSpace(messageID), "<>")
	if messageID == "" {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, selectByMessageID, cleanLine(messageID, maxHeaderText))
	if err != nil {
		return nil, fmt.Errorf("find messages: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, fmt.Errorf("find messages: %w", err)
	}
	return ids, nil
}

// ApplyReport applies one report about one recipient in one transaction:
// a bounce makes the recipient bounced asynchronously (even from
// delivered), a delay adds an event only, a complaint adds a complained
// event; each records a recipient_events row and, when it suppresses, a
// suppression entry for the message's tenant. Applying the same report
// (InboundID) again changes nothing.
func (s *Store) ApplyReport(ctx context.Context, r AsyncReport) (AsyncResult, error) {
	var res AsyncResult
	switch r.Type {
	case EventBounced, EventDeferred, EventComplained:
	default:
		return res, fmt.Errorf("apply report %s: %w: type %q", r.MessageID, ErrRejected, r.Type)
	}
	if r.RcptIdx < 0 || r.RcptIdx > 32767 {
		return res, fmt.Errorf("apply report %s: %w: recipient %d", r.MessageID, ErrRejected, r.RcptIdx)
	}
	var inbound *uuid.UUID
	if r.InboundID != uuid.Nil {
		inbound = &r.InboundID
	}
	var deliveries int
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Serialised with RecordOutcomes, whose completion check must see
		// this recipient's new state.
		if _, err := tx.Exec(ctx, lockMessage, messageLockClass, messageLockKey(r.MessageID)); err != nil {
			return err
		}
		var inserted bool
		err := tx.QueryRow(ctx, insertRecipientEvent, r.MessageID, int16(r.RcptIdx), r.Type, nullInt(r.SMTPCode),
			nullString(cleanLine(r.EnhancedCode, maxHostText)), nullString(cleanText(r.Response, maxReplyText)),
			nullString(cleanLine(r.ReportingMTA, maxHostText)), nullString(cleanLine(r.RemoteMTA, maxHostText)),
			nullString(r.BounceType), nullString(r.BounceClass), inbound).Scan(&inserted)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // applied before: the event is there
		}
		if err != nil {
			return err
		}
		if r.Type == EventBounced {
			err = tx.QueryRow(ctx, bounceAsync, r.MessageID, int16(r.RcptIdx), nullInt(r.SMTPCode),
				nullString(cleanLine(r.EnhancedCode, maxHostText)), nullString(cleanText(r.Response, maxReplyText)),
				nullString(r.BounceType), nullString(r.BounceClass)).Scan(&res.Email)
		} else {
			err = tx.QueryRow(ctx, selectRecipientEmail, r.MessageID, int16(r.RcptIdx)).Scan(&res.Email)
		}
		if errors.Is(err, pgx.ErrNoRows) && r.Type == EventBounced {
			var leased bool
			if err := tx.QueryRow(ctx, recipientLeased, r.MessageID, int16(r.RcptIdx)).Scan(&leased); err != nil {
				return err
			}
			if leased {
				return ErrRecipientBusy
			}
		}
		if errors.Is(err, pgx.ErrNoRows) {
			return errNeverSent
		}
		if err != nil {
			return err
		}
		res.Applied = true
		reason := ""
		switch {
		case r.Type == EventComplained:
			reason = SuppressedComplaint
		case r.Type == EventBounced && r.Suppress:
			reason = SuppressedHardBounce
		}
		if reason != "" {
			err := tx.QueryRow(ctx, insertSuppression, r.MessageID, NormalizeEmail(res.Email), reason).Scan(&res.Suppressed)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
		}
		var err2 error
		if deliveries, err2 = InsertEvents(ctx, tx, reportEvents(r)); err2 != nil {
			return err2
		}
		if r.Type == EventBounced {
			if _, err := tx.Exec(ctx, completeMessage, r.MessageID); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, restatusMessage, r.MessageID); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, ErrRecipientBusy) {
		return AsyncResult{}, fmt.Errorf("apply report %s: recipient %d: %w", r.MessageID, r.RcptIdx, err)
	}
	if errors.Is(err, errNeverSent) {
		// No such recipient, or one that was suppressed: the transaction
		// rolled back, event included.
		return AsyncResult{}, nil
	}
	if err != nil {
		return AsyncResult{}, fmt.Errorf("apply report %s: %w", r.MessageID, rejected(err))
	}
	if res.Suppressed {
		reason := SuppressedHardBounce
		if r.Type == EventComplained {
			reason = SuppressedComplaint
		}
		s.metrics.suppressed(reason, 1)
	}
	if deliveries > 0 {
		s.EventsAdded()
	}
	return res, nil
}

// reportEvents are the events of an applied report, with "async": true:
// message.bounced (the recipient is now bounced), message.deferred (a
// delayed DSN: no change of state) or message.complained; then
// message.suppressed if the report put the address on the list.
func reportEvents(r AsyncReport) []NewEvent {
	typ := map[string]string{EventBounced: EventMessageBounced, EventDeferred: EventMessageDeferred,
		EventComplained: EventMessageComplained}[r.Type]
	d := EventDetail{SMTPCode: r.SMTPCode, EnhancedCode: r.EnhancedCode, Response: r.Response, MXHost: r.RemoteMTA,
		BounceType: r.BounceType, BounceClass: r.BounceClass, Async: true}
	evs := []NewEvent{{Type: typ, MessageID: r.MessageID, RcptIdx: r.RcptIdx, Detail: d}}
	if r.Type == EventComplained || (r.Type == EventBounced && r.Suppress) {
		evs = append(evs, NewEvent{Type: EventMessageSuppressed, MessageID: r.MessageID, RcptIdx: r.RcptIdx,
			Detail: d, When: WhenSuppressed})
	}
	return evs
}

// ErrRecipientBusy: a worker holds the recipient's lease, so its attempt
// is not recorded yet. A DSN can come back faster than the worker records
// the 250 it answers; bounced now, the recipient would lose that attempt
// (RecordOutcomes moves no final recipient). Apply the report again once
// the lease is gone.
var ErrRecipientBusy = errors.New("recipient attempt in progress")

// errNeverSent rolls ApplyReport's transaction back: the report names a
// recipient we never sent to.
var errNeverSent = errors.New("recipient never sent")

func nullInt(n int) any {
	if n == 0 {
		return nil
	}
	return n
}
