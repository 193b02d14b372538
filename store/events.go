package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Event types (openapi.yaml, WebhookEvent). The webhook API and the
// feed accept exactly these.
const (
	EventMessageAccepted   = "message.accepted"
	EventMessageScheduled  = "message.scheduled"
	EventMessageDelivered  = "message.delivered"
	EventMessageDeferred   = "message.deferred"
	EventMessageBounced    = "message.bounced"
	EventMessageSuppressed = "message.suppressed"
	EventMessageExpired    = "message.expired"
	EventMessageComplained = "message.complained"
	EventMessageCanceled   = "message.canceled"
	EventDomainVerified    = "domain.verified"
	EventDomainFailed      = "domain.failed"
)

// EventTypes returns every event type, in the order openapi.yaml lists them.
func EventTypes() []string {
	return []string{
		EventMessageAccepted, EventMessageScheduled, EventMessageDelivered, EventMessageDeferred,
		EventMessageBounced, EventMessageSuppressed, EventMessageExpired, EventMessageComplained,
		EventMessageCanceled, EventDomainVerified, EventDomainFailed,
	}
}

// IsEventType reports whether t is one of EventTypes.
func IsEventType(t string) bool { return slices.Contains(EventTypes(), t) }

// NewEvent is an event to record in the transaction of the change it
// describes (QueueEvents, AppendEvents).
//
// An event of a message (MessageID set) is about recipient RcptIdx: the
// statement fills in the message's Message-ID, tenant, tags and metadata
// and the recipient's address from their rows, and numbers it in the
// recipient's sequence. Its message and recipient must exist by then (in
// the same transaction is fine): otherwise the statement fails, and the
// change with it.
//
// An event of no message (domain.*) needs TenantID and carries Data as
// its payload's data.
type NewEvent struct {
	// ID is the event's id; uuid.Nil: a new uuid v7. A writer whose change
	// is safe to repeat (RecordOutcomes after a lost commit reply) passes
	// EventID(...) instead, so that a repeat stores no second event.
	ID        uuid.UUID
	Type      string
	MessageID uuid.UUID
	RcptIdx   int
	Detail    EventDetail
	// Sequence, when > 0, is used as the recipient's event number instead
	// of taking the next from recipients.event_seq; for a writer that sets
	// event_seq itself in the same transaction (accept's COPY can write
	// event_seq = 1 and queue message.accepted with Sequence 1, sparing an
	// UPDATE per recipient).
	Sequence int
	TenantID string         // events of no message only
	Data     map[string]any // events of no message only
	// When makes the event conditional on the change it describes having
	// happened in this transaction, for writers that cannot tell in Go:
	// WhenAlways (""), WhenAttempt, WhenSuppressed.
	When string
}

// Conditions of NewEvent.When.
const (
	WhenAlways = ""
	// WhenAttempt: only if the recipient's attempts equal Detail.Attempt
	// (RecordOutcomes: a stale outcome that moved no recipient adds no
	// event).
	WhenAttempt = "attempt"
	// WhenSuppressed: only if this transaction put the recipient's address
	// on its tenant's suppression list because of this message (an address
	// listed before adds no event).
	WhenSuppressed = "suppressed"
	// WhenCanceled: only if the recipient is canceled (RecordOutcomes: a
	// deferral of a recipient whose message was canceled meanwhile).
	WhenCanceled = "canceled"
)

// EventID is the id of the event typ about recipient rcpt of message msg
// at step n (the attempt number for an attempt's outcome, else 0): the
// same arguments give the same id (a name-based UUID, RFC 9562 5.5), so
// writing the event again is a no-op.
func EventID(msg uuid.UUID, rcpt int, typ string, n int) uuid.UUID {
	// The namespace scopes these name-based UUIDs to Mailferry events.
	ns := uuid.UUID{0x6d, 0x66, 0xe7, 0xf1, 0x2a, 0x0c, 0x4d, 0x8e, 0x9a, 0x57, 0x0f, 0x3b, 0x5f, 0x0d, 0x1e, 0x14}
	return uuid.NewSHA1(ns, fmt.Appendf(nil, "%s/%d/%s/%d", msg, rcpt, typ, n))
}

