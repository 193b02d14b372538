package api

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/store"
)

// The log's page size when the client names none, and the most it may
// ask for.
const (
	defaultMessagePage = 50
	maxMessagePage     = 200
)

type messageSummary struct {
	ID         string             `json:"id"`
	MessageID  string             `json:"message_id"`
	Status     string             `json:"status"`
	From       string             `json:"from"`
	Subject    string             `json:"subject"`
	Tags       []string           `json:"tags"`
	Metadata   map[string]string  `json:"metadata"`
	CreatedAt  time.Time          `json:"created_at"`
	SendAt     *time.Time         `json:"send_at"`
	Recipients []recipientSummary `json:"recipients"`
}

type recipientSummary struct {
	Email  string `json:"email"`
	Status string `json:"status"`
}

type messageList struct {
	Data       []messageSummary `json:"data"`
	NextCursor *string          `json:"next_cursor"`
}

// The log's cursor is the last message's key, "<created_at in unix
// microseconds>.<id>" (PostgreSQL keeps microseconds), base64url-encoded so
// that clients treat it as opaque.
func encodeMessageCursor(k store.MessageKey) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(k.CreatedAt.UnixMicro(), 10) + "." + k.ID.String()))
}

func decodeMessageCursor(c string) (store.MessageKey, bool) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return store.MessageKey{}, false
	}
	at, id, ok := strings.Cut(string(b), ".")
	us, err1 := strconv.ParseInt(at, 10, 64)
	u, err2 := uuid.Parse(id)
	if !ok || err1 != nil || err2 != nil {
		return store.MessageKey{}, false
	}
	return store.MessageKey{CreatedAt: time.UnixMicro(us).UTC(), ID: u}, true
}

// messageFilter reads the log's query parameters; every bad one is named.
func messageFilter(r *http.Request) (store.MessageFilter, []FieldProblem) {
	q := r.URL.Query()
	f := store.MessageFilter{Limit: defaultMessagePage, Status: q.Get("status"), Tag: q.Get("tag")}
	var bad []FieldProblem
	for name, vs := range q {
		if len(vs) > 1 {
			bad = append(bad, FieldProblem{Field: name, Detail: "given more than once"})
		}
	}
	if f.Status != "" && !slices.Contains(store.MessageStatuses(), f.Status) {
		bad = append(bad, FieldProblem{Field: "status", Detail: "not one of " + strings.Join(store.MessageStatuses(), ", ")})
	}
	if v := q.Get("recipient"); v != "" {
		a, err := mail.ParseAddress(v)
		if err == nil && a.Name != "" {
			err = errors.New("a bare address is wanted, without a display name")
		}
		if err != nil {
			bad = append(bad, FieldProblem{Field: "recipient", Detail: err.Error()})
		} else {
			f.Recipient = a.Addr
		}
	}
	for _, p := range []struct {
		name string
		to   *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		if v := q.Get(p.name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				bad = append(bad, FieldProblem{Field: p.name, Detail: "not an RFC 3339 date-time (2026-01-02T15:04:05Z)"})
				continue
			}
			*p.to = t
		}
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Until.After(f.Since) {
		bad = append(bad, FieldProblem{Field: "until", Detail: "must be after since"})
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxMessagePage {
			bad = append(bad, FieldProblem{Field: "limit", Detail: fmt.Sprintf("a whole number from 1 to %d", maxMessagePage)})
		}
		f.Limit = n
	}
	if v := q.Get("cursor"); v != "" {
		k, ok := decodeMessageCursor(v)
		if !ok {
			bad = append(bad, FieldProblem{Field: "cursor", Detail: "not a cursor this API returned"})
		}
		f.After = &k
	}
	return f, bad
}

// listMessages is the message log: the tenant's messages, newest first,
// a page at a time (keyset on created_at and id, so messages accepted
// while a client pages neither repeat nor shift what it has not read).
func (s *server) listMessages(w http.ResponseWriter, r *http.Request) {
	f, bad := messageFilter(r)
	if len(bad) > 0 {
		writeProblem(w, invalid(bad))
		return
	}
	want := f.Limit
	f.Limit++ // one more tells whether a next page exists
	list, err := s.opts.Reader.ListMessages(r.Context(), principal(r.Context()).TenantID, f)
	if err != nil {
		s.opts.Logger.ErrorContext(r.Context(), "list messages", "error", err)
		p := newProblem(kindUnavailable, "the ledger is unavailable, try again")
		p.retryAfter = 5 * time.Second
		writeProblem(w, p)
		return
	}
	out := messageList{Data: make([]messageSummary, 0, min(len(list), want))}
	for i := range list {
		if i == want {
			break
		}
		out.Data = append(out.Data, toSummary(&list[i]))
	}
	if len(list) > want {
		c := encodeMessageCursor(list[want-1].Key())
		out.NextCursor = &c
	}
	writeJSON(w, http.StatusOK, out)
}

func toSummary(m *store.MessageSummary) messageSummary {
	out := messageSummary{
		ID: m.ID.String(), MessageID: m.MessageID, Status: m.Status, From: m.From, Subject: m.Subject,
		Tags: m.Tags, Metadata: m.Metadata, CreatedAt: m.CreatedAt.UTC(), SendAt: utcPtr(m.SendAt),
		Recipients: make([]recipientSummary, len(m.Recipients)),
	}
	if out.Tags == nil {
		out.Tags = []string{}
	}
	if out.Metadata == nil {
		out.Metadata = map[string]string{}
	}
	for i, r := range m.Recipients {
		out.Recipients[i] = recipientSummary{Email: r.Email, Status: r.Status}
	}
	return out
}
