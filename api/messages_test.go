package api_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"
)

type logAnswer struct {
	Data []struct {
		ID         string   `json:"id"`
		Status     string   `json:"status"`
		Tags       []string `json:"tags"`
		CreatedAt  string   `json:"created_at"`
		Recipients []struct {
			Email  string `json:"email"`
			Status string `json:"status"`
		} `json:"recipients"`
	} `json:"data"`
	NextCursor *string `json:"next_cursor"`
}

// sendAs sends body with key and returns the new message's id.
func (h *harness) sendAs(key string, body map[string]any) string {
	h.t.Helper()
	j, err := json.Marshal(body)
	if err != nil {
		h.t.Fatal(err)
	}
	r := h.do(http.MethodPost, "/v1/messages", key, bytes.NewReader(j), nil)
	if r.status != http.StatusAccepted {
		h.t.Fatalf("POST: %d %s", r.status, r.body)
	}
	var a sendAnswer
	r.json(h.t, &a)
	return a.ID
}

// log lists every page of the message log for query q, calling between
// after each page, and returns the ids in order.
func (h *harness) log(key string, q url.Values, between func()) []string {
	h.t.Helper()
	var ids []string
	for range 100 {
		r := h.do(http.MethodGet, "/v1/messages?"+q.Encode(), key, nil, nil)
		if r.status != http.StatusOK {
			h.t.Fatalf("GET /v1/messages?%s: %d %s", q.Encode(), r.status, r.body)
		}
		var a logAnswer
		r.json(h.t, &a)
		for _, m := range a.Data {
			ids = append(ids, m.ID)
		}
		if a.NextCursor == nil {
			return ids
		}
		q.Set("cursor", *a.NextCursor)
		if between != nil {
			between()
		}
	}
	h.t.Fatal("more than 100 pages")
	return nil
}

