package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/mailferry/mailferry/internal/wait"
)

// acceptedMessage accepts a message of k's tenant to n recipients, then
// deletes the events the accept wrote (and restarts the recipients'
// numbering), so that the tests of the outbox's primitives below start
// from an empty feed. events_wiring_test.go tests what accept writes.
func acceptedMessage(t *testing.T, s *Store, k APIKey, n int) NewMessage {
	t.Helper()
	m := testMessage(k, n)
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatalf("accept: %v", err)
	}
	if _, err := s.pool.Exec(t.Context(), `DELETE FROM events WHERE message_id = $1`, m.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(t.Context(), `UPDATE recipients SET event_seq = 0 WHERE message_id = $1`, m.ID); err != nil {
		t.Fatal(err)
	}
	return m
}

// feed waits until the tenant's feed after q.After holds n events and
// returns them: transactions of tests running in parallel on the same
// server hold the feed back until they end (see selectEvents).
func feed(t *testing.T, s *Store, tenant string, q EventQuery, n int) ([]StoredEvent, string) {
	t.Helper()
	var evs []StoredEvent
	var cur string
	wait.For(t, fmt.Sprintf("%d events in the feed", n), func() bool {
		var err error
		evs, cur, err = s.ListEvents(t.Context(), tenant, q)
		if err != nil {
			t.Fatal(err)
		}
		return len(evs) >= n
	})
	if len(evs) != n {
		t.Fatalf("%d events in the feed, want %d", len(evs), n)
	}
	return evs, cur
}

func newEndpoint(t *testing.T, s *Store, tenant string, types ...string) (WebhookEndpoint, []byte) {
	t.Helper()
	e, secret, err := s.CreateWebhookEndpoint(t.Context(), NewWebhookEndpoint{TenantID: tenant, URL: "https://hooks.example/x", Events: types})
	if err != nil {
		t.Fatalf("create endpoint: %v", err)
	}
	return e, secret
}

func TestEventsAppendNumbersAndFansOut(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	other := newTenant(t, s, "other")
	m := acceptedMessage(t, s, k, 2)
	ep, _ := newEndpoint(t, s, "acme", EventMessageDelivered)
	all, _ := newEndpoint(t, s, "acme", EventTypes()...)
	newEndpoint(t, s, "other", EventTypes()...) // another tenant's: gets nothing
	disabled, _ := newEndpoint(t, s, "acme", EventTypes()...)
	off := false
	if _, err := s.UpdateWebhookEndpoint(t.Context(), "acme", disabled.ID, WebhookEndpointPatch{Enabled: &off}); err != nil {
		t.Fatal(err)
	}
	woke := 0
	s.onEvents = func() { woke++ }

	err := s.AppendEvents(t.Context(), []NewEvent{
		{Type: EventMessageAccepted, MessageID: m.ID, RcptIdx: 0},
		{Type: EventMessageAccepted, MessageID: m.ID, RcptIdx: 1},
		{Type: EventMessageDelivered, MessageID: m.ID, RcptIdx: 0, Detail: EventDetail{Attempt: 1, SMTPCode: 250,
			EnhancedCode: "2.0.0", Response: "ok", MXHost: "mx.dest0.example", TLSVersion: "TLS1.3"}},
	})
	if err != nil {
		t.Fatalf("append: %v", err)
	}
	if woke != 1 {
		t.Errorf("OnEvents called %d times, want 1", woke)
	}
	evs, _ := feed(t, s, "acme", EventQuery{}, 3)
	type data struct {
		ID, MessageID, Recipient, Tenant string
		Tags                             []string
		Metadata                         map[string]string
		Attempt                          *int
		SMTPCode                         *int `json:"smtp_code"`
		Sequence                         int
		Async                            bool
	}
	var got []data
	for _, e := range evs {
		var d data
		if err := json.Unmarshal(e.Data, &d); err != nil {
			t.Fatal(err)
		}
		got = append(got, d)
	}
	if got[0].Recipient != m.Recipients[0].Email || got[0].Tenant != "acme" || got[0].ID != m.ID.String() ||
		!slices.Equal(got[0].Tags, m.Tags) || got[0].Metadata["user_id"] != "42" || got[0].Attempt != nil {
		t.Errorf("accepted event data = %+v", got[0])
	}
	if seqs := []int{got[0].Sequence, got[1].Sequence, got[2].Sequence}; !slices.Equal(seqs, []int{1, 1, 2}) {
		t.Errorf("sequences %v, want [1 1 2] (per recipient)", seqs)
	}
	if got[2].Attempt == nil || *got[2].Attempt != 1 || got[2].SMTPCode == nil || *got[2].SMTPCode != 250 {
		t.Errorf("delivered event data = %+v", got[2])
	}
	var p map[string]any
	if err := json.Unmarshal(evs[2].Payload(), &p); err != nil {
		t.Fatal(err)
	}
	if p["id"] != evs[2].ID.String() || p["type"] != EventMessageDelivered || p["created_at"] == nil || p["data"] == nil {
		t.Errorf("payload %s", evs[2].Payload())
	}
	for _, c := range []struct {
		ep   uuid.UUID
		want int
	}{{ep.ID, 1}, {all.ID, 3}, {disabled.ID, 0}} {
		if n := count(t, s, `SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1`, c.ep); n != c.want {
			t.Errorf("endpoint %s has %d deliveries, want %d", c.ep, n, c.want)
		}
	}
	if n := count(t, s, `SELECT count(*) FROM webhook_deliveries`); n != 4 {
		t.Errorf("%d deliveries in all, want 4", n)
	}
	if evs, _, _ := s.ListEvents(t.Context(), other.TenantID, EventQuery{}); len(evs) != 0 {
		t.Errorf("other tenant sees %d events", len(evs))
	}
}

