package api_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/store"
)

// poisonLedger is the real store, but every row of tenant "evil" names a
// tenant PostgreSQL does not have (SQLSTATE 23503, as when a tenant is
// deleted between its key's check and the commit): poison that got past
// every check before the ledger.
type poisonLedger struct{ *store.Store }

func (p poisonLedger) AcceptBatch(ctx context.Context, msgs []store.NewMessage) error {
	msgs = append([]store.NewMessage(nil), msgs...)
	for i := range msgs {
		if msgs[i].TenantID == "evil" {
			msgs[i].TenantID = "evil-deleted"
		}
	}
	return p.Store.AcceptBatch(ctx, msgs)
}

// TestPoisonTenantIsolation (issue 18, item 2c): tenant "evil" sends raw
// messages with Message-ID <\xff@evil.example> while tenant "acme" sends
// valid mail at the same time. Every acme request gets 202, none 503, and
// every evil one 422 naming what was wrong, whether mail refuses the
// message or, past it, the ledger refuses its row. Before the fix evil got
// 503 (clients retry that for ever) and acme's batches failed with it.
func TestPoisonTenantIsolation(t *testing.T) {
	t.Parallel()
	raw := "From: mallory@evil.example\r\nTo: victim@example.net\r\nSubject: x\r\nMessage-ID: <\xff@evil.example>\r\n\r\nbody\r\n"
	for _, tc := range []struct {
		name   string
		ledger func(*store.Store) intake.Ledger
		raw    string
		field  string
		detail string
	}{
		{"refused by mail", nil, raw, "raw", "Message-ID: is not valid UTF-8"},
		{"refused by the ledger", func(st *store.Store) intake.Ledger { return poisonLedger{st} },
			strings.Replace(raw, "\xff", "ok", 1), "message", "no longer exists"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, harnessOptions{ledger: tc.ledger})
			_, evil, err := h.store.CreateAPIKey(context.Background(), "evil", []string{"evil.example"})
			if err != nil {
				t.Fatal(err)
			}
			poison, err := json.Marshal(map[string]any{"raw": base64.StdEncoding.EncodeToString([]byte(tc.raw))})
			if err != nil {
				t.Fatal(err)
			}
			const workers, each = 8, 25
			var (
				wg       sync.WaitGroup
				mu       sync.Mutex
				acme     = map[int]int{}
				evilSeen = map[int]int{}
			)
			for w := range 2 * workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range each {
						var r response
						if w%2 == 0 {
							r = h.do(http.MethodPost, "/v1/messages", evil, bytes.NewReader(poison), nil)
						} else {
							r = h.post(with("to", []string{fmt.Sprintf("b%d-%d@example.net", w, i)}), nil)
						}
						mu.Lock()
						if w%2 == 0 {
							evilSeen[r.status]++
						} else {
							acme[r.status]++
						}
						mu.Unlock()
						if w%2 == 0 && r.status == http.StatusUnprocessableEntity {
							p := r.problem(t)
							if len(p.Errors) == 0 || p.Errors[0].Field != tc.field || !strings.Contains(p.Errors[0].Detail, tc.detail) {
								t.Errorf("poison refused with %s; want %s: …%s…", r.body, tc.field, tc.detail)
							}
						}
					}
				}()
			}
			wg.Wait()
			t.Logf("acme %v, evil %v", acme, evilSeen)
			if acme[http.StatusAccepted] != workers*each {
				t.Errorf("acme's answers %v; want all %d 202", acme, workers*each)
			}
			if evilSeen[http.StatusUnprocessableEntity] != workers*each {
				t.Errorf("evil's answers %v; want all %d 422", evilSeen, workers*each)
			}
			if n := h.messageCount(); n != workers*each {
				t.Errorf("%d messages in the ledger, want acme's %d", n, workers*each)
			}
		})
	}
}

// TestRawHeaderRules (issue 18, item 12): the API's answers to the raw
// header rules of mail.ParseRaw. The API has no SMTPUTF8 flag: UTF-8 in
// raw headers is taken when it is valid UTF-8, refused with 422 otherwise.
// Authentication-Results fields never reach the ledger; a DKIM-Signature
// of another domain is 422.
func TestRawHeaderRules(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	const tail = "To: bob@example.net\r\nSubject: hi\r\n\r\nbody\r\n"
	for _, tc := range []struct {
		name, raw string
		status    int
		detail    string // of the 422, or what the stored body must not hold
	}{
		{"UTF-8 header", "From: Jörg <alice@example.com>\r\nSubject: Grüße\r\n" + "To: bob@example.net\r\n\r\nx\r\n", http.StatusAccepted, ""},
		{"invalid UTF-8 header", "From: J\xf6rg <alice@example.com>\r\n" + tail, http.StatusUnprocessableEntity, "From: is not valid UTF-8"},
		{"control in a header", "From: alice@example.com\r\nX-Note: a\x07\r\n" + tail, http.StatusUnprocessableEntity, "X-Note: must not contain control characters"},
		{"foreign DKIM-Signature", "DKIM-Signature: v=1; d=bank.example; s=s; bh=x; b=y\r\nFrom: alice@example.com\r\n" + tail, http.StatusUnprocessableEntity, "d=bank.example is not the domain"},
		{"Authentication-Results", "Authentication-Results: mx.example.net; dkim=pass\r\nFrom: alice@example.com\r\n" + tail, http.StatusAccepted, "Authentication-Results"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.post(map[string]any{"raw": base64.StdEncoding.EncodeToString([]byte(tc.raw))}, nil)
			if r.status != tc.status {
				t.Fatalf("POST: %d %s; want %d", r.status, r.body, tc.status)
			}
			if r.status == http.StatusUnprocessableEntity {
				p := r.problem(t)
				if len(p.Errors) == 0 || p.Errors[0].Field != "raw" || !strings.Contains(p.Errors[0].Detail, tc.detail) {
					t.Fatalf("422 %s; want raw: …%s…", r.body, tc.detail)
				}
				return
			}
			var sent sendAnswer
			r.json(t, &sent)
			var body []byte
			if err := h.db.QueryRow(context.Background(), "SELECT body FROM messages WHERE id = $1", sent.ID).Scan(&body); err != nil {
				t.Fatal(err)
			}
			if tc.detail != "" && strings.Contains(string(body), tc.detail) {
				t.Errorf("stored body keeps %s:\n%s", tc.detail, body)
			}
		})
	}
}
