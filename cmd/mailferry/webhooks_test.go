package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/store"
)

// TestServeSendsWebhooks: `serve` runs the webhooks role by default; an
// endpoint created through the API receives an event, signed with the
// secret the API showed, and the metrics count it. The event is appended
// by the test, as accept and delivery will once they write the outbox.
func TestServeSendsWebhooks(t *testing.T) {
	c := newCLI(t)
	c.env = append(c.env, "MAILFERRY_ALLOW_PRIVATE_DESTINATIONS=true")
	var dbURL string
	for _, kv := range c.env {
		if v, ok := strings.CutPrefix(kv, "MAILFERRY_DATABASE_URL="); ok {
			dbURL = v
		}
	}
	if _, stderr, err := c.run("migrate"); err != nil {
		t.Fatalf("migrate: %v %s", err, stderr)
	}
	stdout, stderr, err := c.run("keys", "create", "--tenant", "acme", "--domain", "example.com")
	if err != nil {
		t.Fatalf("keys create: %v %s", err, stderr)
	}
	key := strings.TrimSpace(stdout)

	var mu sync.Mutex
	type got struct {
		header http.Header
		body   []byte
	}
	var received []got
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		received = append(received, got{r.Header.Clone(), b})
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(rc.Close)

	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	srv := c.start(t, addr) // every role
	base := "http://" + addr
	status, b := request(t, "POST", base+"/v1/webhooks", key, `{"url":"`+rc.URL+`/hook","events":["message.accepted","message.delivered"]}`)
	if status != http.StatusCreated {
		t.Fatalf("create webhook: %d %s", status, b)
	}
	var ep struct{ Secret string }
	if err := json.Unmarshal(b, &ep); err != nil {
		t.Fatal(err)
	}
	status, b = request(t, "POST", base+"/v1/messages", key, `{"from":"alice@example.com","to":["bob@example.net"],"subject":"Hi","text":"Hello"}`)
	if status != http.StatusAccepted {
		t.Fatalf("send: %d %s", status, b)
	}
	var sent struct{ ID string }
	if err := json.Unmarshal(b, &sent); err != nil {
		t.Fatal(err)
	}

	st, err := store.Open(t.Context(), store.Options{URL: dbURL})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.AppendEvents(t.Context(), []store.NewEvent{{Type: store.EventMessageAccepted, MessageID: uuid.MustParse(sent.ID), RcptIdx: 0}}); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the webhook at the receiver", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(received) > 0
	})
	mu.Lock()
	r := received[0]
	mu.Unlock()
	wh, err := standardwebhooks.NewWebhook(ep.Secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := wh.Verify(r.body, r.header); err != nil {
		t.Errorf("signature: %v", err)
	}
	var ev struct {
		Type string
		Data struct{ ID, Recipient string }
	}
	if err := json.Unmarshal(r.body, &ev); err != nil || ev.Type != "message.accepted" || ev.Data.ID != sent.ID || ev.Data.Recipient != "bob@example.net" {
		t.Errorf("webhook body %s (%v)", r.body, err)
	}
	wait.For(t, "the delivery counted in /metrics", func() bool {
		_, m := request(t, "GET", base+"/metrics", "", "")
		return strings.Contains(string(m), `mailferry_webhook_deliveries_total{result="delivered"} 1`)
	})
	srv.stop(t)
}
