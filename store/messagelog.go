package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// MaxMessagePage is the most messages ListMessages returns at once.
const MaxMessagePage = 1000

// MessageStatuses are the statuses ListMessages filters on.
func MessageStatuses() []string {
	return []string{StatusPending, StatusDelivered, StatusPartiallyDelivered, StatusBounced, StatusCanceled}
}

// MessageFilter selects a tenant's messages for ListMessages. Zero fields
// do not filter. Since is inclusive, Until exclusive, both on created_at.
type MessageFilter struct {
	Status    string
	Recipient string // compared as NormalizeEmail writes it
	Tag       string
	Since     time.Time
	Until     time.Time
	// After is the last message of the previous page (its key): the page
	// holds messages strictly older in (created_at, id) order.
	After *MessageKey
	Limit int // 1..MaxMessagePage
}

// MessageKey is a message's place in the log: newest first by created_at,
// then by id.
type MessageKey struct {
	CreatedAt time.Time
	ID        uuid.UUID
}

// MessageSummary is a message as the log lists it: no attempts, no events.
type MessageSummary struct {
	ID         uuid.UUID
	MessageID  string
	Status     string
	From       string
	Subject    string
	Tags       []string
	Metadata   map[string]string
	CreatedAt  time.Time
	SendAt     *time.Time
	Recipients []RecipientSummary
}

// RecipientSummary is a recipient in the log.
type RecipientSummary struct {
	Email  string
	Status string
}

// Key is m's place in the log, for the next page's After.
func (m *MessageSummary) Key() MessageKey { return MessageKey{CreatedAt: m.CreatedAt, ID: m.ID} }

// listMessagesQuery builds the log's query. One source drives it, the
// most selective the filter allows, each read through an index that
// starts (tenant, value, created_at DESC, id DESC): a page is one range
// scan of Limit entries, whatever the ledger's size. The other filters are
// checked on the rows it yields. Recipients are read per listed message
// by primary key.
func listMessagesQuery(f MessageFilter) (string, []any) {
	args := []any{}
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	var from, id string
	var where []string
	switch {
	case f.Tag != "":
		from, id = "message_tags k JOIN messages m ON m.id = k.message_id", "k.message_id"
		where = append(where, "k.tenant_id = "+arg(nil), "k.tag = "+arg(f.Tag))
	case f.Recipient != "":
		// A message with the address twice is listed once: DISTINCT ON
		// keeps the order (its keys come first in ORDER BY).
		from, id = "recipients k JOIN messages m ON m.id = k.message_id", "k.message_id"
		where = append(where, "k.tenant_id = "+arg(nil), "k.addr = "+arg(NormalizeEmail(f.Recipient)))
	default:
		from, id = "messages m", "m.id"
		where = append(where, "m.tenant_id = "+arg(nil))
	}
	created := "m.created_at"
	if from != "messages m" {
		created = "k.created_at"
	}
	if f.Status != "" {
		where = append(where, "m.status = "+arg(f.Status))
	}
	if f.Tag != "" && f.Recipient != "" {
		where = append(where, "EXISTS (SELECT FROM recipients k WHERE k.message_id = m.id AND "+
			"k.addr = "+arg(NormalizeEmail(f.Recipient))+")")
	}
	if !f.Since.IsZero() {
		where = append(where, created+" >= "+arg(f.Since))
	}
	if !f.Until.IsZero() {
		where = append(where, created+" < "+arg(f.Until))
	}
	if f.After != nil {
		where = append(where, "("+created+", "+id+") < ("+arg(f.After.CreatedAt)+", "+arg(f.After.ID)+")")
	}
	distinct := ""
	if f.Recipient != "" && f.Tag == "" {
		distinct = "DISTINCT ON (" + created + ", " + id + ") "
	}
	q := `SELECT ` + distinct + `m.id, m.message_id, m.status, m.from_header, m.subject, m.tags, m.metadata, m.created_at, m.send_at,
	(SELECT array_agg(r.email ORDER BY r.idx) FROM recipients r WHERE r.message_id = m.id),
	(SELECT array_agg(r.status ORDER BY r.idx) FROM recipients r WHERE r.message_id = m.id)
FROM ` + from + `
WHERE ` + strings.Join(where, " AND ") + `
ORDER BY ` + created + ` DESC, ` + id + ` DESC
LIMIT ` + arg(f.Limit)
	return q, args
}

// ListMessages returns a page of tenantID's messages, newest first, that
// match f.
func (s *Store) ListMessages(ctx context.Context, tenantID string, f MessageFilter) ([]MessageSummary, error) {
	if f.Limit < 1 || f.Limit > MaxMessagePage {
		return nil, fmt.Errorf("list messages: %w: limit %d not in 1..%d", ErrRejected, f.Limit, MaxMessagePage)
	}
	q, args := listMessagesQuery(f)
	args[0] = tenantID
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list messages: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (MessageSummary, error) {
		var m MessageSummary
		var emails, statuses []string
		err := row.Scan(&m.ID, &m.MessageID, &m.Status, &m.From, &m.Subject, &m.Tags, &m.Metadata,
			&m.CreatedAt, &m.SendAt, &emails, &statuses)
		m.Recipients = make([]RecipientSummary, len(emails))
		for i := range emails {
			m.Recipients[i] = RecipientSummary{Email: emails[i]}
			if i < len(statuses) {
				m.Recipients[i].Status = statuses[i]
			}
		}
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("list messages: %w", err)
	}
	return list, nil
}
