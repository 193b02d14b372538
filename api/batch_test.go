package api_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/budget"
	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/store"
)

type batchDoc struct {
	Data []struct {
		Status  int         `json:"status"`
		Body    *sendAnswer `json:"body"`
		Problem *problemDoc `json:"problem"`
	} `json:"data"`
}

// TestBatch: 100 messages of which 3 are bad: the 97 others are accepted
// in one ledger transaction, and the answer has a result per item in
// order, the 3 problems where the bad items were.
func TestBatch(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	bad := map[int]struct {
		msg    map[string]any
		status int
		field  string
	}{
		7:  {with("from", "mallory@evil.example"), http.StatusForbidden, "messages[7].from"},
		50: {with("to", nil), http.StatusUnprocessableEntity, "messages[50].to"},
		99: {with("subject", 42), http.StatusBadRequest, ""},
	}
	msgs := make([]map[string]any, 100)
	for i := range msgs {
		msgs[i] = with("to", []string{fmt.Sprintf("rcpt%d@example.net", i)})
		if b, ok := bad[i]; ok {
			msgs[i] = b.msg
		}
	}
	before := h.messageCount()
	body := map[string]any{"messages": msgs}
	r := h.do(http.MethodPost, "/v1/messages/batch", h.key, jsonBody(t, body), map[string]string{"Idempotency-Key": "batch-1"})
	if r.status != http.StatusMultiStatus {
		t.Fatalf("status %d, want 207: %s", r.status, r.body)
	}
	var doc batchDoc
	r.json(t, &doc)
	if len(doc.Data) != 100 {
		t.Fatalf("%d results, want 100", len(doc.Data))
	}
	var ids []uuid.UUID
	for i, d := range doc.Data {
		b, isBad := bad[i]
		switch {
		case isBad && (d.Status != b.status || d.Problem == nil || d.Body != nil):
			t.Errorf("item %d: status %d problem %+v, want a %d problem", i, d.Status, d.Problem, b.status)
		case isBad && b.field != "" && (len(d.Problem.fields()) == 0 || d.Problem.fields()[0] != b.field):
			t.Errorf("item %d: problem fields %v, want %s", i, d.Problem.fields(), b.field)
		case !isBad && (d.Status != http.StatusAccepted || d.Body == nil):
			t.Errorf("item %d: status %d, want 202", i, d.Status)
		case !isBad && d.Body.Recipients[0].Email != fmt.Sprintf("rcpt%d@example.net", i):
			t.Errorf("item %d answers for %s: out of order", i, d.Body.Recipients[0].Email)
		case !isBad:
			ids = append(ids, mustUUID(t, d.Body.ID))
		}
	}
	if got := h.messageCount() - before; got != 97 || len(ids) != 97 {
		t.Fatalf("%d messages stored, %d ids answered; want 97", got, len(ids))
	}
	// One transaction: every row carries the same xmin.
	var xids int
	if err := h.db.QueryRow(t.Context(), `SELECT count(DISTINCT xmin::text) FROM messages WHERE id = ANY($1)`, ids).Scan(&xids); err != nil {
		t.Fatal(err)
	}
	if xids != 1 {
		t.Errorf("the 97 messages were written by %d transactions, want 1", xids)
	}

	// The key covers the batch: a repeat gets the first answer and stores
	// nothing; another body under the key is a 409.
	again := h.do(http.MethodPost, "/v1/messages/batch", h.key, jsonBody(t, body), map[string]string{"Idempotency-Key": "batch-1"})
	if again.status != http.StatusMultiStatus || string(again.body) != string(r.body) || again.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("repeat: %d %q, want the first answer replayed", again.status, again.header.Get("Idempotent-Replayed"))
	}
	if got := h.messageCount() - before; got != 97 {
		t.Fatalf("after the repeat %d messages, want 97", got)
	}
	other := h.do(http.MethodPost, "/v1/messages/batch", h.key, jsonBody(t, map[string]any{"messages": msgs[:2]}), map[string]string{"Idempotency-Key": "batch-1"})
	if other.status != http.StatusConflict {
		t.Fatalf("other body under the key: %d, want 409", other.status)
	}
}

