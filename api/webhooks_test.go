package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/store"
)

type endpointAnswer struct {
	ID                      string   `json:"id"`
	URL                     string   `json:"url"`
	Events                  []string `json:"events"`
	Description             string   `json:"description"`
	Enabled                 bool     `json:"enabled"`
	DisabledReason          *string  `json:"disabled_reason"`
	PreviousSecretExpiresAt *string  `json:"previous_secret_expires_at"`
	Secret                  string   `json:"secret"`
}

func (h *harness) call(method, path string, body any) response {
	h.t.Helper()
	var r *bytes.Reader
	if body != nil {
		var b []byte
		if s, ok := body.(string); ok {
			b = []byte(s)
		} else {
			var err error
			if b, err = json.Marshal(body); err != nil {
				h.t.Fatal(err)
			}
		}
		r = bytes.NewReader(b)
	}
	if r == nil {
		return h.do(method, path, h.key, nil, nil)
	}
	return h.do(method, path, h.key, r, nil)
}

func TestWebhookEndpoints(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	_, otherKey, err := h.store.CreateAPIKey(t.Context(), "globex", []string{"example.org"})
	if err != nil {
		t.Fatal(err)
	}

	r := h.call(http.MethodPost, "/v1/webhooks", map[string]any{
		"url": "https://hooks.example.com/mailferry", "events": []string{"message.delivered", "message.bounced"}, "description": "prod"})
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var ep endpointAnswer
	r.json(t, &ep)
	if !strings.HasPrefix(ep.Secret, "whsec_") || !ep.Enabled || ep.Description != "prod" || len(ep.Events) != 2 {
		t.Errorf("created %+v", ep)
	}

	t.Run("refusals name the field", func(t *testing.T) {
		for _, c := range []struct {
			name   string
			body   any
			fields []string
		}{
			{"http URL", map[string]any{"url": "http://hooks.example.com/", "events": []string{"message.delivered"}}, []string{"url"}},
			{"private address", map[string]any{"url": "https://10.0.0.1/", "events": []string{"message.delivered"}}, []string{"url"}},
			{"loopback", map[string]any{"url": "https://127.0.0.1:8080/", "events": []string{"message.delivered"}}, []string{"url"}},
			{"unknown type", map[string]any{"url": "https://h.example/", "events": []string{"message.delivered", "message.opened"}}, []string{"events[1]"}},
			{"no events", map[string]any{"url": "https://h.example/"}, []string{"events"}},
			{"no url", map[string]any{"events": []string{"message.delivered"}}, []string{"url"}},
		} {
			t.Run(c.name, func(t *testing.T) {
				r := h.call(http.MethodPost, "/v1/webhooks", c.body)
				if r.status != http.StatusUnprocessableEntity {
					t.Fatalf("status %d, want 422: %s", r.status, r.body)
				}
				if got := r.problem(t).fields(); !slices.Equal(got, c.fields) {
					t.Errorf("fields %v, want %v", got, c.fields)
				}
			})
		}
		if r := h.call(http.MethodPost, "/v1/webhooks", `{"url":"https://h.example/","events":["message.delivered"],"secret":"x"}`); r.status != http.StatusBadRequest {
			t.Errorf("unknown field: %d", r.status)
		}
	})

	t.Run("list, get, and other tenants see nothing", func(t *testing.T) {
		var list struct{ Data []endpointAnswer }
		h.call(http.MethodGet, "/v1/webhooks", nil).json(t, &list)
		if len(list.Data) != 1 || list.Data[0].ID != ep.ID || list.Data[0].Secret != "" {
			t.Errorf("list %+v", list.Data)
		}
		if r := h.call(http.MethodGet, "/v1/webhooks/"+ep.ID, nil); r.status != http.StatusOK {
			t.Errorf("get: %d", r.status)
		}
		if r := h.do(http.MethodGet, "/v1/webhooks/"+ep.ID, otherKey, nil, nil); r.status != http.StatusNotFound {
			t.Errorf("another tenant's get: %d", r.status)
		}
		if r := h.call(http.MethodGet, "/v1/webhooks/not-an-id", nil); r.status != http.StatusNotFound {
			t.Errorf("bad id: %d", r.status)
		}
	})

	t.Run("patch", func(t *testing.T) {
		var got endpointAnswer
		r := h.call(http.MethodPatch, "/v1/webhooks/"+ep.ID, map[string]any{"events": []string{"message.accepted"}, "enabled": false})
		r.json(t, &got)
		if r.status != http.StatusOK || got.Enabled || got.DisabledReason == nil || !slices.Equal(got.Events, []string{"message.accepted"}) || got.URL != ep.URL {
			t.Errorf("patch: %d %s", r.status, r.body)
		}
		r = h.call(http.MethodPatch, "/v1/webhooks/"+ep.ID, map[string]any{"enabled": true, "events": store.EventTypes()})
		r.json(t, &got)
		if !got.Enabled || got.DisabledReason != nil {
			t.Errorf("enable: %s", r.body)
		}
		if r := h.call(http.MethodPatch, "/v1/webhooks/"+ep.ID, map[string]any{"url": "ftp://x"}); r.status != http.StatusUnprocessableEntity {
			t.Errorf("bad URL patch: %d", r.status)
		}
	})

	t.Run("rotate", func(t *testing.T) {
		var got endpointAnswer
		r := h.call(http.MethodPost, "/v1/webhooks/"+ep.ID+"/rotate-secret", nil)
		r.json(t, &got)
		if r.status != http.StatusOK || got.Secret == ep.Secret || !strings.HasPrefix(got.Secret, "whsec_") || got.PreviousSecretExpiresAt == nil {
			t.Errorf("rotate: %d %s", r.status, r.body)
		}
	})

	t.Run("delete", func(t *testing.T) {
		r := h.call(http.MethodPost, "/v1/webhooks", map[string]any{"url": "https://gone.example/", "events": []string{"domain.verified"}})
		var e endpointAnswer
		r.json(t, &e)
		if r := h.call(http.MethodDelete, "/v1/webhooks/"+e.ID, nil); r.status != http.StatusOK {
			t.Errorf("delete: %d", r.status)
		}
		if r := h.call(http.MethodDelete, "/v1/webhooks/"+e.ID, nil); r.status != http.StatusNotFound {
			t.Errorf("second delete: %d", r.status)
		}
	})
}

