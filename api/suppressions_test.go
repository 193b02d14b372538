package api_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailferry/mailferry/store"
)

type suppressionAnswer struct {
	Email     string  `json:"email"`
	Reason    string  `json:"reason"`
	MessageID *string `json:"message_id"`
	CreatedAt string  `json:"created_at"`
	ExpiresAt *string `json:"expires_at"`
}

type suppressionListAnswer struct {
	Data       []suppressionAnswer `json:"data"`
	NextCursor *string             `json:"next_cursor"`
}

func (h *harness) suppression(method, email, key string, body string) response {
	h.t.Helper()
	var r *strings.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	path := "/v1/suppressions/" + url.PathEscape(email)
	if r == nil {
		return h.do(method, path, key, nil, nil)
	}
	return h.do(method, path, key, r, nil)
}

// otherKey creates a key of another tenant.
func (h *harness) otherKey() string {
	h.t.Helper()
	_, secret, err := h.store.CreateAPIKey(context.Background(), "other", []string{"example.com"})
	if err != nil {
		h.t.Fatal(err)
	}
	return secret
}

// TestSuppressionAPI: PUT is idempotent and normalises the domain; GET
// and DELETE find the entry only for its tenant; a bad address or reason
// is a 422 naming it; DELETE then POST sends again.
func TestSuppressionAPI(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	other := h.otherKey()

	first := h.suppression(http.MethodPut, "Bob@Example.NET", h.key, `{"reason":"manual"}`)
	if first.status != http.StatusOK {
		t.Fatalf("PUT: %d %s", first.status, first.body)
	}
	var a suppressionAnswer
	first.json(t, &a)
	if a.Email != "Bob@example.net" || a.Reason != "manual" || a.MessageID != nil || a.ExpiresAt != nil {
		t.Errorf("PUT answer %+v", a)
	}
	again := h.suppression(http.MethodPut, "Bob@example.net", h.key, "")
	if again.status != http.StatusOK || string(again.body) != string(first.body) {
		t.Errorf("repeat PUT: %d %s, want the first answer %s", again.status, again.body, first.body)
	}
	if r := h.suppression(http.MethodGet, "Bob@EXAMPLE.net", h.key, ""); r.status != http.StatusOK {
		t.Errorf("GET: %d %s", r.status, r.body)
	}
	for _, m := range []string{http.MethodGet, http.MethodDelete} {
		if r := h.suppression(m, "Bob@example.net", other, ""); r.status != http.StatusNotFound {
			t.Errorf("%s with another tenant's key: %d", m, r.status)
		}
	}
	var list suppressionListAnswer
	if r := h.do(http.MethodGet, "/v1/suppressions", other, nil, nil); r.status != http.StatusOK {
		t.Errorf("other tenant's list: %d", r.status)
	} else if r.json(t, &list); len(list.Data) != 0 || list.NextCursor != nil {
		t.Errorf("other tenant's list %+v", list)
	}

	bad := []struct {
		name, method, email, body, field string
	}{
		{"not an address", http.MethodGet, "bob", "", "email"},
		{"display name", http.MethodPut, "Bob <bob@example.net>", "", "email"},
		{"client may not set hard_bounce", http.MethodPut, "bob@example.net", `{"reason":"hard_bounce"}`, "reason"},
		{"expiry in the past", http.MethodPut, "bob@example.net", `{"expires_at":"2001-01-01T00:00:00Z"}`, "expires_at"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			r := h.suppression(tt.method, tt.email, h.key, tt.body)
			if r.status != http.StatusUnprocessableEntity {
				t.Fatalf("%d %s, want 422", r.status, r.body)
			}
			if f := r.problem(t).fields(); !slices.Contains(f, tt.field) {
				t.Errorf("fields %v, want %s", f, tt.field)
			}
		})
	}

	// Suppressed: the POST is 202 with that recipient suppressed and a
	// warning; nothing is queued for it.
	before := h.depth().Ready
	r := h.post(map[string]any{"from": "alice@example.com", "to": []string{"Bob@example.net", "carol@example.org"}, "subject": "hi", "text": "x"}, nil)
	if r.status != http.StatusAccepted {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	var sent sendAnswer
	r.json(t, &sent)
	if sent.Recipients[0].Status != "suppressed" || sent.Recipients[1].Status != "queued" {
		t.Errorf("recipients %+v", sent.Recipients)
	}
	if len(sent.Warnings) != 1 || !strings.Contains(sent.Warnings[0], "Bob@example.net") || !strings.Contains(sent.Warnings[0], "manual") {
		t.Errorf("warnings %q", sent.Warnings)
	}
	if n := h.depth().Ready - before; n != 1 {
		t.Errorf("%d jobs queued, want 1 (carol's domain only)", n)
	}
	g := h.get(sent.ID, h.key)
	var state struct {
		Recipients []struct {
			Status           string  `json:"status"`
			BounceType       *string `json:"bounce_type"`
			BounceClass      *string `json:"bounce_class"`
			SuppressedReason *string `json:"suppressed_reason"`
		} `json:"recipients"`
		Events []struct {
			Type        string  `json:"type"`
			Recipient   *string `json:"recipient"`
			BounceClass *string `json:"bounce_class"`
		} `json:"events"`
	}
	g.json(t, &state)
	rc := state.Recipients[0]
	if rc.Status != "suppressed" || rc.SuppressedReason == nil || *rc.SuppressedReason != "manual" ||
		rc.BounceType == nil || *rc.BounceType != "hard" || rc.BounceClass == nil || *rc.BounceClass != "suppressed" {
		t.Errorf("suppressed recipient %+v", rc)
	}
	if state.Recipients[1].BounceClass != nil || state.Recipients[1].SuppressedReason != nil {
		t.Errorf("queued recipient %+v", state.Recipients[1])
	}
	found := false
	for _, e := range state.Events {
		found = found || e.Type == "suppressed" && e.Recipient != nil && *e.Recipient == "Bob@example.net"
	}
	if !found {
		t.Errorf("no suppressed event: %s", g.body)
	}

	// DELETE, then the same POST goes to both.
	if r := h.suppression(http.MethodDelete, "Bob@example.net", h.key, ""); r.status != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
	if r := h.suppression(http.MethodDelete, "Bob@example.net", h.key, ""); r.status != http.StatusNotFound {
		t.Errorf("second DELETE: %d", r.status)
	}
	r = h.post(map[string]any{"from": "alice@example.com", "to": []string{"Bob@example.net"}, "subject": "hi", "text": "x"}, nil)
	r.json(t, &sent)
	if r.status != http.StatusAccepted || sent.Recipients[0].Status != "queued" || len(sent.Warnings) != 0 {
		t.Errorf("POST after DELETE: %d %s", r.status, r.body)
	}
}

