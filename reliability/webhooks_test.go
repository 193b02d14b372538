package reliability

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/mailferry/mailferry/internal/devstack"
	"github.com/mailferry/mailferry/internal/wait"
)

// hooks is a webhook receiver: a real HTTP server that verifies every
// request with the Standard Webhooks library and records the events whose
// 204 it answered.
type hooks struct {
	url  string
	wh   atomic.Pointer[standardwebhooks.Webhook]
	hold atomic.Bool  // hold requests unanswered until the client goes away
	held atomic.Int32 // requests held so far
	// delay slows every answer (a slow receiver), so that deliveries pile
	// up pending.
	delay atomic.Int64

	mu      sync.Mutex
	seen    map[string]int             // event id → requests answered 204
	byMsg   map[string]map[string]bool // message id → event types answered
	invalid int                        // requests whose signature failed
}

func (s *stack) startHooks() *hooks {
	h := &hooks{seen: map[string]int{}, byMsg: map[string]map[string]bool{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if d := time.Duration(h.delay.Load()); d > 0 {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		if h.hold.Load() {
			// Mid-flight: the sender waits for an answer that never comes.
			h.held.Add(1)
			<-r.Context().Done()
			return
		}
		wh := h.wh.Load()
		if wh == nil || wh.Verify(body, r.Header) != nil {
			h.mu.Lock()
			h.invalid++
			h.mu.Unlock()
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var ev struct {
			ID, Type string
			Data     struct{ ID string }
		}
		if err := json.Unmarshal(body, &ev); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		h.mu.Lock()
		h.seen[ev.ID]++
		if h.byMsg[ev.Data.ID] == nil {
			h.byMsg[ev.Data.ID] = map[string]bool{}
		}
		h.byMsg[ev.Data.ID][ev.Type] = true
		h.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	s.t.Cleanup(srv.Close)
	h.url = srv.URL + "/hook"
	return h
}

// subscribe creates an endpoint for every event type through the API and
// gives its secret to the receiver.
func (s *stack) subscribe(h *hooks) {
	s.t.Helper()
	req, _ := http.NewRequest("POST", "http://"+s.addr()+"/v1/webhooks",
		strings.NewReader(`{"url":"`+h.url+`","events":["message.accepted","message.scheduled","message.delivered",`+
			`"message.deferred","message.bounced","message.suppressed","message.expired","message.complained"]}`))
	req.Header.Set("Authorization", "Bearer "+s.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var ep struct{ Secret string }
	if err := json.NewDecoder(resp.Body).Decode(&ep); err != nil || resp.StatusCode != http.StatusCreated {
		s.t.Fatalf("create webhook: %d %v", resp.StatusCode, err)
	}
	wh, err := standardwebhooks.NewWebhook(ep.Secret)
	if err != nil {
		s.t.Fatal(err)
	}
	h.wh.Store(wh)
}

// waitAll waits until the receiver has answered every event in the
// ledger and, for every accepted message, its message.accepted and
// message.delivered; it returns the number of repeats (a request for an
// event answered before).
func (h *hooks) waitAll(s *stack, accepted []sent, timeout time.Duration) (events, repeats int) {
	s.t.Helper()
	var missing string
	err := within(timeout, func() bool {
		rows, err := s.db.Query(s.t.Context(), `SELECT id::text FROM events`)
		if err != nil {
			missing = err.Error() // PostgreSQL may be on its way back
			return false
		}
		var ids []string
		for rows.Next() {
			var id string
			if rows.Scan(&id) == nil {
				ids = append(ids, id)
			}
		}
		rows.Close()
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, id := range ids {
			if h.seen[id] == 0 {
				missing = "event " + id
				return false
			}
		}
		for _, m := range accepted {
			if !h.byMsg[m.ID]["message.accepted"] || !h.byMsg[m.ID]["message.delivered"] {
				missing = fmt.Sprintf("message %s's events (got %v)", m.ID, h.byMsg[m.ID])
				return false
			}
		}
		// The sender records a delivery after the receiver's answer.
		var open int
		if err := s.db.QueryRow(s.t.Context(), `SELECT count(*) FROM webhook_deliveries WHERE status <> 'delivered'`).Scan(&open); err != nil || open != 0 {
			missing = fmt.Sprintf("the record of %d deliveries (%v)", open, err)
			return false
		}
		events, repeats = len(ids), 0
		for _, n := range h.seen {
			repeats += n - 1
		}
		return true
	})
	if err != nil {
		s.t.Fatalf("webhooks incomplete after %v: missing %s", timeout, missing)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.invalid != 0 {
		s.t.Errorf("%d requests failed signature verification", h.invalid)
	}
	return events, repeats
}

// TestWebhookSenderKill9: the process that sends webhooks (serve --roles
// webhooks) is killed with SIGKILL while its requests wait for answers.
// Another sender takes the deliveries over once their lease lapses: every
// event arrives, a repeat with the id it had.
func TestWebhookSenderKill9(tt *testing.T) {
	t := track(tt)
	n := size(60, 1000)
	s := newStack(t, 20*time.Millisecond)
	h := s.startHooks()
	s.serveRoles(s.httpPort, "api,worker,scheduler")
	s.subscribe(h)
	port, err := devstack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	h.hold.Store(true)
	sender := s.serveRoles(port, "webhooks")
	l := s.newLoad()
	l.run(n, 8, time.Time{}, nil)
	accepted := l.sent()
	if len(accepted) != n {
		t.Fatalf("%d of %d accepted: %s", len(accepted), n, l.summary())
	}
	wait.For(t, "webhook requests in flight", func() bool { return h.held.Load() > 0 })
	sender.kill9()
	killedAt := time.Now()
	heldAtKill := h.held.Load()
	h.hold.Store(false)
	s.waitFinal(ids(accepted), size(time.Minute, 5*time.Minute))

	s.serveRoles(port, "webhooks")
	events, repeats := h.waitAll(s, accepted, size(2*time.Minute, 5*time.Minute))
	t.Logf("sender killed with %d requests in flight; all %d events of %d messages at the receiver %v later (after the 30 s lease), %d repeats",
		heldAtKill, events, len(accepted), time.Since(killedAt).Round(100*time.Millisecond), repeats)
}

// TestWebhooksPostgresRestart: PostgreSQL stops while mail is accepted,
// delivered and its events sent, and comes back. No event is lost: every
// accepted message's accepted and delivered events arrive, and every
// event in the ledger.
func TestWebhooksPostgresRestart(tt *testing.T) {
	t := track(tt)
	n := size(150, 2000)
	outage := size(5*time.Second, 30*time.Second)
	s := newStack(t, 50*time.Millisecond)
	h := s.startHooks()
	srv := s.serve()
	s.subscribe(h)
	// A slow receiver: deliveries pile up pending, and some are in flight
	// when PostgreSQL stops (their records fail; they are sent again).
	h.delay.Store(int64(100 * time.Millisecond))
	l := s.newLoad()
	posted := make(chan struct{})
	go func() { defer close(posted); l.run(n, 4, time.Time{}, nil) }()
	wait.For(t, "webhook deliveries piling up", func() bool {
		return s.ledgerCount(`SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'`) >= 20
	})
	pending := s.ledgerCount(`SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'`)
	s.stopPostgres()
	<-time.After(outage) // the outage itself
	s.startPostgres()
	h.delay.Store(0)
	<-posted
	// More mail once PostgreSQL is back, so events flow on after it.
	after := s.newLoad()
	after.run(n/2, 4, time.Time{}, nil)
	accepted := append(l.sent(), after.sent()...)
	s.waitFinal(ids(accepted), size(2*time.Minute, 5*time.Minute))
	events, repeats := h.waitAll(s, accepted, size(2*time.Minute, 5*time.Minute))
	t.Logf("PostgreSQL down %v with %d webhook deliveries pending: %d messages accepted (during the run: %s; after: %s), all %d events at the receiver, %d repeats",
		outage, pending, len(accepted), l.summary(), after.summary(), events, repeats)
	if len(l.sent()) == 0 || len(after.sent()) == 0 || pending == 0 {
		t.Errorf("no mail accepted before or after the outage, or no webhook pending at it: the test broke nothing")
	}
	if _, err := srv.sigterm(time.Minute); err != nil {
		t.Errorf("serve after SIGTERM: %v", err)
	}
}