// EventDetail is what an attempt or a failure adds to an event's data;
// zero fields are null in the payload.
type EventDetail struct {
	Attempt      int // attempt number, 0: not about an attempt
	SMTPCode     int
	EnhancedCode string
	Response     string
	MXHost       string
	TLSVersion   string
	BounceType   string // "hard" or "soft"
	BounceClass  string
	Async        bool // the failure came as a report after the SMTP session
	// The attempt's TLS policy (none, mta-sts, dane, requiretls), whether
	// its certificate verified (nil: no host reached) and the TLS-RPT
	// failure type when the policy refused the hosts.
	TLSPolicy   string
	TLSVerified *bool
	TLSFailure  string
}

// zeroDetail is the data of an event with no detail (accepted, scheduled),
// built once: accept writes one per recipient.
var zeroDetail = []byte(`{"async":false,"attempt":null,"smtp_code":null,"enhanced_code":null,"response":null,` +
	`"mx_host":null,"tls_version":null,"bounce_type":null,"bounce_class":null,` +
	`"tls_policy":null,"tls_verified":null,"tls_failure":null}`)

func (d EventDetail) json() []byte {
	if d == (EventDetail{}) {
		return zeroDetail
	}
	v := map[string]any{
		"attempt": nil, "smtp_code": nil, "enhanced_code": nil, "response": nil, "mx_host": nil,
		"tls_version": nil, "bounce_type": nil, "bounce_class": nil, "async": d.Async,
		"tls_policy": nil, "tls_verified": nil, "tls_failure": nil,
	}
	if d.TLSVerified != nil {
		v["tls_verified"] = *d.TLSVerified
	}
	if d.Attempt > 0 {
		v["attempt"] = d.Attempt
	}
	if d.SMTPCode > 0 {
		v["smtp_code"] = d.SMTPCode
	}
	for k, s := range map[string]string{
		// Cleaned as the ledger's columns are: a NUL would fail the
		// jsonb, and with it the change (SQLSTATE 22P05).
		"enhanced_code": cleanLine(d.EnhancedCode, maxHostText), "response": cleanText(d.Response, maxReplyText),
		"mx_host": cleanLine(d.MXHost, maxHostText), "tls_version": cleanLine(d.TLSVersion, maxHostText),
		"bounce_type": d.BounceType, "bounce_class": d.BounceClass,
		"tls_policy": cleanLine(d.TLSPolicy, maxHostText), "tls_failure": cleanLine(d.TLSFailure, maxHostText),
	} {
		if s != "" {
			v[k] = s
		}
	}
	b, _ := json.Marshal(v) // strings, ints and bools only: cannot fail
	return b
}

