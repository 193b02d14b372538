package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// NewMessage is a message to accept. The caller generates ID (uuid v7) so
// that batches can be written with COPY and the id answered at once.
type NewMessage struct {
	ID         uuid.UUID
	TenantID   string
	APIKeyID   string // "" for mail no key sent
	Ingress    string // "api" or "smtp"
	MessageID  string // RFC 5322 Message-ID without <>
	MailFrom   string // envelope sender; "" is the null sender (RFC 5321 4.5.5)
	From       string // From header as text
	Subject    string
	Tags       []string
	Metadata   map[string]string
	Body       []byte // whole RFC 5322 message
	Needs8Bit  bool   // body has 8-bit octets: send with BODY=8BITMIME (RFC 6152)
	NeedsUTF8  bool   // needs SMTPUTF8 (RFC 6531)
	RequireTLS bool   // REQUIRETLS (RFC 8689)
	CreatedAt  time.Time
	SendAt     time.Time // zero: now
	Recipients []NewRecipient
}

// NewRecipient is one envelope recipient. Domain is derived from Email when
// empty, and stored lower case.
type NewRecipient struct {
	Email, Domain string
	// Suppressed is the reason the address is on the tenant's suppression
	// list (LookupSuppressions), "" when it is not: the recipient is then
	// recorded suppressed, bounce class "suppressed", and never sent.
	Suppressed string
}

// Idempotency is the first answer to a request with an Idempotency-Key.
type Idempotency struct {
	// TenantID owns the key; "" takes the first message's tenant.
	TenantID    string
	Key         string
	RequestHash []byte // lets the API tell a repeat from a different request reusing the key
	Status      int    // HTTP status of the first answer
	Response    []byte // JSON body of the first answer, returned byte for byte
	CreatedAt   time.Time
}

// IdempotencyTTL is how long an Idempotency-Key holds: a repeat within it
// gets the first answer; after it the key is free again.
const IdempotencyTTL = 24 * time.Hour

// maxRecipients is what recipients.idx (smallint) can number.
const maxRecipients = math.MaxInt16 + 1

// maxIdempotencyKey bounds the key; the API should refuse longer ones first.
const maxIdempotencyKey = 255

const (
	// Recipients and idempotency rows cascade; message_tags has no foreign
	// key (migration 0010) and goes through its primary key.
	deleteMessages = `WITH gone AS (DELETE FROM messages WHERE id = ANY($1) RETURNING id, tenant_id, tags, created_at)
DELETE FROM message_tags t USING gone g
WHERE t.tenant_id = g.tenant_id AND t.tag = ANY (g.tags) AND t.created_at = g.created_at AND t.message_id = g.id`
	messageExists = `SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1)`

	// claimIdempotency takes the key, or takes over one older than the TTL.
	// When a live key exists it returns no row and leaves the row locked
	// until the transaction ends.
	claimIdempotency = `INSERT INTO idempotency_keys AS k
	(tenant_id, key, request_hash, status, response, message_id, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (tenant_id, key) DO UPDATE SET
	request_hash = excluded.request_hash, status = excluded.status, response = excluded.response,
	message_id = excluded.message_id, created_at = excluded.created_at
WHERE k.created_at <= $8
RETURNING true`
	selectIdempotency = `SELECT key, request_hash, status, response, created_at
FROM idempotency_keys WHERE tenant_id = $1 AND key = $2`
	selectLiveIdempotency = selectIdempotency + ` AND created_at > $3`
	purgeIdempotency      = `DELETE FROM idempotency_keys WHERE created_at < $1`
)

// AcceptBatch writes messages and their recipients in one transaction with
// COPY, so a caller can group-commit many requests in one call: either all
// are accepted or none. Every recipient starts queued, due at SendAt (or
// CreatedAt when SendAt is zero).
func (s *Store) AcceptBatch(ctx context.Context, msgs []NewMessage) error {
	if len(msgs) == 0 {
		return nil
	}
	for i := range msgs {
		if err := msgs[i].check(); err != nil {
			return fmt.Errorf("accept batch: %w: message %d: %w", ErrRejected, i, err)
		}
	}
	var deliveries int
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) (err error) {
		deliveries, err = copyMessages(ctx, tx, msgs, time.Now())
		return err
	})
	if err != nil {
		return fmt.Errorf("accept batch: %w", rejected(err))
	}
	if deliveries > 0 {
		s.EventsAdded()
	}
	return nil
}

