package store

import (
	"errors"
	"testing"
	"time"
)

// TestRecordOutcomesBounceClass: a failure's type and class go on the
// attempt row and the recipient row; a later delivery clears the
// recipient's; a class outside the taxonomy is refused before anything is
// written.
func TestRecordOutcomesBounceClass(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 2)
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Microsecond)
	retry := now.Add(time.Minute)
	outs := []Outcome{
		{Attempt: Attempt{Recipient: 0, Attempt: 1, StartedAt: now, SMTPCode: 452, EnhancedCode: "4.2.2",
			Outcome: RecipientDeferred, BounceType: BounceSoft, BounceClass: "mailbox_full"}, NextAttemptAt: &retry},
		{Attempt: Attempt{Recipient: 1, Attempt: 1, StartedAt: now, SMTPCode: 550, EnhancedCode: "5.1.1",
			Outcome: RecipientBounced, BounceType: BounceHard, BounceClass: "invalid_recipient"}},
	}
	if _, err := s.RecordOutcomes(t.Context(), m.ID, outs); err != nil {
		t.Fatal(err)
	}
	rcpt := func(idx int) (typ, class *string) {
		t.Helper()
		if err := s.pool.QueryRow(t.Context(), `SELECT bounce_type, bounce_class FROM recipients WHERE message_id = $1 AND idx = $2`,
			m.ID, idx).Scan(&typ, &class); err != nil {
			t.Fatal(err)
		}
		return typ, class
	}
	for i, want := range []string{"mailbox_full", "invalid_recipient"} {
		if _, c := rcpt(i); c == nil || *c != want {
			t.Errorf("recipient %d: class %v, want %s", i, c, want)
		}
		if n := count(t, s, `SELECT count(*) FROM attempts WHERE message_id = $1 AND rcpt_idx = $2 AND bounce_class = $3`, m.ID, i, want); n != 1 {
			t.Errorf("recipient %d: %d attempt rows of class %s, want 1", i, n, want)
		}
	}
	delivered := []Outcome{{Attempt: Attempt{Recipient: 0, Attempt: 2, StartedAt: retry, SMTPCode: 250, Outcome: RecipientDelivered}}}
	if _, err := s.RecordOutcomes(t.Context(), m.ID, delivered); err != nil {
		t.Fatal(err)
	}
	if typ, c := rcpt(0); typ != nil || c != nil {
		t.Errorf("delivered recipient keeps bounce %v/%v", typ, c)
	}

	bad := []struct {
		name string
		a    Attempt
	}{
		{"unknown class", Attempt{Outcome: RecipientBounced, BounceType: BounceHard, BounceClass: "gone"}},
		{"unknown type", Attempt{Outcome: RecipientBounced, BounceType: "firm", BounceClass: "other"}},
		{"class without type", Attempt{Outcome: RecipientBounced, BounceClass: "other"}},
		{"delivery with class", Attempt{Outcome: RecipientDelivered, BounceType: BounceSoft, BounceClass: "other"}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			a := tt.a
			a.Recipient, a.Attempt, a.StartedAt = 1, 2, now
			if _, err := s.RecordOutcomes(t.Context(), m.ID, []Outcome{{Attempt: a}}); !errors.Is(err, ErrRejected) {
				t.Errorf("RecordOutcomes: %v, want ErrRejected", err)
			}
			a.MessageID = m.ID
			if err := s.InsertAttempts(t.Context(), []Attempt{a}); !errors.Is(err, ErrRejected) {
				t.Errorf("InsertAttempts: %v, want ErrRejected", err)
			}
		})
	}
	a := Attempt{MessageID: m.ID, Recipient: 1, Attempt: 9, StartedAt: now, Outcome: RecipientBounced,
		BounceType: BounceSoft, BounceClass: "expired"}
	if err := s.InsertAttempts(t.Context(), []Attempt{a}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, s, `SELECT count(*) FROM attempts WHERE message_id = $1 AND attempt = 9 AND bounce_type = 'soft' AND bounce_class = 'expired'`, m.ID); n != 1 {
		t.Errorf("InsertAttempts wrote %d rows with the class, want 1", n)
	}
}