// insertEvents writes the events of one call and fans each out to a
// webhook delivery for every enabled endpoint of its tenant subscribed to
// its type, in one statement: an event never commits without its
// deliveries. The recipients' event_seq is advanced by the events that
// take their number from it, under the row lock of that UPDATE, so two
// transactions changing one recipient number its events apart and in
// commit order. An event whose id is already stored is skipped, and takes
// no number: see EventID. It returns the number of events and of
// deliveries written.
const insertEvents = `WITH input AS (
	SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::smallint[], $5::int[], $6::text[], $7::jsonb[], $8::text[])
		WITH ORDINALITY AS i(id, type, message_id, rcpt_idx, given_seq, tenant_id, detail, cond, ord)
), fresh AS (
	SELECT * FROM input i WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = i.id)
	AND (i.cond = '' OR (i.cond = 'attempt' AND EXISTS (SELECT 1 FROM recipients r
			WHERE r.message_id = i.message_id AND r.idx = i.rcpt_idx AND r.attempts = (i.detail->>'attempt')::int))
		OR (i.cond = 'suppressed' AND EXISTS (SELECT 1 FROM recipients r JOIN messages m ON m.id = r.message_id
			JOIN suppressions s ON s.tenant_id = m.tenant_id AND s.email = ` + suppressionAddr + `
			WHERE r.message_id = i.message_id AND r.idx = i.rcpt_idx AND s.message_id = i.message_id
			AND s.created_at = now()))
		OR (i.cond = 'canceled' AND EXISTS (SELECT 1 FROM recipients r
			WHERE r.message_id = i.message_id AND r.idx = i.rcpt_idx AND r.status = 'canceled')))
), counts AS (
	SELECT message_id, rcpt_idx, count(*)::int AS n FROM fresh
	WHERE message_id IS NOT NULL AND given_seq = 0 GROUP BY message_id, rcpt_idx
), seq AS (
	UPDATE recipients r SET event_seq = r.event_seq + c.n FROM counts c
	WHERE r.message_id = c.message_id AND r.idx = c.rcpt_idx
	RETURNING r.message_id, r.idx, r.event_seq - c.n AS base
), numbered AS (
	SELECT i.*, CASE
		WHEN i.message_id IS NULL THEN NULL
		WHEN i.given_seq > 0 THEN i.given_seq
		ELSE s.base + row_number() OVER (PARTITION BY i.message_id, i.rcpt_idx, i.given_seq = 0 ORDER BY i.ord)
	END::int AS sequence
	FROM fresh i LEFT JOIN seq s ON s.message_id = i.message_id AND s.idx = i.rcpt_idx
), ev AS (
	INSERT INTO events (id, tenant_id, type, message_id, rcpt_idx, sequence, data)
	SELECT n.id, coalesce(m.tenant_id, n.tenant_id), n.type, n.message_id, n.rcpt_idx, n.sequence,
		CASE WHEN n.message_id IS NULL THEN n.detail ELSE jsonb_build_object(
			'id', m.id, 'message_id', m.message_id, 'recipient', r.email, 'tenant', m.tenant_id,
			'tags', to_jsonb(m.tags), 'metadata', m.metadata, 'sequence', n.sequence) || n.detail END
	FROM numbered n
	LEFT JOIN messages m ON m.id = n.message_id
	LEFT JOIN recipients r ON r.message_id = n.message_id AND r.idx = n.rcpt_idx
	ORDER BY n.ord
	ON CONFLICT (id) DO NOTHING
	RETURNING id, tenant_id, type, message_id, rcpt_idx, sequence
), dl AS (
	INSERT INTO webhook_deliveries (endpoint_id, event_id, message_id, rcpt_idx, sequence)
	SELECT ep.id, ev.id, ev.message_id, ev.rcpt_idx, ev.sequence
	FROM ev JOIN webhook_endpoints ep ON ep.tenant_id = ev.tenant_id AND ep.disabled_at IS NULL AND ev.type = ANY (ep.events)
	RETURNING 1
)
SELECT (SELECT count(*) FROM ev), (SELECT count(*) FROM dl)`

type eventArgs struct {
	ids, msgs []uuid.UUID
	types     []string
	idx       []int16
	seq       []int32
	tenants   []*string
	details   [][]byte
	conds     []string
}

func buildEventArgs(evs []NewEvent) (eventArgs, error) {
	a := eventArgs{
		ids: make([]uuid.UUID, len(evs)), msgs: make([]uuid.UUID, len(evs)), types: make([]string, len(evs)),
		idx: make([]int16, len(evs)), seq: make([]int32, len(evs)), tenants: make([]*string, len(evs)),
		details: make([][]byte, len(evs)), conds: make([]string, len(evs)),
	}
	var errs []error
	for i, e := range evs {
		if !IsEventType(e.Type) {
			errs = append(errs, fmt.Errorf("event %d: unknown type %q", i, e.Type))
		}
		id := e.ID
		if id == uuid.Nil {
			id = uuid.Must(uuid.NewV7())
		}
		a.ids[i], a.types[i] = id, e.Type
		switch e.When {
		case WhenAlways:
		case WhenAttempt, WhenSuppressed, WhenCanceled:
			if e.MessageID == uuid.Nil {
				errs = append(errs, fmt.Errorf("event %d: condition %q needs a message", i, e.When))
			}
			if e.When == WhenAttempt && e.Detail.Attempt <= 0 {
				errs = append(errs, fmt.Errorf("event %d: condition %q needs Detail.Attempt", i, e.When))
			}
		default:
			errs = append(errs, fmt.Errorf("event %d: unknown condition %q", i, e.When))
		}
		a.conds[i] = e.When
		if e.MessageID == uuid.Nil {
			if e.TenantID == "" {
				errs = append(errs, fmt.Errorf("event %d: no message and no tenant", i))
			}
			a.tenants[i] = &evs[i].TenantID
			b, err := json.Marshal(e.Data)
			if e.Data == nil {
				b = []byte("{}")
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("event %d: data: %w", i, err))
			}
			a.details[i] = b
			continue
		}
		if e.RcptIdx < 0 || e.RcptIdx >= maxRecipients {
			errs = append(errs, fmt.Errorf("event %d: recipient index %d out of range", i, e.RcptIdx))
		}
		a.msgs[i], a.idx[i], a.seq[i] = e.MessageID, int16(e.RcptIdx), int32(max(e.Sequence, 0))
		a.details[i] = e.Detail.json()
	}
	return a, errors.Join(errs...)
}

