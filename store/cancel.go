package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

const (
	// selectTenantMessage also notes the request: a recipient in flight
	// now that later defers is canceled then (cancelDeferred).
	selectTenantMessage = `UPDATE messages SET cancel_requested_at = coalesce(cancel_requested_at, now())
WHERE id = $1 AND tenant_id = $2 RETURNING true`
	// cancelRecipients cancels what no attempt holds: a recipient under a
	// live lease (store.TakeLease) is in an SMTP transaction now, which
	// finishes and whose outcome stands. A worker takes its lease only on
	// a recipient not canceled (takeLease), and this statement skips a
	// leased one; both lock the row, so of a cancel and a lease racing
	// one wins and the other sees it. A canceled recipient is therefore
	// never sent after it was canceled.
	cancelRecipients = `UPDATE recipients SET status = 'canceled', next_attempt_at = NULL,
	lease_owner = NULL, lease_until = NULL, updated_at = now()
WHERE message_id = $1 AND status IN ('queued', 'deferred')
AND (lease_owner IS NULL OR lease_until < now())
RETURNING idx`
	countInFlight = `SELECT count(*) FROM recipients WHERE message_id = $1 AND status IN ('queued', 'deferred')`
	// cancelDeferred (RecordOutcomes) cancels the recipients just deferred
	// of a message whose cancel came while they were in flight: the
	// attempt's outcome stands, and it was "not yet"; there is no later.
	cancelDeferred = `UPDATE recipients SET status = 'canceled', next_attempt_at = NULL, updated_at = now()
WHERE message_id = $1 AND idx = ANY($2) AND status = 'deferred' AND lease_owner IS NULL
AND EXISTS (SELECT 1 FROM messages WHERE id = $1 AND cancel_requested_at IS NOT NULL)`
)

// Canceled is what CancelMessage did.
type Canceled struct {
	Recipients []int // indexes of the recipients canceled now
	// InFlight counts the recipients an attempt holds: its outcome stands,
	// but should it defer, the recipient is canceled then.
	InFlight int
}

// CancelMessage cancels tenant's message id: every recipient still queued
// or deferred (scheduled ones included) that no attempt holds becomes
// canceled, with a message.canceled event each, in one transaction that
// also completes the message when nothing is left to send (status
// canceled when every recipient is). A recipient an attempt holds is left
// to it; if the attempt defers, RecordOutcomes cancels the recipient
// then. It takes the same per-message lock as RecordOutcomes. A message
// of another tenant is ErrNotFound.
func (s *Store) CancelMessage(ctx context.Context, tenant string, id uuid.UUID) (Canceled, error) {
	var c Canceled
	var deliveries int
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, lockMessage, messageLockClass, messageLockKey(id)); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		var ok bool
		if err := tx.QueryRow(ctx, selectTenantMessage, id, tenant).Scan(&ok); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return ErrNotFound
			}
			return fmt.Errorf("read message: %w", err)
		}
		rows, _ := tx.Query(ctx, cancelRecipients, id)
		idxs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (int, error) {
			var idx int16
			err := r.Scan(&idx)
			return int(idx), err
		})
		if err != nil {
			return fmt.Errorf("cancel recipients: %w", err)
		}
		c.Recipients = idxs
		if err := tx.QueryRow(ctx, countInFlight, id).Scan(&c.InFlight); err != nil {
			return fmt.Errorf("count recipients in flight: %w", err)
		}
		evs := make([]NewEvent, len(idxs))
		for i, idx := range idxs {
			evs[i] = NewEvent{ID: EventID(id, idx, EventMessageCanceled, 0), Type: EventMessageCanceled,
				MessageID: id, RcptIdx: idx}
		}
		if deliveries, err = InsertEvents(ctx, tx, evs); err != nil {
			return err
		}
		if len(idxs) > 0 {
			if _, err := tx.Exec(ctx, completeMessage, id); err != nil {
				return fmt.Errorf("complete message: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return Canceled{}, fmt.Errorf("cancel message %s: %w", id, err)
	}
	if deliveries > 0 {
		s.EventsAdded()
	}
	return c, nil
}