func TestEventsFeedDeliveriesAndReplay(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	var ep endpointAnswer
	h.call(http.MethodPost, "/v1/webhooks", map[string]any{"url": "https://hooks.example.com/", "events": store.EventTypes()}).json(t, &ep)
	epID := mustUUID(t, ep.ID)

	sent := h.post(map[string]any{"from": "alice@example.com", "to": []string{"bob@example.net", "carol@example.net"}, "subject": "Hi", "text": "Hello",
		"tags": []string{"welcome"}, "metadata": map[string]string{"user_id": "7"}}, nil)
	var ans sendAnswer
	sent.json(t, &ans)
	msg := mustUUID(t, ans.ID)
	// Accept wrote message.accepted for both recipients; a worker's record
	// of recipient 0's delivery writes message.delivered.
	if _, err := h.store.RecordOutcomes(t.Context(), msg, []store.Outcome{{Attempt: store.Attempt{Recipient: 0, Attempt: 1,
		StartedAt: time.Now(), SMTPCode: 250, EnhancedCode: "2.0.0", Response: "2.0.0 ok", MXHost: "mx.example.net",
		TLSVersion: "TLS1.3", Outcome: store.RecipientDelivered}}}); err != nil {
		t.Fatal(err)
	}

	type feedPage struct {
		Data []struct {
			ID   string         `json:"id"`
			Type string         `json:"type"`
			Data map[string]any `json:"data"`
		} `json:"data"`
		NextCursor *string `json:"next_cursor"`
	}
	var page feedPage
	wait.For(t, "3 events in the feed", func() bool {
		h.call(http.MethodGet, "/v1/events", nil).json(t, &page)
		return len(page.Data) == 3
	})
	d := page.Data[2].Data
	if page.Data[2].Type != "message.delivered" || d["recipient"] != "bob@example.net" || d["id"] != ans.ID || d["message_id"] != ans.MessageID ||
		d["smtp_code"] != 250.0 || d["sequence"] != 2.0 || d["tenant"] != "acme" {
		t.Errorf("delivered event %v", page.Data[2])
	}
	var p2 feedPage
	h.call(http.MethodGet, "/v1/events?after="+url.QueryEscape(*page.NextCursor), nil).json(t, &p2)
	if len(p2.Data) != 0 || p2.NextCursor == nil || *p2.NextCursor != *page.NextCursor {
		t.Errorf("after the last cursor: %+v", p2)
	}
	var p3 feedPage
	h.call(http.MethodGet, "/v1/events?types=message.delivered&limit=5", nil).json(t, &p3)
	if len(p3.Data) != 1 {
		t.Errorf("types filter: %d events", len(p3.Data))
	}
	for _, q := range []string{"types=message.opened", "after=zzz", "limit=0"} {
		if r := h.call(http.MethodGet, "/v1/events?"+q, nil); r.status != http.StatusUnprocessableEntity {
			t.Errorf("%s: %d", q, r.status)
		}
	}

	// Two attempts of one delivery make the history.
	claimed, err := h.store.ClaimWebhookDeliveries(t.Context(), store.WebhookClaim{Owner: "t", Lease: time.Minute, Limit: 1, PerEndpoint: 1})
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim: %v", err)
	}
	for i, code := range []int{500, 200} {
		res := store.WebhookResult{DeliveryID: claimed[0].ID, Owner: "t", Attempt: i + 1, StartedAt: time.Now(), StatusCode: code,
			Latency: 12 * time.Millisecond, Outcome: store.WebhookDelivered}
		if code == 500 {
			res.Outcome, res.Error, res.NextAttemptAt = store.WebhookRetry, "answered 500", time.Now()
		}
		if _, err := h.store.RecordWebhookAttempt(t.Context(), res); err != nil {
			t.Fatal(err)
		}
		if code == 500 {
			if claimed, err = h.store.ClaimWebhookDeliveries(t.Context(), store.WebhookClaim{Owner: "t", Lease: time.Minute, Limit: 1, PerEndpoint: 1}); err != nil || len(claimed) != 1 {
				t.Fatalf("claim again: %v", err)
			}
		}
	}
	type attemptsPage struct {
		Data []struct {
			StatusCode *int    `json:"status_code"`
			Error      *string `json:"error"`
			LatencyMS  int     `json:"latency_ms"`
			Outcome    string  `json:"outcome"`
		} `json:"data"`
		NextCursor *string `json:"next_cursor"`
	}
	var a1, a2 attemptsPage
	h.call(http.MethodGet, "/v1/webhooks/"+ep.ID+"/deliveries?limit=1", nil).json(t, &a1)
	if len(a1.Data) != 1 || a1.Data[0].Outcome != "delivered" || a1.NextCursor == nil {
		t.Fatalf("page 1 %+v", a1)
	}
	h.call(http.MethodGet, "/v1/webhooks/"+ep.ID+"/deliveries?cursor="+*a1.NextCursor, nil).json(t, &a2)
	if len(a2.Data) != 1 || *a2.Data[0].StatusCode != 500 || *a2.Data[0].Error != "answered 500" || a2.Data[0].LatencyMS != 12 || a2.NextCursor != nil {
		t.Errorf("page 2 %+v", a2)
	}

	t.Run("replay", func(t *testing.T) {
		count := func() int {
			var n int
			if err := h.db.QueryRow(t.Context(), `SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1`, epID).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		before := count()
		r := h.call(http.MethodPost, "/v1/webhooks/"+ep.ID+"/replay", map[string]any{"event_ids": []string{page.Data[1].ID}})
		if r.status != http.StatusAccepted || count() != before+1 {
			t.Errorf("replay ids: %d %s; %d new deliveries", r.status, r.body, count()-before)
		}
		r = h.call(http.MethodPost, "/v1/webhooks/"+ep.ID+"/replay", map[string]any{"since": time.Now().Add(-time.Hour).Format(time.RFC3339)})
		var got struct{ Replayed int }
		r.json(t, &got)
		if r.status != http.StatusAccepted || got.Replayed != 3 {
			t.Errorf("replay range: %d %s", r.status, r.body)
		}
		unknown := uuid.Must(uuid.NewV7()).String()
		r = h.call(http.MethodPost, "/v1/webhooks/"+ep.ID+"/replay", map[string]any{"event_ids": []string{page.Data[0].ID, unknown}})
		if r.status != http.StatusUnprocessableEntity || !slices.Equal(r.problem(t).fields(), []string{"event_ids[1]"}) {
			t.Errorf("unknown id: %d %s", r.status, r.body)
		}
		for _, body := range []any{map[string]any{}, map[string]any{"since": time.Now().Format(time.RFC3339), "until": time.Now().Add(-time.Hour).Format(time.RFC3339)},
			map[string]any{"event_ids": []string{"nope"}}} {
			if r := h.call(http.MethodPost, "/v1/webhooks/"+ep.ID+"/replay", body); r.status != http.StatusUnprocessableEntity {
				t.Errorf("replay %v: %d", body, r.status)
			}
		}
		if r := h.call(http.MethodPost, fmt.Sprintf("/v1/webhooks/%s/replay", uuid.Must(uuid.NewV7())), map[string]any{"event_ids": []string{page.Data[0].ID}}); r.status != http.StatusNotFound {
			t.Errorf("replay to an unknown endpoint: %d", r.status)
		}
	})
}