func TestBatchRefusals(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{maxBatch: 3})
	four := []map[string]any{basic(), basic(), basic(), basic()}
	tests := []struct {
		name  string
		body  any
		want  int
		field string
	}{
		{"over MAILFERRY_MAX_BATCH", map[string]any{"messages": four}, http.StatusUnprocessableEntity, "messages"},
		{"empty", map[string]any{"messages": []any{}}, http.StatusUnprocessableEntity, "messages"},
		{"no messages field", map[string]any{}, http.StatusUnprocessableEntity, "messages"},
		{"unknown field", map[string]any{"messages": four[:1], "mesages": 1}, http.StatusBadRequest, ""},
		{"not an object", `[1,2]`, http.StatusBadRequest, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := h.messageCount()
			var r response
			if s, ok := tt.body.(string); ok {
				r = h.do(http.MethodPost, "/v1/messages/batch", h.key, stringsReader(s), nil)
			} else {
				r = h.do(http.MethodPost, "/v1/messages/batch", h.key, jsonBody(t, tt.body), nil)
			}
			if r.status != tt.want {
				t.Fatalf("status %d, want %d: %s", r.status, tt.want, r.body)
			}
			if p := r.problem(t); tt.field != "" && (len(p.fields()) == 0 || p.fields()[0] != tt.field) {
				t.Errorf("fields %v, want %s", p.fields(), tt.field)
			}
			if h.messageCount() != before {
				t.Errorf("a refused batch stored messages")
			}
		})
	}
}

type cancelDoc struct {
	Status string `json:"status"`
	Events []struct {
		Type string `json:"type"`
	} `json:"events"`
	Recipients []struct {
		Email  string `json:"email"`
		Status string `json:"status"`
	} `json:"recipients"`
}

// TestCancel: a scheduled message is canceled whole, with an event per
// recipient; a second cancel is 409; another tenant's is 404.
func TestCancel(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	at := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	r := h.post(with("to", []string{"bob@example.net", "carol@example.org"}, "send_at", at), nil)
	if r.status != http.StatusAccepted {
		t.Fatalf("send: %d %s", r.status, r.body)
	}
	var sent sendAnswer
	r.json(t, &sent)

	_, globex := h.newKeyFor("globex")
	if r := h.do(http.MethodDelete, "/v1/messages/"+sent.ID, globex, nil, nil); r.status != http.StatusNotFound {
		t.Fatalf("other tenant's cancel: %d, want 404", r.status)
	}
	r = h.do(http.MethodDelete, "/v1/messages/"+sent.ID, h.key, nil, nil)
	if r.status != http.StatusOK {
		t.Fatalf("cancel: %d %s", r.status, r.body)
	}
	var doc cancelDoc
	r.json(t, &doc)
	if doc.Status != "canceled" || len(doc.Recipients) != 2 || doc.Recipients[0].Status != "canceled" || doc.Recipients[1].Status != "canceled" {
		t.Fatalf("after cancel: %+v", doc)
	}
	if n := len(doc.Events); n < 2 || doc.Events[n-1].Type != "canceled" || doc.Events[n-2].Type != "canceled" {
		t.Fatalf("events after cancel: %+v, want a canceled event per recipient last", doc.Events)
	}
	var events int
	if err := h.db.QueryRow(t.Context(), `SELECT count(*) FROM events WHERE message_id = $1 AND type = 'message.canceled'`, mustUUID(t, sent.ID)).Scan(&events); err != nil {
		t.Fatal(err)
	}
	if events != 2 {
		t.Errorf("%d message.canceled events, want 2", events)
	}
	if r := h.do(http.MethodDelete, "/v1/messages/"+sent.ID, h.key, nil, nil); r.status != http.StatusConflict {
		t.Fatalf("second cancel: %d %s, want 409", r.status, r.body)
	}
	if r := h.do(http.MethodGet, "/v1/messages?status=canceled", h.key, nil, nil); r.status != http.StatusOK || !containsString(string(r.body), sent.ID) {
		t.Fatalf("GET /v1/messages?status=canceled: %d %s, want the message", r.status, r.body)
	}
	if r := h.do(http.MethodDelete, "/v1/messages/not-a-uuid", h.key, nil, nil); r.status != http.StatusNotFound {
		t.Fatalf("cancel of a bad id: %d, want 404", r.status)
	}
}