// AcceptIdempotent accepts msg under an Idempotency-Key in one transaction.
// If the tenant used key.Key less than IdempotencyTTL before key.CreatedAt
// it stores nothing and returns that first record; a key older than that is
// replaced. Two concurrent calls with one key store one message: the
// second waits for the first and then returns its record.
func (s *Store) AcceptIdempotent(ctx context.Context, msg NewMessage, key Idempotency) (existing *Idempotency, err error) {
	if key.CreatedAt.IsZero() {
		key.CreatedAt = msg.CreatedAt
	}
	existing, err = s.AcceptIdempotentBatch(ctx, []NewMessage{msg}, key)
	if err != nil {
		return nil, fmt.Errorf("accept idempotent: %w", err)
	}
	return existing, nil
}

// AcceptIdempotentBatch is AcceptIdempotent for a batch (POST
// /v1/messages/batch): the key and every message in one transaction, all
// or none. The key names the first message; a batch of none stores the
// key alone, so a repeat still gets the first answer.
func (s *Store) AcceptIdempotentBatch(ctx context.Context, msgs []NewMessage, key Idempotency) (existing *Idempotency, err error) {
	for i := range msgs {
		if err := msgs[i].check(); err != nil {
			return nil, fmt.Errorf("accept idempotent batch: %w: message %d: %w", ErrRejected, i, err)
		}
	}
	if key.Key == "" || len(key.Key) > maxIdempotencyKey || !storable(key.Key) {
		return nil, fmt.Errorf("accept idempotent batch: %w: key must be 1 to %d bytes of UTF-8 without NUL", ErrRejected, maxIdempotencyKey)
	}
	if key.TenantID == "" && len(msgs) > 0 {
		key.TenantID = msgs[0].TenantID
	}
	if key.TenantID == "" {
		return nil, fmt.Errorf("accept idempotent batch: %w: no tenant", ErrRejected)
	}
	now := time.Now()
	var deliveries int
	if key.CreatedAt.IsZero() {
		key.CreatedAt = now
	}
	var first *uuid.UUID
	if len(msgs) > 0 {
		first = &msgs[0].ID
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// The key goes first so a repeat writes no body; its foreign key to
		// the message is checked at commit.
		var claimed bool
		err := tx.QueryRow(ctx, claimIdempotency,
			key.TenantID, key.Key, nonNil(key.RequestHash), key.Status, nonNil(key.Response),
			first, key.CreatedAt, key.CreatedAt.Add(-IdempotencyTTL)).Scan(&claimed)
		if errors.Is(err, pgx.ErrNoRows) {
			var e Idempotency
			err := tx.QueryRow(ctx, selectIdempotency, key.TenantID, key.Key).
				Scan(&e.Key, &e.RequestHash, &e.Status, &e.Response, &e.CreatedAt)
			if err != nil {
				return fmt.Errorf("read key: %w", err)
			}
			existing = &e
			return errRepeat // roll back: nothing new is stored
		}
		if err != nil {
			return fmt.Errorf("claim key: %w", err)
		}
		if len(msgs) == 0 {
			return nil
		}
		deliveries, err = copyMessages(ctx, tx, msgs, now)
		return err
	})
	if errors.Is(err, errRepeat) {
		return existing, nil
	}
	if err != nil {
		return nil, fmt.Errorf("accept idempotent batch: %w", rejected(err))
	}
	if deliveries > 0 {
		s.EventsAdded()
	}
	return nil, nil
}

// LookupIdempotency returns the tenant's record of key if it was used less
// than IdempotencyTTL before at, or nil. It settles most repeats before
// anything is queued; AcceptIdempotent still decides a race between two.
func (s *Store) LookupIdempotency(ctx context.Context, tenant, key string, at time.Time) (*Idempotency, error) {
	if !storable(key) {
		// Never stored (AcceptIdempotent refuses it), and PostgreSQL
		// would refuse the query.
		return nil, nil
	}
	var e Idempotency
	err := s.pool.QueryRow(ctx, selectLiveIdempotency, tenant, key, at.Add(-IdempotencyTTL)).
		Scan(&e.Key, &e.RequestHash, &e.Status, &e.Response, &e.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lookup idempotency key: %w", err)
	}
	return &e, nil
}

// errRepeat rolls back AcceptIdempotent's transaction; it never escapes.
var errRepeat = errors.New("idempotent repeat")