// TestMessageLog: the log lists the tenant's messages newest first, a
// page at a time with no repeat or gap while messages keep arriving;
// each filter selects what it names; another tenant's messages never
// appear; every response matches openapi.yaml (the harness checks).
func TestMessageLog(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	other := h.otherKey()

	before := time.Now().Add(-time.Second)
	// Oldest first; the log lists them the other way round.
	sent := []string{
		h.sendAs(h.key, with("tags", []string{"welcome"}, "to", []string{"Ann@Example.NET"})),
		h.sendAs(h.key, with("tags", []string{"receipt"})),
		h.sendAs(h.key, with("tags", []string{"welcome", "receipt"}, "to", []string{"bob@example.net", "ann@example.net"})),
		h.sendAs(h.key, with()),
		h.sendAs(h.key, with("tags", []string{"welcome"}, "to", []string{"carol@example.org"})),
	}
	// The other tenant matches every filter.
	for range 3 {
		h.sendAs(other, with("tags", []string{"welcome", "receipt"}, "to", []string{"Ann@example.net"}))
	}
	newest := slices.Clone(sent)
	slices.Reverse(newest)
	pick := func(idx ...int) []string {
		var out []string
		for i := len(sent) - 1; i >= 0; i-- {
			if slices.Contains(idx, i) {
				out = append(out, sent[i])
			}
		}
		return out
	}

	t.Run("pages while messages arrive", func(t *testing.T) {
		var arrived []string
		got := h.log(h.key, url.Values{"limit": {"2"}}, func() {
			arrived = append(arrived, h.sendAs(h.key, with()))
		})
		if !slices.Equal(got, newest) {
			t.Errorf("pages listed %v, want %v (arrived meanwhile: %v)", got, newest, arrived)
		}
		sent = append(sent, arrived...)
	})
	newest = slices.Clone(sent)
	slices.Reverse(newest)

	for _, tc := range []struct {
		name string
		q    url.Values
		want []string
	}{
		{"all", url.Values{}, newest},
		{"tag", url.Values{"tag": {"welcome"}}, pick(0, 2, 4)},
		{"recipient, domain without case", url.Values{"recipient": {"Ann@EXAMPLE.net"}}, pick(0)},
		{"recipient, second of the message", url.Values{"recipient": {"ann@example.net"}}, pick(2)},
		{"tag and recipient", url.Values{"tag": {"receipt"}, "recipient": {"bob@example.net"}}, pick(1, 2)},
		{"tag and recipient, one message", url.Values{"tag": {"welcome"}, "recipient": {"bob@example.net"}}, pick(2)},
		{"status pending (no worker runs)", url.Values{"status": {"pending"}}, newest},
		{"status delivered", url.Values{"status": {"delivered"}}, nil},
		{"since", url.Values{"since": {before.UTC().Format(time.RFC3339Nano)}}, newest},
		{"until", url.Values{"until": {before.UTC().Format(time.RFC3339Nano)}}, nil},
		{"since and until, offset", url.Values{"since": {before.Add(-time.Hour).Format(time.RFC3339)},
			"until": {time.Now().Add(time.Hour).Format(time.RFC3339)}}, newest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, limit := range []string{"1", "3", "200"} {
				q := url.Values{}
				for k, v := range tc.q {
					q[k] = v
				}
				q.Set("limit", limit)
				if got := h.log(h.key, q, nil); !slices.Equal(got, tc.want) {
					t.Errorf("limit %s: got %v, want %v", limit, got, tc.want)
				}
			}
		})
	}

	t.Run("summary", func(t *testing.T) {
		r := h.do(http.MethodGet, "/v1/messages?tag=welcome&recipient=bob@example.net", h.key, nil, nil)
		var a logAnswer
		r.json(t, &a)
		if len(a.Data) != 1 || a.NextCursor != nil {
			t.Fatalf("answer %s", r.body)
		}
		m := a.Data[0]
		if m.Status != "pending" || !slices.Equal(m.Tags, []string{"welcome", "receipt"}) || len(m.Recipients) != 2 ||
			m.Recipients[0].Email != "bob@example.net" || m.Recipients[1].Status != "queued" {
			t.Errorf("summary %s", r.body)
		}
	})

	t.Run("another tenant sees only its own", func(t *testing.T) {
		got := h.log(other, url.Values{"tag": {"welcome"}}, nil)
		if len(got) != 3 {
			t.Fatalf("other tenant's log %v, want its 3 messages", got)
		}
		for _, id := range got {
			if slices.Contains(sent, id) {
				t.Errorf("other tenant lists %s of acme", id)
			}
		}
	})
}

// TestMessageLogRefusals: each bad parameter is a 422 naming it.
func TestMessageLogRefusals(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	for _, tc := range []struct {
		query string
		field string
	}{
		{"status=sent", "status"},
		{"status=sent", "status"},
		{"recipient=not-an-address", "recipient"},
		{"recipient=Ann+%3Cann@example.net%3E", "recipient"},
		{"since=yesterday", "since"},
		{"since=2026-01-02", "since"},
		{"until=2026-01-02T10:00:00", "until"},
		{"since=2026-01-02T10:00:00Z&until=2026-01-02T10:00:00Z", "until"},
		{"limit=0", "limit"},
		{"limit=201", "limit"},
		{"limit=ten", "limit"},
		{"cursor=nope", "cursor"},
		{"cursor=MTIzLm5vdC1hLXV1aWQ", "cursor"}, // "123.not-a-uuid"
		{"tag=a&tag=b", "tag"},
	} {
		t.Run(tc.query, func(t *testing.T) {
			r := h.do(http.MethodGet, "/v1/messages?"+tc.query, h.key, nil, nil)
			if r.status != http.StatusUnprocessableEntity {
				t.Fatalf("status %d, want 422: %s", r.status, r.body)
			}
			if f := r.problem(t).fields(); !slices.Contains(f, tc.field) {
				t.Errorf("problem names %v, want %s", f, tc.field)
			}
		})
	}
	if r := h.do(http.MethodGet, "/v1/messages", "", nil, nil); r.status != http.StatusUnauthorized {
		t.Errorf("no key: %d", r.status)
	}
}