// TestSuppressionAPIExpiry: an entry past its expiry is neither shown nor
// suppresses; one with a future expiry does.
func TestSuppressionAPIExpiry(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	r := h.suppression(http.MethodPut, "soon@example.net", h.key, `{"reason":"manual","expires_at":"`+future+`"}`)
	var a suppressionAnswer
	r.json(t, &a)
	if r.status != http.StatusOK || a.ExpiresAt == nil {
		t.Fatalf("PUT with expiry: %d %s", r.status, r.body)
	}
	// Expire it in the ledger, as time would.
	if _, err := h.db.Exec(context.Background(), `UPDATE suppressions SET expires_at = now() - interval '1 second' WHERE email = 'soon@example.net'`); err != nil {
		t.Fatal(err)
	}
	if r := h.suppression(http.MethodGet, "soon@example.net", h.key, ""); r.status != http.StatusNotFound {
		t.Errorf("GET expired: %d", r.status)
	}
	var list suppressionListAnswer
	h.do(http.MethodGet, "/v1/suppressions", h.key, nil, nil).json(t, &list)
	if len(list.Data) != 0 {
		t.Errorf("expired entry listed: %+v", list.Data)
	}
	r = h.post(map[string]any{"from": "alice@example.com", "to": []string{"soon@example.net"}, "subject": "hi", "text": "x"}, nil)
	var sent sendAnswer
	r.json(t, &sent)
	if sent.Recipients[0].Status != "queued" {
		t.Errorf("expired entry suppressed: %s", r.body)
	}
	// A PUT over the expired entry lists it again, anew.
	if r := h.suppression(http.MethodPut, "soon@example.net", h.key, ""); r.status != http.StatusOK {
		t.Errorf("PUT over expired: %d", r.status)
	}
	if r := h.suppression(http.MethodGet, "soon@example.net", h.key, ""); r.status != http.StatusOK {
		t.Errorf("GET after re-PUT: %d %s", r.status, r.body)
	}
}