// DeleteMessages removes messages with their recipients and Idempotency-Key
// rows in one statement. Unknown ids are ignored. (Intake no longer needs
// it to undo an accept: it queues before it records.)
func (s *Store) DeleteMessages(ctx context.Context, ids []uuid.UUID) error {
	if len(ids) == 0 {
		return nil
	}
	if _, err := s.pool.Exec(ctx, deleteMessages, ids); err != nil {
		return fmt.Errorf("delete messages: %w", err)
	}
	return nil
}

// PurgeIdempotency deletes Idempotency-Key rows created before olderThan
// (normally now minus IdempotencyTTL) and returns how many it deleted.
func (s *Store) PurgeIdempotency(ctx context.Context, olderThan time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, purgeIdempotency, olderThan)
	if err != nil {
		return 0, fmt.Errorf("purge idempotency keys: %w", err)
	}
	return tag.RowsAffected(), nil
}

// check refuses what the schema would refuse, with a clearer error, before
// a transaction is opened.
func (m *NewMessage) check() error {
	var errs []error
	if m.ID == uuid.Nil {
		errs = append(errs, errors.New("id is nil"))
	}
	if m.TenantID == "" {
		errs = append(errs, errors.New("tenant is empty"))
	}
	if m.Ingress != "api" && m.Ingress != "smtp" {
		errs = append(errs, fmt.Errorf("ingress %q is neither api nor smtp", m.Ingress))
	}
	switch n := len(m.Recipients); {
	case n == 0:
		errs = append(errs, errors.New("no recipients"))
	case n > maxRecipients:
		errs = append(errs, fmt.Errorf("%d recipients, at most %d", n, maxRecipients))
	}
	// Addresses are used as written (RCPT TO, MAIL FROM, the job's domain):
	// unlike descriptive text they cannot be cleaned, only refused.
	if !storable(m.MailFrom) {
		errs = append(errs, fmt.Errorf("envelope sender %q is not valid UTF-8 without NUL", m.MailFrom))
	}
	for i, r := range m.Recipients {
		switch {
		case r.Email == "":
			errs = append(errs, fmt.Errorf("recipient %d: email is empty", i))
		case !storable(r.Email) || !storable(r.Domain):
			errs = append(errs, fmt.Errorf("recipient %d: %q is not valid UTF-8 without NUL", i, r.Email))
		case r.Domain == "" && domainOf(r.Email) == "":
			errs = append(errs, fmt.Errorf("recipient %d: %q has no domain", i, r.Email))
		case r.Suppressed != "" && !slices.Contains(SuppressionReasons(), r.Suppressed):
			errs = append(errs, fmt.Errorf("recipient %d: suppression reason %q is not one of %v", i, r.Suppressed, SuppressionReasons()))
		}
	}
	return errors.Join(errs...)
}

