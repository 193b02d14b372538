package store

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Statuses of an inbound report (inbound_messages.status).
const (
	InboundPending     = "pending"
	InboundProcessed   = "processed"
	InboundUnparseable = "unparseable"
	InboundUnmatched   = "unmatched"
)

// InboundMessage is a report as the inbound listener received it.
type InboundMessage struct {
	RemoteIP netip.Addr // zero when not known
	Helo     string
	MailFrom string // "" for the null return path of a DSN (RFC 3464 2)
	RcptTo   []string
	Body     []byte
}

// InboundRow is a stored report. Body is set only by ClaimInbound.
type InboundRow struct {
	ID          uuid.UUID
	ReceivedAt  time.Time
	RemoteIP    netip.Addr
	Helo        string
	MailFrom    string
	RcptTo      []string
	Size        int
	Body        []byte
	Status      string
	Kind        string // dsn, arf or plain once parsed
	Reason      string // why unparseable or unmatched
	Tries       int    // claims so far, this one included
	ProcessedAt *time.Time
}

const (
	insertInbound = `INSERT INTO inbound_messages (id, remote_ip, helo, mail_from, rcpt_to, body)
VALUES ($1, $2, $3, $4, $5, $6)`
	// claimInbound leases the oldest pending reports nobody holds. SKIP
	// LOCKED lets processes claim at once without waiting for each other;
	// the lease keeps a row theirs after this statement's transaction.
	claimInbound = `UPDATE inbound_messages m SET lease_until = now() + $2::bigint * interval '1 microsecond', tries = m.tries + 1
WHERE m.id IN (
	SELECT id FROM inbound_messages
	WHERE status = 'pending' AND (lease_until IS NULL OR lease_until < now())
	ORDER BY received_at LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING ` + inboundColumns + `, m.body`
	inboundColumns = `m.id, m.received_at, m.remote_ip, m.helo, m.mail_from, m.rcpt_to, length(m.body), m.status,
	coalesce(m.kind, ''), coalesce(m.reason, ''), m.tries, m.processed_at`
	retryInbound = `UPDATE inbound_messages SET lease_until = now() + $2::bigint * interval '1 microsecond'
WHERE id = $1 AND status = 'pending'`
	finishInbound = `UPDATE inbound_messages SET status = $2, kind = $3, reason = $4, processed_at = now(), lease_until = NULL
WHERE id = $1`
	listInbound = `SELECT ` + inboundColumns + ` FROM inbound_messages m
WHERE ($1 = '' OR m.status = $1)
AND ($2::timestamptz IS NULL OR (m.received_at, m.id) < ($2, $3))
ORDER BY m.received_at DESC, m.id DESC LIMIT $4`
)

// SaveInbound stores a report as received and returns its id. It has
// committed when it returns: the listener answers 250 only after it, so
// a crash after the 250 loses nothing.
func (s *Store) SaveInbound(ctx context.Context, m InboundMessage) (uuid.UUID, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.Nil, fmt.Errorf("save inbound: %w", err)
	}
	var ip *netip.Addr
	if m.RemoteIP.IsValid() {
		ip = &m.RemoteIP
	}
	rcpts := make([]string, len(m.RcptTo))
	for i, r := range m.RcptTo {
		rcpts[i] = cleanLine(r, maxHostText*2)
	}
	if _, err := s.pool.Exec(ctx, insertInbound, id, ip, cleanLine(m.Helo, maxHostText),
		cleanLine(m.MailFrom, maxHostText*2), rcpts, nonNil(m.Body)); err != nil {
		return uuid.Nil, fmt.Errorf("save inbound: %w", rejected(err))
	}
	return id, nil
}

