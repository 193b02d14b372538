package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/wait"
)

// TestServeSendsWebhooks, end to end: `serve` runs the webhooks role by
// default; a message POSTed to it and delivered to an SMTP server reaches
// an endpoint created through the API as message.accepted, then
// message.delivered, each signed with the secret the API showed (verified
// with the Standard Webhooks library), and the metrics count them.
func TestServeSendsWebhooks(t *testing.T) {
	c := newCLI(t)
	dns := testmx.StartDNS(t) // replaces newCLI's empty one
	port, lns := testmx.Listen(t, "127.0.0.2")
	testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
	dns.MX("example.net", 10, "mx.example.net")
	dns.A("mx.example.net", "127.0.0.2")
	c.env = append(c.env, "MAILFERRY_ALLOW_PRIVATE_DESTINATIONS=true", "MAILFERRY_DNS_SERVER="+dns.Addr(),
		fmt.Sprintf("MAILFERRY_SMTP_PORT=%d", port))
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

	wait.For(t, "two webhooks at the receiver", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(received) >= 2
	})
	wh, err := standardwebhooks.NewWebhook(ep.Secret)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	recs := slices.Clone(received)
	mu.Unlock()
	var types []string
	for _, r := range recs {
		if err := wh.Verify(r.body, r.header); err != nil {
			t.Errorf("signature: %v", err)
		}
		var ev struct {
			ID, Type string
			Data     struct {
				ID, Recipient string
				Sequence      int
				SMTPCode      *int `json:"smtp_code"`
			}
		}
		if err := json.Unmarshal(r.body, &ev); err != nil || ev.Data.ID != sent.ID || ev.Data.Recipient != "bob@example.net" ||
			r.header.Get("webhook-id") != ev.ID {
			t.Errorf("webhook body %s (%v)", r.body, err)
		}
		if ev.Type == "message.delivered" && (ev.Data.SMTPCode == nil || *ev.Data.SMTPCode != 250 || ev.Data.Sequence != 2) {
			t.Errorf("delivered event %s", r.body)
		}
		types = append(types, ev.Type)
	}
	if !slices.Equal(types, []string{"message.accepted", "message.delivered"}) {
		t.Errorf("events %v, want accepted then delivered", types)
	}
	wait.For(t, "the delivery counted in /metrics", func() bool {
		_, m := request(t, "GET", base+"/metrics", "", "")
		return strings.Contains(string(m), `mailferry_webhook_deliveries_total{result="delivered"} 2`)
	})
	srv.stop(t)
}