// TestSuppressionAPIPages: keyset pages cover every entry once, in order;
// the reason filter applies across pages; a bad filter or cursor is a 422
// naming it.
func TestSuppressionAPIPages(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	const n = 57
	for i := range n {
		reason := store.SuppressedManual
		if i%4 == 0 {
			reason = store.SuppressedComplaint
		}
		if _, _, err := h.store.PutSuppression(context.Background(), store.Suppression{
			TenantID: h.tenant, Email: fmt.Sprintf("u%03d@example.net", i), Reason: reason}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		reason string
		want   int
	}{{"", n}, {"complaint", 15}, {"manual", 42}, {"hard_bounce", 0}} {
		t.Run("reason="+tt.reason, func(t *testing.T) {
			var got []string
			cursor := ""
			for pages := 0; ; pages++ {
				if pages > n {
					t.Fatal("pages never end")
				}
				q := url.Values{"limit": {"10"}}
				if tt.reason != "" {
					q.Set("reason", tt.reason)
				}
				if cursor != "" {
					q.Set("cursor", cursor)
				}
				r := h.do(http.MethodGet, "/v1/suppressions?"+q.Encode(), h.key, nil, nil)
				if r.status != http.StatusOK {
					t.Fatalf("%d %s", r.status, r.body)
				}
				var list suppressionListAnswer
				r.json(t, &list)
				for _, e := range list.Data {
					if tt.reason != "" && e.Reason != tt.reason {
						t.Errorf("%s listed under %s", e.Reason, tt.reason)
					}
					got = append(got, e.Email)
				}
				if list.NextCursor == nil {
					break
				}
				if len(list.Data) != 10 {
					t.Errorf("a page of %d before the last", len(list.Data))
				}
				cursor = *list.NextCursor
			}
			if len(got) != tt.want || !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
				t.Errorf("%d entries (sorted %v), want %d once each", len(got), slices.IsSorted(got), tt.want)
			}
		})
	}
	for _, tt := range []struct{ query, field string }{
		{"reason=bored", "reason"}, {"limit=0", "limit"}, {"limit=5000", "limit"}, {"cursor=%25%25", "cursor"},
	} {
		r := h.do(http.MethodGet, "/v1/suppressions?"+tt.query, h.key, nil, nil)
		if r.status != http.StatusUnprocessableEntity {
			t.Errorf("%s: %d, want 422", tt.query, r.status)
			continue
		}
		if f := r.problem(t).fields(); !slices.Contains(f, tt.field) {
			t.Errorf("%s: fields %v, want %s", tt.query, f, tt.field)
		}
	}
}

// TestSuppressionAPIEscapedAddress: a local part holding characters a
// path must escape ("/", "%", "+") is found again by its escaped form.
func TestSuppressionAPIEscapedAddress(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	for _, email := range []string{"a/b@example.net", "100%@example.net", "x+tag@example.net", `"a b"@example.net`} {
		t.Run(email, func(t *testing.T) {
			r := h.suppression(http.MethodPut, email, h.key, "")
			var a suppressionAnswer
			r.json(t, &a)
			if r.status != http.StatusOK || a.Email != email {
				t.Fatalf("PUT: %d %s", r.status, r.body)
			}
			if r := h.suppression(http.MethodGet, email, h.key, ""); r.status != http.StatusOK {
				t.Errorf("GET: %d %s", r.status, r.body)
			}
			if r := h.suppression(http.MethodDelete, email, h.key, ""); r.status != http.StatusNoContent {
				t.Errorf("DELETE: %d %s", r.status, r.body)
			}
		})
	}
}

// TestSuppressedIdempotent: with an Idempotency-Key the first answer,
// stored with the message, already names the suppressed recipient, and a
// repeat returns it byte for byte.
func TestSuppressedIdempotent(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	if r := h.suppression(http.MethodPut, "gone@example.net", h.key, ""); r.status != http.StatusOK {
		t.Fatalf("PUT: %d %s", r.status, r.body)
	}
	body := map[string]any{"from": "alice@example.com", "to": []string{"gone@example.net"}, "subject": "hi", "text": "x"}
	first := h.post(body, map[string]string{"Idempotency-Key": "k-1"})
	var sent sendAnswer
	first.json(t, &sent)
	if first.status != http.StatusAccepted || sent.Recipients[0].Status != "suppressed" || len(sent.Warnings) != 1 {
		t.Fatalf("first: %d %s", first.status, first.body)
	}
	again := h.post(body, map[string]string{"Idempotency-Key": "k-1"})
	if again.status != http.StatusAccepted || string(again.body) != string(first.body) || again.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("repeat: %d %s, want the first answer %s", again.status, again.body, first.body)
	}
	if d := h.depth(); d.Ready != 0 {
		t.Errorf("%d jobs queued for a message with every recipient suppressed", d.Ready)
	}
}