func TestEventsAreWrittenWithTheirChangeOrNotAtAll(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := acceptedMessage(t, s, k, 2)
	newEndpoint(t, s, "acme", EventTypes()...)

	t.Run("unknown recipient fails the statement", func(t *testing.T) {
		err := s.AppendEvents(t.Context(), []NewEvent{
			{Type: EventMessageAccepted, MessageID: m.ID, RcptIdx: 0},
			{Type: EventMessageAccepted, MessageID: m.ID, RcptIdx: 7},
		})
		if !errors.Is(err, ErrRejected) {
			t.Errorf("append = %v, want ErrRejected", err)
		}
		if n := count(t, s, `SELECT count(*) FROM events`); n != 0 {
			t.Errorf("%d events written", n)
		}
	})
	t.Run("a failing change in the batch takes its events with it", func(t *testing.T) {
		b := &pgx.Batch{}
		b.Queue(`UPDATE recipients SET status = 'delivered' WHERE message_id = $1 AND idx = 0`, m.ID)
		if err := QueueEvents(b, []NewEvent{{Type: EventMessageDelivered, MessageID: m.ID, RcptIdx: 0}}, nil); err != nil {
			t.Fatal(err)
		}
		b.Queue(`SELECT 1/0`)
		if err := s.pool.SendBatch(t.Context(), b).Close(); err == nil {
			t.Fatal("batch succeeded")
		}
		if n := count(t, s, `SELECT count(*) FROM events`) + count(t, s, `SELECT count(*) FROM webhook_deliveries`); n != 0 {
			t.Errorf("%d events and deliveries written by a batch that failed", n)
		}
		if n := count(t, s, `SELECT count(*) FROM recipients WHERE status = 'delivered'`); n != 0 {
			t.Errorf("the change committed without its batch")
		}
	})
	t.Run("the batch commits change, event and deliveries together", func(t *testing.T) {
		b := &pgx.Batch{}
		b.Queue(`UPDATE recipients SET status = 'delivered' WHERE message_id = $1 AND idx = 0`, m.ID)
		var ne, nd int
		if err := QueueEvents(b, []NewEvent{{Type: EventMessageDelivered, MessageID: m.ID, RcptIdx: 0}}, func(e, d int) { ne, nd = e, d }); err != nil {
			t.Fatal(err)
		}
		if err := s.pool.SendBatch(t.Context(), b).Close(); err != nil {
			t.Fatal(err)
		}
		if ne != 1 || nd != 1 {
			t.Errorf("added(%d, %d), want (1, 1)", ne, nd)
		}
	})
	t.Run("a transaction's events with InsertEvents", func(t *testing.T) {
		err := pgx.BeginFunc(t.Context(), s.pool, func(tx pgx.Tx) error {
			n, err := InsertEvents(t.Context(), tx, []NewEvent{{Type: EventMessageAccepted, MessageID: m.ID, RcptIdx: 1, Sequence: 1}})
			if n != 1 {
				t.Errorf("%d deliveries, want 1", n)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a repeat with the same EventID writes nothing twice", func(t *testing.T) {
		id := EventID(m.ID, 1, EventMessageDeferred, 1)
		if id != EventID(m.ID, 1, EventMessageDeferred, 1) || id == EventID(m.ID, 1, EventMessageDeferred, 2) {
			t.Fatal("EventID is not a function of its arguments")
		}
		before := count(t, s, `SELECT count(*) FROM webhook_deliveries`)
		for range 2 {
			b := &pgx.Batch{}
			var ne, nd int
			if err := QueueEvents(b, []NewEvent{{ID: id, Type: EventMessageDeferred, MessageID: m.ID, RcptIdx: 1}}, func(e, d int) { ne, nd = ne+e, nd+d }); err != nil {
				t.Fatal(err)
			}
			if err := s.pool.SendBatch(t.Context(), b).Close(); err != nil {
				t.Fatal(err)
			}
		}
		if n := count(t, s, `SELECT count(*) FROM events WHERE id = $1`, id); n != 1 {
			t.Errorf("%d events with one id", n)
		}
		if n := count(t, s, `SELECT count(*) FROM webhook_deliveries`) - before; n != 1 {
			t.Errorf("%d deliveries for one event", n)
		}
		if n := count(t, s, `SELECT event_seq FROM recipients WHERE message_id = $1 AND idx = 1`, m.ID); n != 1 {
			t.Errorf("event_seq %d after one event and its repeat, want 1", n)
		}
	})
	t.Run("unknown type", func(t *testing.T) {
		if err := s.AppendEvents(t.Context(), []NewEvent{{Type: "message.opened", MessageID: m.ID}}); !errors.Is(err, ErrRejected) {
			t.Errorf("append = %v, want ErrRejected", err)
		}
	})
}

// An event that commits after a later one is still delivered to the feed
// in order: the feed holds back events until the transactions before
// them have ended.
func TestEventFeedWaitsForEarlierTransactions(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := acceptedMessage(t, s, k, 2)

	tx, err := s.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(t.Context())
	if _, err := InsertEvents(t.Context(), tx, []NewEvent{{Type: EventMessageAccepted, MessageID: m.ID, RcptIdx: 0}}); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendEvents(t.Context(), []NewEvent{{Type: EventMessageAccepted, MessageID: m.ID, RcptIdx: 1}}); err != nil {
		t.Fatal(err)
	}
	evs, cur, err := s.ListEvents(t.Context(), "acme", EventQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 0 || cur != "" {
		t.Fatalf("feed shows %d events (cursor %q) while an older transaction is open", len(evs), cur)
	}
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	evs, cur = feed(t, s, "acme", EventQuery{Limit: 1}, 1)
	var d struct{ Recipient string }
	_ = json.Unmarshal(evs[0].Data, &d)
	if d.Recipient != m.Recipients[0].Email {
		t.Errorf("first event is for %s, want the one of the earlier transaction", d.Recipient)
	}
	evs2, cur2 := feed(t, s, "acme", EventQuery{After: cur, Limit: 10}, 1)
	if evs2[0].ID == evs[0].ID {
		t.Fatalf("page 2 repeats page 1")
	}
	if evs3, cur3, _ := s.ListEvents(t.Context(), "acme", EventQuery{After: cur2}); len(evs3) != 0 || cur3 != cur2 {
		t.Errorf("page 3: %d events, cursor %q (want none, %q)", len(evs3), cur3, cur2)
	}
	if evs, _, _ := s.ListEvents(t.Context(), "acme", EventQuery{Types: []string{EventMessageDelivered}}); len(evs) != 0 {
		t.Errorf("types filter let %d events through", len(evs))
	}
	if _, _, err := s.ListEvents(t.Context(), "acme", EventQuery{After: "nonsense"}); !errors.Is(err, ErrBadCursor) {
		t.Errorf("bad cursor: %v", err)
	}
}

func TestWebhookClaimOrderAndCaps(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := acceptedMessage(t, s, k, 3)
	a, _ := newEndpoint(t, s, "acme", EventTypes()...)
	b, _ := newEndpoint(t, s, "acme", EventTypes()...)
	var evs []NewEvent
	for i := range 3 {
		evs = append(evs, NewEvent{Type: EventMessageAccepted, MessageID: m.ID, RcptIdx: i},
			NewEvent{Type: EventMessageDelivered, MessageID: m.ID, RcptIdx: i})
	}
	if err := s.AppendEvents(t.Context(), evs); err != nil {
		t.Fatal(err)
	}
	claim := WebhookClaim{Owner: "p1", Lease: time.Minute, Limit: 100, PerEndpoint: 2}
	got, err := s.ClaimWebhookDeliveries(t.Context(), claim)
	if err != nil {
		t.Fatal(err)
	}
	// 6 events × 2 endpoints, but only each recipient's first is due
	// (order), and at most 2 per endpoint.
	per := map[uuid.UUID]int{}
	for _, d := range got {
		per[d.EndpointID]++
		if d.Event.Type != EventMessageAccepted {
			t.Errorf("claimed %s before the recipient's earlier event", d.Event.Type)
		}
		if d.Attempt != 1 || len(d.Secrets) != 1 || d.URL == "" {
			t.Errorf("delivery %+v", d)
		}
	}
	if per[a.ID] != 2 || per[b.ID] != 2 {
		t.Fatalf("claimed %v per endpoint, want 2 each", per)
	}
	// A second claimer takes the rest within the caps; an endpoint at its
	// cap in this process gets nothing.
	claim.Owner, claim.InFlight = "p2", map[uuid.UUID]int{a.ID: 2}
	got2, err := s.ClaimWebhookDeliveries(t.Context(), claim)
	if err != nil {
		t.Fatal(err)
	}
	if len(got2) != 1 || got2[0].EndpointID != b.ID {
		t.Fatalf("second claim: %d deliveries, want endpoint b's last first event", len(got2))
	}
	// Recording a delivery frees the recipient's next event.
	first := got[0]
	r, err := s.RecordWebhookAttempt(t.Context(), WebhookResult{DeliveryID: first.ID, EndpointID: first.EndpointID, Owner: "p1",
		Attempt: 1, StartedAt: time.Now(), StatusCode: 204, Latency: 3 * time.Millisecond, Outcome: WebhookDelivered})
	if err != nil || !r.Recorded {
		t.Fatalf("record: %+v, %v", r, err)
	}
	if r, _ := s.RecordWebhookAttempt(t.Context(), WebhookResult{DeliveryID: first.ID, Owner: "p1", Attempt: 1, Outcome: WebhookDelivered}); r.Recorded {
		t.Error("a second record of the same attempt counted")
	}
	claim.Owner, claim.InFlight = "p3", nil
	got3, err := s.ClaimWebhookDeliveries(t.Context(), claim)
	if err != nil {
		t.Fatal(err)
	}
	// The one first event left (endpoint a's third), and the event that
	// waited behind the recorded one.
	freed := slices.IndexFunc(got3, func(d WebhookDelivery) bool {
		return d.Event.Type == EventMessageDelivered && d.EndpointID == first.EndpointID
	})
	if len(got3) != 2 || freed < 0 {
		t.Fatalf("after recording: claimed %d, want 2 with the next event of that recipient", len(got3))
	}
	atts, next, err := s.ListWebhookAttempts(t.Context(), first.EndpointID, 0, 10)
	if err != nil || len(atts) != 1 || next != 0 || *atts[0].StatusCode != 204 || atts[0].DeliveryStatus != "delivered" {
		t.Fatalf("attempts %+v next %d err %v", atts, next, err)
	}
}

func TestWebhookEndpointHealth(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := acceptedMessage(t, s, k, 3)
	claimOne := func(owner string) WebhookDelivery {
		t.Helper()
		got, err := s.ClaimWebhookDeliveries(t.Context(), WebhookClaim{Owner: owner, Lease: time.Minute, Limit: 1, PerEndpoint: 1})
		if err != nil || len(got) != 1 {
			t.Fatalf("claim: %d, %v", len(got), err)
		}
		return got[0]
	}
	t.Run("410 disables at once", func(t *testing.T) {
		ep, _ := newEndpoint(t, s, "acme", EventMessageDelivered)
		if err := s.AppendEvents(t.Context(), []NewEvent{{Type: EventMessageDelivered, MessageID: m.ID, RcptIdx: 0}}); err != nil {
			t.Fatal(err)
		}
		d := claimOne("x")
		r, err := s.RecordWebhookAttempt(t.Context(), WebhookResult{DeliveryID: d.ID, Owner: "x", Attempt: 1, StartedAt: time.Now(),
			StatusCode: 410, Outcome: WebhookRetry, NextAttemptAt: time.Now(), DisableReason: "answered 410 Gone"})
		if err != nil || !r.Disabled || r.DisabledReason != "answered 410 Gone" {
			t.Fatalf("record: %+v %v", r, err)
		}
		e, _ := s.GetWebhookEndpoint(t.Context(), "acme", ep.ID)
		if e.DisabledAt == nil {
			t.Error("endpoint not disabled")
		}
		if got, _ := s.ClaimWebhookDeliveries(t.Context(), WebhookClaim{Owner: "y", Lease: time.Minute, Limit: 9, PerEndpoint: 9}); len(got) != 0 {
			t.Errorf("claimed %d deliveries of a disabled endpoint", len(got))
		}
		on := true
		if e, err = s.UpdateWebhookEndpoint(t.Context(), "acme", ep.ID, WebhookEndpointPatch{Enabled: &on}); err != nil || e.DisabledAt != nil {
			t.Fatalf("enable: %+v %v", e, err)
		}
		d = claimOne("z") // pending while disabled, sent once enabled again
		if _, err := s.RecordWebhookAttempt(t.Context(), WebhookResult{DeliveryID: d.ID, Owner: "z", Attempt: 2, StartedAt: time.Now(), StatusCode: 200, Outcome: WebhookDelivered}); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteWebhookEndpoint(t.Context(), "acme", ep.ID); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("failing for too long disables", func(t *testing.T) {
		ep, _ := newEndpoint(t, s, "acme", EventMessageBounced)
		if err := s.AppendEvents(t.Context(), []NewEvent{{Type: EventMessageBounced, MessageID: m.ID, RcptIdx: 1}}); err != nil {
			t.Fatal(err)
		}
		d := claimOne("x")
		fail := WebhookResult{DeliveryID: d.ID, Owner: "x", Attempt: 1, StartedAt: time.Now(), StatusCode: 500,
			Outcome: WebhookRetry, NextAttemptAt: time.Now(), DisableAfter: 5 * 24 * time.Hour}
		if r, err := s.RecordWebhookAttempt(t.Context(), fail); err != nil || r.Disabled {
			t.Fatalf("first failure: %+v %v", r, err)
		}
		e, _ := s.GetWebhookEndpoint(t.Context(), "acme", ep.ID)
		if e.FailingSince == nil {
			t.Fatal("failing_since not set")
		}
		if _, err := s.pool.Exec(t.Context(), `UPDATE webhook_endpoints SET failing_since = now() - interval '5 days 1 minute' WHERE id = $1`, ep.ID); err != nil {
			t.Fatal(err)
		}
		d = claimOne("y")
		fail.Owner, fail.DeliveryID, fail.Attempt = "y", d.ID, 2
		r, err := s.RecordWebhookAttempt(t.Context(), fail)
		if err != nil || !r.Disabled {
			t.Fatalf("failure after 5 days: %+v %v", r, err)
		}
	})
}

func TestWebhookReplayRotationAndRetention(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	newTenant(t, s, "other")
	m := acceptedMessage(t, s, k, 2)
	ep, secret := newEndpoint(t, s, "acme", EventMessageDelivered, EventMessageAccepted)
	if err := s.AppendEvents(t.Context(), []NewEvent{
		{Type: EventMessageAccepted, MessageID: m.ID, RcptIdx: 0},
		{Type: EventMessageDelivered, MessageID: m.ID, RcptIdx: 0},
		{Type: EventMessageBounced, MessageID: m.ID, RcptIdx: 1}, // not subscribed
	}); err != nil {
		t.Fatal(err)
	}
	evs, _ := feed(t, s, "acme", EventQuery{}, 3)
	t.Run("range", func(t *testing.T) {
		q, _, err := s.ReplayWebhook(t.Context(), "acme", ep.ID, WebhookReplay{Since: time.Now().Add(-time.Hour), Until: time.Now().Add(time.Hour)})
		if err != nil || len(q) != 2 || q[0] != evs[0].ID || q[1] != evs[1].ID {
			t.Fatalf("replay range queued %v, %v; want the two subscribed events in order", q, err)
		}
	})
	t.Run("ids", func(t *testing.T) {
		q, missing, err := s.ReplayWebhook(t.Context(), "acme", ep.ID, WebhookReplay{EventIDs: []uuid.UUID{evs[2].ID}})
		if err != nil || len(q) != 1 || q[0] != evs[2].ID || missing != nil {
			t.Fatalf("replay ids: %v %v %v", q, missing, err)
		}
		stranger := uuid.Must(uuid.NewV7())
		before := count(t, s, `SELECT count(*) FROM webhook_deliveries`)
		q, missing, err = s.ReplayWebhook(t.Context(), "acme", ep.ID, WebhookReplay{EventIDs: []uuid.UUID{evs[0].ID, stranger}})
		if err != nil || q != nil || !slices.Equal(missing, []uuid.UUID{stranger}) {
			t.Fatalf("replay with an unknown id: %v %v %v", q, missing, err)
		}
		if after := count(t, s, `SELECT count(*) FROM webhook_deliveries`); after != before {
			t.Errorf("a refused replay queued %d deliveries", after-before)
		}
		if _, _, err := s.ReplayWebhook(t.Context(), "other", ep.ID, WebhookReplay{EventIDs: []uuid.UUID{evs[0].ID}}); !errors.Is(err, ErrNotFound) {
			t.Errorf("another tenant's replay: %v", err)
		}
	})
	t.Run("rotation", func(t *testing.T) {
		e, newSecret, err := s.RotateWebhookSecret(t.Context(), "acme", ep.ID, 24*time.Hour)
		if err != nil || e.PreviousSecretExpiresAt == nil || slices.Equal(newSecret, secret) {
			t.Fatalf("rotate: %+v %v", e, err)
		}
		d, err := s.ClaimWebhookDeliveries(t.Context(), WebhookClaim{Owner: "r", Lease: time.Minute, Limit: 1, PerEndpoint: 1})
		if err != nil || len(d) != 1 || len(d[0].Secrets) != 2 || !slices.Equal(d[0].Secrets[0], newSecret) || !slices.Equal(d[0].Secrets[1], secret) {
			t.Fatalf("claim during the overlap: %v", err)
		}
		if _, _, err := s.RotateWebhookSecret(t.Context(), "acme", ep.ID, -time.Second); err != nil {
			t.Fatal(err)
		}
		if _, err := s.pool.Exec(t.Context(), `UPDATE webhook_deliveries SET lease_until = now() - interval '1s'`); err != nil {
			t.Fatal(err)
		}
		d, err = s.ClaimWebhookDeliveries(t.Context(), WebhookClaim{Owner: "r2", Lease: time.Minute, Limit: 1, PerEndpoint: 1})
		if err != nil || len(d) != 1 || len(d[0].Secrets) != 1 {
			t.Fatalf("claim after the overlap: %d secrets, %v", len(d[0].Secrets), err)
		}
	})
	t.Run("retention", func(t *testing.T) {
		if _, err := s.pool.Exec(t.Context(), `UPDATE events SET created_at = now() - interval '31 days' WHERE id = $1`, evs[0].ID); err != nil {
			t.Fatal(err)
		}
		n, err := s.PurgeEvents(t.Context(), time.Now().Add(-720*time.Hour))
		if err != nil || n != 1 {
			t.Fatalf("purge: %d, %v", n, err)
		}
		if c := count(t, s, `SELECT count(*) FROM webhook_deliveries WHERE event_id = $1`, evs[0].ID); c != 0 {
			t.Errorf("%d deliveries of a purged event left", c)
		}
		if c := count(t, s, `SELECT count(*) FROM events`); c != 2 {
			t.Errorf("%d events left, want 2", c)
		}
	})
	b, err := s.WebhookBacklog(t.Context())
	if err != nil || b.Pending == 0 || b.OldestPending.IsZero() {
		t.Errorf("backlog %+v, %v", b, err)
	}
}
