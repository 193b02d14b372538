package store

import (
	"errors"
	"slices"
	"testing"
	"time"
)

// TestCancelMessage: cancel takes the recipients no attempt holds; a
// leased one finishes and its outcome stands; the message's final status
// counts canceled recipients; another tenant's message is not found.
func TestCancelMessage(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 3)
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	// Recipient 1 is in an SMTP transaction.
	now := time.Now()
	taken, err := s.TakeLease(t.Context(), m.ID, []int{1}, Lease{Owner: "w-1", For: time.Minute, Next: now.Add(time.Minute), DueBy: now.Add(time.Minute)})
	if err != nil || len(taken) != 1 {
		t.Fatalf("take lease: %v %v", taken, err)
	}
	if _, err := s.CancelMessage(t.Context(), "globex", m.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("another tenant's cancel = %v, want ErrNotFound", err)
	}
	c, err := s.CancelMessage(t.Context(), "acme", m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Recipients, []int{0, 2}) || c.InFlight != 1 {
		t.Fatalf("cancel = %+v, want 0 and 2 canceled, 1 in flight", c)
	}
	// A canceled recipient is never leased again, nor loaded for delivery.
	if taken, err := s.TakeLease(t.Context(), m.ID, []int{0, 2}, Lease{Owner: "w-2", For: time.Minute, Next: now.Add(time.Minute), DueBy: now.Add(time.Hour)}); err != nil || len(taken) != 0 {
		t.Fatalf("lease of canceled recipients: %v %v, want none", taken, err)
	}
	v, err := s.GetMessage(t.Context(), "acme", m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if v.Status != StatusPending || v.Recipients[0].Status != RecipientCanceled || v.Recipients[1].Status != RecipientQueued {
		t.Fatalf("after cancel: %s %+v", v.Status, v.Recipients)
	}
	// The transaction in flight delivers: its outcome stands, and the
	// message completes as partially delivered.
	complete, err := s.RecordOutcomes(t.Context(), m.ID, []Outcome{{Attempt: Attempt{Recipient: 1, Attempt: 1, StartedAt: now,
		MXHost: "mx.example", SMTPCode: 250, EnhancedCode: "2.0.0", Response: "ok", Outcome: RecipientDelivered}}})
	if err != nil || !complete {
		t.Fatalf("record: complete=%v err=%v", complete, err)
	}
	var status string
	var body []byte
	if err := s.pool.QueryRow(t.Context(), `SELECT status, body FROM messages WHERE id = $1`, m.ID).Scan(&status, &body); err != nil {
		t.Fatal(err)
	}
	if status != StatusPartiallyDelivered || body != nil {
		t.Fatalf("stored status %s, body %d bytes; want partially_delivered and the body dropped", status, len(body))
	}
	if c, err := s.CancelMessage(t.Context(), "acme", m.ID); err != nil || len(c.Recipients) != 0 || c.InFlight != 0 {
		t.Fatalf("second cancel = %+v, %v; want nothing", c, err)
	}
	var events int
	if err := s.pool.QueryRow(t.Context(), `SELECT count(*) FROM events WHERE message_id = $1 AND type = 'message.canceled'`, m.ID).Scan(&events); err != nil {
		t.Fatal(err)
	}
	if events != 2 {
		t.Fatalf("%d message.canceled events, want 2", events)
	}
}

// TestCancelThenInFlightDefers: a recipient in flight at the cancel that
// then defers is canceled, with its event, not retried; the message
// completes as canceled.
func TestCancelThenInFlightDefers(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 2)
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if taken, err := s.TakeLease(t.Context(), m.ID, []int{0}, Lease{Owner: "w-1", For: time.Minute, Next: now.Add(time.Minute), DueBy: now.Add(time.Minute)}); err != nil || len(taken) != 1 {
		t.Fatalf("take lease: %v %v", taken, err)
	}
	c, err := s.CancelMessage(t.Context(), "acme", m.ID)
	if err != nil || !slices.Equal(c.Recipients, []int{1}) || c.InFlight != 1 {
		t.Fatalf("cancel = %+v, %v", c, err)
	}
	retry := now.Add(time.Minute)
	complete, err := s.RecordOutcomes(t.Context(), m.ID, []Outcome{{Attempt: Attempt{Recipient: 0, Attempt: 1, StartedAt: now,
		MXHost: "mx.example", SMTPCode: 451, EnhancedCode: "4.7.1", Response: "later", Outcome: RecipientDeferred}, NextAttemptAt: &retry}})
	if err != nil || !complete {
		t.Fatalf("record: complete=%v err=%v", complete, err)
	}
	v, err := s.GetMessage(t.Context(), "acme", m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if v.Status != StatusCanceled || v.Recipients[0].Status != RecipientCanceled || v.Recipients[0].Attempts != 1 {
		t.Fatalf("after the deferral: %s %+v", v.Status, v.Recipients)
	}
	var canceled, deferred int
	if err := s.pool.QueryRow(t.Context(), `SELECT count(*) FILTER (WHERE type = 'message.canceled'), count(*) FILTER (WHERE type = 'message.deferred')
FROM events WHERE message_id = $1`, m.ID).Scan(&canceled, &deferred); err != nil {
		t.Fatal(err)
	}
	if canceled != 2 || deferred != 1 {
		t.Fatalf("events: %d canceled, %d deferred; want 2 and 1", canceled, deferred)
	}
	// Without a cancel, a deferral stays a deferral.
	m2 := testMessage(k, 1)
	if err := s.AcceptBatch(t.Context(), []NewMessage{m2}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordOutcomes(t.Context(), m2.ID, []Outcome{{Attempt: Attempt{Recipient: 0, Attempt: 1, StartedAt: now,
		MXHost: "mx.example", SMTPCode: 451, Response: "later", Outcome: RecipientDeferred}, NextAttemptAt: &retry}}); err != nil {
		t.Fatal(err)
	}
	if v, err := s.GetMessage(t.Context(), "acme", m2.ID); err != nil || v.Recipients[0].Status != RecipientDeferred {
		t.Fatalf("uncanceled deferral: %+v %v", v, err)
	}
}

func TestMessageStatusCanceled(t *testing.T) {
	rs := func(st ...string) []RecipientView {
		out := make([]RecipientView, len(st))
		for i, s := range st {
			out[i].Status = s
		}
		return out
	}
	tests := []struct {
		rs   []RecipientView
		want string
	}{
		{rs(RecipientCanceled, RecipientCanceled), StatusCanceled},
		{rs(RecipientCanceled, RecipientDelivered), StatusPartiallyDelivered},
		{rs(RecipientCanceled, RecipientBounced), StatusBounced},
		{rs(RecipientCanceled, RecipientDeferred), StatusPending},
	}
	for _, tt := range tests {
		if got := messageStatus(tt.rs); got != tt.want {
			t.Errorf("messageStatus(%v) = %s, want %s", tt.rs, got, tt.want)
		}
	}
}