func (a eventArgs) args() []any {
	msgs := make([]*uuid.UUID, len(a.msgs))
	for i := range a.msgs {
		if a.msgs[i] != uuid.Nil {
			msgs[i] = &a.msgs[i]
		}
	}
	return []any{a.ids, a.types, msgs, a.idx, a.seq, a.tenants, a.details, a.conds}
}

// QueueEvents queues the INSERT of evs into b, for a writer that commits a
// change as one pgx.Batch (an implicit transaction: the events commit with
// the change or not at all). Queue it after the statements that create the
// messages and recipients the events name. added, if not nil, is called
// with the numbers of events and webhook deliveries written.
func QueueEvents(b *pgx.Batch, evs []NewEvent, added func(events, deliveries int)) error {
	if len(evs) == 0 {
		return nil
	}
	a, err := buildEventArgs(evs)
	if err != nil {
		return fmt.Errorf("queue events: %w: %w", ErrRejected, err)
	}
	b.Queue(insertEvents, a.args()...).QueryRow(func(row pgx.Row) error {
		var ne, nd int
		if err := row.Scan(&ne, &nd); err != nil {
			return err
		}
		if added != nil {
			added(ne, nd)
		}
		return nil
	})
	return nil
}

// InsertEvents writes evs in tx, for a writer that commits its change in
// an explicit transaction (AcceptBatch's COPYs). It returns the number of
// webhook deliveries written.
func InsertEvents(ctx context.Context, tx pgx.Tx, evs []NewEvent) (deliveries int, err error) {
	if len(evs) == 0 {
		return 0, nil
	}
	a, err := buildEventArgs(evs)
	if err != nil {
		return 0, fmt.Errorf("insert events: %w: %w", ErrRejected, err)
	}
	var ne int
	if err := tx.QueryRow(ctx, insertEvents, a.args()...).Scan(&ne, &deliveries); err != nil {
		return 0, fmt.Errorf("insert events: %w", err)
	}
	return deliveries, nil
}

// AppendEvents records evs on their own, in one transaction, and calls
// Options.OnEvents when any webhook delivery was written.
func (s *Store) AppendEvents(ctx context.Context, evs []NewEvent) error {
	if len(evs) == 0 {
		return nil
	}
	a, err := buildEventArgs(evs)
	if err != nil {
		return fmt.Errorf("append events: %w: %w", ErrRejected, err)
	}
	var ne, nd int
	if err := s.pool.QueryRow(ctx, insertEvents, a.args()...).Scan(&ne, &nd); err != nil {
		return fmt.Errorf("append events: %w", rejected(err))
	}
	if nd > 0 {
		s.EventsAdded()
	}
	return nil
}

// EventsAdded tells the in-process webhook sender that deliveries were
// committed (Options.OnEvents), so it claims them without waiting for its
// next poll. Writers that queue events into their own batch call it after
// the commit.
func (s *Store) EventsAdded() {
	if s.onEvents != nil {
		s.onEvents()
	}
}