// TestBatchAllBad: a batch whose every item is refused still answers 207
// in order, stores nothing, and its Idempotency-Key replays that answer.
func TestBatchAllBad(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	body := map[string]any{"messages": []any{with("to", nil), with("from", "x@evil.example")}}
	before := h.messageCount()
	hdr := map[string]string{"Idempotency-Key": "all-bad"}
	r := h.do(http.MethodPost, "/v1/messages/batch", h.key, jsonBody(t, body), hdr)
	var doc batchDoc
	r.json(t, &doc)
	if r.status != http.StatusMultiStatus || len(doc.Data) != 2 || doc.Data[0].Status != 422 || doc.Data[1].Status != 403 {
		t.Fatalf("all-bad batch: %d %s", r.status, r.body)
	}
	again := h.do(http.MethodPost, "/v1/messages/batch", h.key, jsonBody(t, body), hdr)
	if again.status != http.StatusMultiStatus || again.header.Get("Idempotent-Replayed") != "true" || string(again.body) != string(r.body) {
		t.Fatalf("repeat: %d %q %s", again.status, again.header.Get("Idempotent-Replayed"), again.body)
	}
	if h.messageCount() != before {
		t.Fatalf("an all-bad batch stored messages")
	}
}

// TestBatchOverBudget: a batch larger than MAILFERRY_MAX_BYTES_IN_FLIGHT
// could never be held; it is 413, not a 503 that would be retried for
// ever.
func TestBatchOverBudget(t *testing.T) {
	t.Parallel()
	b, err := budget.New(64 << 10)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, harnessOptions{budget: b})
	big := with("text", strings.Repeat("x", 40<<10))
	r := h.do(http.MethodPost, "/v1/messages/batch", h.key, jsonBody(t, map[string]any{"messages": []any{big, big}}), nil)
	if r.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want 413: %s", r.status, r.body)
	}
}

// poisonSubjectLedger makes the ledger refuse the row of every message
// whose subject is "poison" (a tenant PostgreSQL does not have: SQLSTATE
// 23503), as data that passed every check before the ledger would.
type poisonSubjectLedger struct{ *store.Store }

func (p poisonSubjectLedger) AcceptBatch(ctx context.Context, msgs []store.NewMessage) error {
	msgs = append([]store.NewMessage(nil), msgs...)
	for i := range msgs {
		if msgs[i].Subject == "poison" {
			msgs[i].TenantID = "no-such-tenant"
		}
	}
	return p.Store.AcceptBatch(ctx, msgs)
}

// TestBatchLedgerRefusesOne: items the ledger refuses for their own data
// fail alone (422 naming the message); the others are accepted.
func TestBatchLedgerRefusesOne(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{ledger: func(st *store.Store) intake.Ledger { return poisonSubjectLedger{st} }})
	msgs := make([]map[string]any, 10)
	for i := range msgs {
		msgs[i] = with("to", []string{fmt.Sprintf("r%d@example.net", i)})
		if i == 3 || i == 7 {
			msgs[i]["subject"] = "poison"
		}
	}
	before := h.messageCount()
	r := h.do(http.MethodPost, "/v1/messages/batch", h.key, jsonBody(t, map[string]any{"messages": msgs}), nil)
	var doc batchDoc
	r.json(t, &doc)
	if r.status != http.StatusMultiStatus || len(doc.Data) != 10 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	for i, d := range doc.Data {
		want := http.StatusAccepted
		if i == 3 || i == 7 {
			want = http.StatusUnprocessableEntity
		}
		if d.Status != want {
			t.Errorf("item %d: %d, want %d", i, d.Status, want)
		}
	}
	if got := h.messageCount() - before; got != 8 {
		t.Fatalf("%d stored, want 8", got)
	}
}