// storable reports whether PostgreSQL takes s as text: valid UTF-8 and no
// NUL (else SQLSTATE 22021).
func storable(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// cleanTags and cleanMetadata make the API's tags and metadata storable
// (the API refuses bad ones; a NUL would fail the whole group commit, and
// in jsonb is SQLSTATE 22P05). Cleaning may merge two keys into one.
func cleanTags(tags []string) []string {
	out := make([]string, len(tags))
	for i, t := range tags {
		out[i] = cleanLine(t, maxTagText)
	}
	return out
}

func cleanMetadata(md map[string]string) map[string]string {
	if md == nil {
		return map[string]string{}
	}
	for k, v := range md {
		if cleanLine(k, maxTagText) != k || cleanText(v, maxTagText) != v {
			out := make(map[string]string, len(md))
			for k, v := range md {
				out[cleanLine(k, maxTagText)] = cleanText(v, maxTagText)
			}
			return out
		}
	}
	return md
}

// copyMessages writes checked messages and their recipients with two COPYs,
// and their events in the same transaction: per recipient
// message.accepted, then message.scheduled (send_at) or message.suppressed
// (on the suppression list). Accept is the hot path, so the events are a
// third COPY, their data built here from what the other two write (the
// same payload insertEvents builds from the rows), and the recipients'
// event_seq is set in their COPY; one statement fans them out to the
// subscribed endpoints. It returns the number of webhook deliveries
// written.
func copyMessages(ctx context.Context, tx pgx.Tx, msgs []NewMessage, now time.Time) (int, error) {
	nrcpt, nevents := 0, 0
	for i := range msgs {
		nrcpt += len(msgs[i].Recipients)
		nevents += len(msgs[i].Recipients)
		if !msgs[i].SendAt.IsZero() {
			nevents += len(msgs[i].Recipients)
		}
	}
	rows := make([][]any, len(msgs))
	rrows := make([][]any, 0, nrcpt)
	var trows [][]any // message_tags
	ev := newAcceptEvents(nevents)
	for i := range msgs {
		m := &msgs[i]
		created := m.CreatedAt
		if created.IsZero() {
			created = now
		}
		due, sendAt := created, any(nil)
		if !m.SendAt.IsZero() {
			due, sendAt = m.SendAt, m.SendAt
		}
		// A message whose every recipient is suppressed is complete at
		// once, and its body is not kept (as completeMessage does).
		body, completed, status := nonNil(m.Body), any(nil), StatusPending
		if m.allSuppressed() {
			body, completed, status = nil, created, StatusBounced
		}
		// The header-derived columns are descriptive (the body holds the
		// fields as sent): intake refuses bad ones, and here they are
		// cleaned so that one that slips through never fails a batch.
		messageID, tags, metadata := cleanLine(m.MessageID, maxHeaderText), cleanTags(m.Tags), cleanMetadata(m.Metadata)
		rows[i] = []any{
			m.ID, m.TenantID, nullString(m.APIKeyID), m.Ingress, messageID, m.MailFrom,
			cleanLine(m.From, maxHeaderText), cleanLine(m.Subject, maxHeaderText), tags,
			metadata, len(m.Body), body, sendAt, created, m.Needs8Bit, m.NeedsUTF8, completed, status,
		}
		for j, t := range tags {
			if !slices.Contains(tags[:j], t) { // the key is (tenant, tag, created_at, id)
				trows = append(trows, []any{m.TenantID, t, created, m.ID})
			}
		}
		common := eventCommon(m.ID, messageID, m.TenantID, tags, metadata)
		for j, r := range m.Recipients {
			d := r.Domain
			if d == "" {
				d = domainOf(r.Email)
			}
			ev.add(m, j, EventMessageAccepted, 1, common, r.Email, zeroDetail)
			if r.Suppressed != "" {
				ev.add(m, j, EventMessageSuppressed, 2, common, r.Email, suppressedDetail)
				rrows = append(rrows, []any{m.ID, int16(j), r.Email, strings.ToLower(d), nil,
					RecipientSuppressed, r.Suppressed, BounceHard, BounceSuppressed, int32(2), m.TenantID, created, NormalizeEmail(r.Email)})
				continue
			}
			seq := int32(1)
			if sendAt != nil {
				seq = 2
				ev.add(m, j, EventMessageScheduled, 2, common, r.Email, zeroDetail)
			}
			rrows = append(rrows, []any{m.ID, int16(j), r.Email, strings.ToLower(d), due,
				RecipientQueued, nil, nil, nil, seq, m.TenantID, created, NormalizeEmail(r.Email)})
		}
	}
	for i := range msgs {
		rows[i] = append(rows[i], msgs[i].RequireTLS) // messageColumns' last, require_tls
	}
	messageColumns := []string{
		"id", "tenant_id", "api_key_id", "ingress", "message_id", "mail_from", "from_header",
		"subject", "tags", "metadata", "size", "body", "send_at", "created_at", "needs_8bit", "needs_smtputf8",
		"completed_at", "status", "require_tls",
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"messages"}, messageColumns, pgx.CopyFromRows(rows)); err != nil {
		return 0, fmt.Errorf("copy messages: %w", err)
	}
	// attempts and updated_at take their defaults: 0, now().
	recipientColumns := []string{"message_id", "idx", "email", "domain", "next_attempt_at",
		"status", "suppressed_reason", "bounce_type", "bounce_class", "event_seq", "tenant_id", "created_at", "addr"}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"recipients"}, recipientColumns, pgx.CopyFromRows(rrows)); err != nil {
		return 0, fmt.Errorf("copy recipients: %w", err)
	}
	if len(trows) > 0 {
		tagColumns := []string{"tenant_id", "tag", "created_at", "message_id"}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"message_tags"}, tagColumns, pgx.CopyFromRows(trows)); err != nil {
			return 0, fmt.Errorf("copy message tags: %w", err)
		}
	}
	// xid, pos and created_at take their defaults.
	eventColumns := []string{"id", "tenant_id", "type", "message_id", "rcpt_idx", "sequence", "data"}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"events"}, eventColumns, pgx.CopyFromRows(ev.rows)); err != nil {
		return 0, fmt.Errorf("copy events: %w", err)
	}
	tag, err := tx.Exec(ctx, fanOutEvents, ev.ids, ev.types, ev.tenants, ev.msgs, ev.idx, ev.seq)
	if err != nil {
		return 0, fmt.Errorf("fan out events: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// fanOutEvents writes a webhook delivery of each event for every enabled
// endpoint of its tenant subscribed to its type (insertEvents' dl, for
// events written by COPY).
const fanOutEvents = `INSERT INTO webhook_deliveries (endpoint_id, event_id, message_id, rcpt_idx, sequence)
SELECT ep.id, u.id, u.message_id, u.rcpt_idx, u.sequence
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::smallint[], $6::int[])
	AS u(id, type, tenant_id, message_id, rcpt_idx, sequence)
JOIN webhook_endpoints ep ON ep.tenant_id = u.tenant_id AND ep.disabled_at IS NULL AND u.type = ANY (ep.events)`

// suppressedDetail is the data a recipient suppressed at accept adds.
var suppressedDetail = EventDetail{BounceType: BounceHard, BounceClass: BounceSuppressed}.json()

// acceptEvents are the event rows of one accept, and the columns of the
// fan-out.
type acceptEvents struct {
	rows    [][]any
	ids     []uuid.UUID
	types   []string
	tenants []string
	msgs    []uuid.UUID
	idx     []int16
	seq     []int32
}

func newAcceptEvents(n int) *acceptEvents {
	return &acceptEvents{rows: make([][]any, 0, n), ids: make([]uuid.UUID, 0, n), types: make([]string, 0, n),
		tenants: make([]string, 0, n), msgs: make([]uuid.UUID, 0, n), idx: make([]int16, 0, n), seq: make([]int32, 0, n)}
}

// add appends one event of recipient j of m. The id is EventID's, as the
// other writers', so the event is the same whoever writes it.
func (a *acceptEvents) add(m *NewMessage, j int, typ string, seq int32, common []byte, email string, detail []byte) {
	id := EventID(m.ID, j, typ, 0)
	// common ends with "," and detail is an object: splice the per-event
	// fields between them.
	data := make([]byte, 0, len(common)+len(email)+len(detail)+40)
	data = append(data, common...)
	data = append(data, `"recipient":`...)
	data = appendJSONString(data, email)
	data = append(data, `,"sequence":`...)
	data = strconv.AppendInt(data, int64(seq), 10)
	data = append(data, ',')
	data = append(data, detail[1:]...)
	a.rows = append(a.rows, []any{id, m.TenantID, typ, m.ID, int16(j), seq, data})
	a.ids, a.types, a.tenants = append(a.ids, id), append(a.types, typ), append(a.tenants, m.TenantID)
	a.msgs, a.idx, a.seq = append(a.msgs, m.ID), append(a.idx, int16(j)), append(a.seq, seq)
}

// eventCommon is the start of the data of every event of one message:
// `{"id":…,"message_id":…,"tenant":…,"tags":…,"metadata":…,`.
func eventCommon(id uuid.UUID, messageID, tenant string, tags []string, metadata map[string]string) []byte {
	t, _ := json.Marshal(tags)      // strings: cannot fail
	md, _ := json.Marshal(metadata) // same
	b := make([]byte, 0, 128+len(messageID)+len(t)+len(md))
	b = append(b, `{"id":"`...)
	b = append(b, id.String()...)
	b = append(b, `","message_id":`...)
	b = appendJSONString(b, messageID)
	b = append(b, `,"tenant":`...)
	b = appendJSONString(b, tenant)
	b = append(b, `,"tags":`...)
	b = append(b, t...)
	b = append(b, `,"metadata":`...)
	b = append(b, md...)
	return append(b, ',')
}

func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string: cannot fail
	return append(b, q...)
}

// allSuppressed reports whether no recipient of m is to be sent.
func (m *NewMessage) allSuppressed() bool {
	for _, r := range m.Recipients {
		if r.Suppressed == "" {
			return false
		}
	}
	return len(m.Recipients) > 0
}

// domainOf returns the part of an address after its last "@".
func domainOf(email string) string {
	i := strings.LastIndexByte(email, '@')
	if i < 0 {
		return ""
	}
	return email[i+1:]
}

// nonNil maps a nil slice to an empty one, since pgx writes nil as NULL.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// MessageExists reports whether a message with this id is in the ledger,
// for any tenant: intake asks it when an accept's commit reply was lost.
func (s *Store) MessageExists(ctx context.Context, id uuid.UUID) (bool, error) {
	var ok bool
	if err := s.pool.QueryRow(ctx, messageExists, id).Scan(&ok); err != nil {
		return false, fmt.Errorf("message exists %s: %w", id, err)
	}
	return ok, nil
}