// StoredEvent is an event as the feed and webhooks send it.
type StoredEvent struct {
	ID        uuid.UUID
	Type      string
	CreatedAt time.Time
	Data      json.RawMessage
	Cursor    string // position in the tenant's feed: ListEvents(After: Cursor) continues after it
}

// Payload is the JSON body of the event (openapi.yaml): {"id","type",
// "created_at","data"}. It is the same bytes every time it is built, so a
// retried webhook carries the body its signature was first made over.
func (e StoredEvent) Payload() []byte {
	b, _ := json.Marshal(struct {
		ID        string          `json:"id"`
		Type      string          `json:"type"`
		CreatedAt string          `json:"created_at"`
		Data      json.RawMessage `json:"data"`
	}{e.ID.String(), e.Type, e.CreatedAt.UTC().Format(time.RFC3339Nano), e.Data})
	return b
}

// EventQuery selects a page of a tenant's feed.
type EventQuery struct {
	After string   // a Cursor from an earlier page; "": from the oldest kept
	Types []string // nil: every type
	Limit int      // 1..1000; 0: 100
}

// ErrBadCursor is wrapped by ListEvents for an After it did not make.
var ErrBadCursor = errors.New("bad cursor")

// The feed shows an event only once every transaction that could still
// commit one before it has ended: xid < the oldest running transaction.
const selectEvents = `SELECT id, type, created_at, data, xid::text, pos FROM events
WHERE tenant_id = $1 AND (xid, pos) > ($2::text::xid8, $3::bigint)
AND xid < pg_snapshot_xmin(pg_current_snapshot())
AND ($4::text[] IS NULL OR type = ANY ($4))
ORDER BY xid, pos LIMIT $5`

// ListEvents returns the tenant's events after q.After in the order they
// committed, and the cursor to continue from (q.After when there is
// nothing new). The order is durable: an event that commits late is never
// behind a cursor already handed out.
func (s *Store) ListEvents(ctx context.Context, tenant string, q EventQuery) ([]StoredEvent, string, error) {
	xid, pos, err := parseEventCursor(q.After)
	if err != nil {
		return nil, "", fmt.Errorf("list events: %w", err)
	}
	limit := q.Limit
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, 1000)
	var types []string
	if q.Types != nil {
		types = q.Types
	}
	rows, err := s.pool.Query(ctx, selectEvents, tenant, xid, pos, types, limit)
	if err != nil {
		return nil, "", fmt.Errorf("list events: %w", err)
	}
	next := q.After
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (StoredEvent, error) {
		var e StoredEvent
		var x string
		var p int64
		if err := row.Scan(&e.ID, &e.Type, &e.CreatedAt, &e.Data, &x, &p); err != nil {
			return e, err
		}
		e.Cursor = x + "-" + strconv.FormatInt(p, 10)
		next = e.Cursor
		return e, nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("list events: %w", err)
	}
	return out, next, nil
}

func parseEventCursor(c string) (xid string, pos int64, err error) {
	if c == "" {
		return "0", 0, nil
	}
	x, p, ok := strings.Cut(c, "-")
	xv, err1 := strconv.ParseUint(x, 10, 64)
	pv, err2 := strconv.ParseInt(p, 10, 64)
	if !ok || err1 != nil || err2 != nil || pv < 0 {
		return "", 0, fmt.Errorf("%w %q", ErrBadCursor, c)
	}
	return strconv.FormatUint(xv, 10), pv, nil
}

// purgeEvents deletes a slice of old events at a time (their deliveries
// and attempts cascade), so one run never holds a long transaction.
const purgeEvents = `DELETE FROM events WHERE id IN (
	SELECT id FROM events WHERE created_at < $1 ORDER BY created_at LIMIT $2)`

// PurgeEvents deletes events created before olderThan (now minus
// MAILFERRY_EVENT_RETENTION), with their webhook deliveries, and returns
// how many events it deleted.
func (s *Store) PurgeEvents(ctx context.Context, olderThan time.Time) (int64, error) {
	const slice = 5000
	var total int64
	for {
		tag, err := s.pool.Exec(ctx, purgeEvents, olderThan, slice)
		if err != nil {
			return total, fmt.Errorf("purge events: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < slice {
			return total, nil
		}
	}
}