// ClaimInbound leases up to n pending reports, oldest first, for lease,
// and returns them with their bodies. A report whose lease lapses without
// FinishInbound (the process died) is claimed again; Tries counts the
// claims, so a report that kills its processor can be given up on.
func (s *Store) ClaimInbound(ctx context.Context, n int, lease time.Duration) ([]InboundRow, error) {
	if n <= 0 || lease <= 0 {
		return nil, fmt.Errorf("claim inbound: %w: n and lease must be positive", ErrRejected)
	}
	rows, err := s.pool.Query(ctx, claimInbound, n, lease.Microseconds())
	if err != nil {
		return nil, fmt.Errorf("claim inbound: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (InboundRow, error) {
		var r InboundRow
		err := scanInbound(row, &r, &r.Body)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("claim inbound: %w", err)
	}
	// UPDATE … RETURNING keeps no order: oldest first again.
	slices.SortFunc(out, func(a, b InboundRow) int {
		if c := a.ReceivedAt.Compare(b.ReceivedAt); c != 0 {
			return c
		}
		return bytes.Compare(a.ID[:], b.ID[:])
	})
	return out, nil
}

// RetryInbound keeps a claimed report pending and makes it claimable
// again after d, sooner than its lease would: for a report that must wait
// a moment (store.ErrRecipientBusy).
func (s *Store) RetryInbound(ctx context.Context, id uuid.UUID, d time.Duration) error {
	if _, err := s.pool.Exec(ctx, retryInbound, id, d.Microseconds()); err != nil {
		return fmt.Errorf("retry inbound %s: %w", id, err)
	}
	return nil
}

// FinishInbound records what became of a report: InboundProcessed,
// InboundUnparseable or InboundUnmatched, with kind (dsn, arf, plain or
// "") and reason, and releases its lease.
func (s *Store) FinishInbound(ctx context.Context, id uuid.UUID, status, kind, reason string) error {
	switch status {
	case InboundProcessed, InboundUnparseable, InboundUnmatched:
	default:
		return fmt.Errorf("finish inbound %s: %w: status %q", id, ErrRejected, status)
	}
	tag, err := s.pool.Exec(ctx, finishInbound, id, status, nullString(kind), nullString(cleanText(reason, maxReplyText)))
	if err != nil {
		return fmt.Errorf("finish inbound %s: %w", id, rejected(err))
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("finish inbound %s: %w", id, ErrNotFound)
	}
	return nil
}

// ListInbound returns up to limit reports, newest first, with status
// (all when ""), after cursor ("" for the first page), and the cursor of
// the next page ("" when this is the last).
func (s *Store) ListInbound(ctx context.Context, status, cursor string, limit int) ([]InboundRow, string, error) {
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	var at *time.Time
	var after uuid.UUID
	if cursor != "" {
		t, id, err := parseInboundCursor(cursor)
		if err != nil {
			return nil, "", fmt.Errorf("list inbound: %w: cursor: %w", ErrRejected, err)
		}
		at, after = &t, id
	}
	rows, err := s.pool.Query(ctx, listInbound, status, at, after, limit+1)
	if err != nil {
		return nil, "", fmt.Errorf("list inbound: %w", rejected(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (InboundRow, error) {
		var r InboundRow
		err := scanInbound(row, &r)
		return r, err
	})
	if err != nil {
		return nil, "", fmt.Errorf("list inbound: %w", err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		last := out[limit-1]
		next = inboundCursor(last.ReceivedAt, last.ID)
	}
	return out, next, nil
}

func scanInbound(row pgx.Row, r *InboundRow, extra ...any) error {
	var ip *netip.Addr
	var size *int32
	dest := append([]any{&r.ID, &r.ReceivedAt, &ip, &r.Helo, &r.MailFrom, &r.RcptTo, &size, &r.Status,
		&r.Kind, &r.Reason, &r.Tries, &r.ProcessedAt}, extra...)
	if err := row.Scan(dest...); err != nil {
		return err
	}
	if ip != nil {
		r.RemoteIP = *ip
	}
	if size != nil {
		r.Size = int(*size)
	}
	return nil
}

// inboundCursor is opaque to callers: the position of the last row shown.
func inboundCursor(at time.Time, id uuid.UUID) string {
	b, _ := at.UTC().MarshalBinary()
	return base64.RawURLEncoding.EncodeToString(append(id[:], b...))
}

func parseInboundCursor(c string) (time.Time, uuid.UUID, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) <= 16 {
		return time.Time{}, uuid.Nil, errors.New("not a cursor this listing gave")
	}
	var t time.Time
	if err := t.UnmarshalBinary(b[16:]); err != nil {
		return time.Time{}, uuid.Nil, errors.New("not a cursor this listing gave")
	}
	return t, uuid.UUID(b[:16]), nil
}
