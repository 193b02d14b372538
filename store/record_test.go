package store

import (
	"testing"
	"time"
)

// TestRecordOutcomesIdempotent: RecordOutcomes retried after its commit
// reply was lost (the worker cannot tell) must not count the attempt twice:
// the second call with the same outcomes changes nothing, and the next
// attempt is still recorded.
func TestRecordOutcomesIdempotent(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 2)
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Microsecond)
	retry := now.Add(time.Minute)
	deferred := []Outcome{{Attempt: Attempt{Recipient: 0, Attempt: 1, StartedAt: now, SMTPCode: 451,
		Response: "greylisted", Outcome: RecipientDeferred}, NextAttemptAt: &retry}}
	for try := range 2 {
		if _, err := s.RecordOutcomes(t.Context(), m.ID, deferred); err != nil {
			t.Fatalf("record, try %d: %v", try+1, err)
		}
	}
	if n := count(t, s, "SELECT count(*) FROM attempts WHERE message_id = $1 AND rcpt_idx = 0", m.ID); n != 1 {
		t.Errorf("%d attempt rows after recording attempt 1 twice, want 1", n)
	}
	if n := count(t, s, "SELECT attempts FROM recipients WHERE message_id = $1 AND idx = 0", m.ID); n != 1 {
		t.Errorf("recipient counts %d attempts after recording attempt 1 twice, want 1", n)
	}
	delivered := []Outcome{{Attempt: Attempt{Recipient: 0, Attempt: 2, StartedAt: now.Add(time.Minute), SMTPCode: 250,
		Outcome: RecipientDelivered}}}
	for range 2 {
		if _, err := s.RecordOutcomes(t.Context(), m.ID, delivered); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, s, "SELECT count(*) FROM attempts WHERE message_id = $1 AND rcpt_idx = 0", m.ID); n != 2 {
		t.Errorf("%d attempt rows after attempts 1 and 2, want 2", n)
	}
	if n := count(t, s, "SELECT attempts FROM recipients WHERE message_id = $1 AND idx = 0 AND status = 'delivered'", m.ID); n != 2 {
		t.Errorf("delivered recipient counts %d attempts, want 2", n)
	}
}

// TestParkedJobs: failures count up to the limit and park the job; a
// parked job says so when loaded, is left out of PendingJobs and StaleJobs
// (nothing requeues it), and unparking returns it.
func TestParkedJobs(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 2) // user0@dest0, user1@dest1
	m.CreatedAt = time.Now().Add(-time.Hour).Truncate(time.Microsecond)
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{false, false, true, true} {
		parked, err := s.CountJobFailure(t.Context(), m.ID, "dest0.example", "panic: boom", 3)
		if err != nil || parked != want {
			t.Fatalf("failure %d: parked %v %v, want %v", i+1, parked, err, want)
		}
	}
	d, err := s.LoadDelivery(t.Context(), m.ID, "dest0.example")
	if err != nil || d.Parked != "panic: boom" {
		t.Fatalf("load: parked %q %v", d.Parked, err)
	}
	jobs := func() []string {
		var out []string
		if err := s.PendingJobs(t.Context(), func(j PendingJob) error {
			if j.MessageID == m.ID {
				out = append(out, j.Domain)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := jobs(); len(got) != 1 || got[0] != "dest1.example" {
		t.Errorf("pending jobs %v, want only dest1.example", got)
	}
	stale, err := s.StaleJobs(t.Context(), time.Now(), PendingJob{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range stale {
		if j.MessageID == m.ID && j.Domain == "dest0.example" {
			t.Errorf("stale jobs list the parked job")
		}
	}
	list, err := s.ParkedJobs(t.Context())
	if err != nil || len(list) != 1 || list[0].Failures != 4 || list[0].Reason != "panic: boom" {
		t.Fatalf("parked list %+v %v", list, err)
	}
	if ok, err := s.UnparkJob(t.Context(), m.ID, "dest0.example"); err != nil || !ok {
		t.Fatalf("unpark: %v %v", ok, err)
	}
	if got := jobs(); len(got) != 2 {
		t.Errorf("pending jobs after unpark %v, want both domains", got)
	}
	if err := s.ParkJob(t.Context(), m.ID, "dest1.example", "record retried for ever"); err != nil {
		t.Fatal(err)
	}
	if d, err := s.LoadDelivery(t.Context(), m.ID, "dest1.example"); err != nil || d.Parked != "record retried for ever" {
		t.Errorf("ParkJob: parked %q %v", d.Parked, err)
	}
}
