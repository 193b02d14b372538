package store

import (
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestApplyReport(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	ctx := t.Context()
	m := testMessage(k, 3) // user0@Dest0.example, user1@Dest1.example, user2@Dest0.example
	if err := s.AcceptBatch(ctx, []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, err := s.RecordOutcomes(ctx, m.ID, []Outcome{{Attempt: Attempt{Recipient: 0, Attempt: 1, StartedAt: now,
		SMTPCode: 250, Outcome: RecipientDelivered}}}); err != nil {
		t.Fatal(err)
	}
	inbound, err := s.SaveInbound(ctx, InboundMessage{RcptTo: []string{"x@b.example"}, Body: []byte("dsn")})
	if err != nil {
		t.Fatal(err)
	}
	bounce := AsyncReport{InboundID: inbound, MessageID: m.ID, RcptIdx: 0, Type: EventBounced, SMTPCode: 550,
		EnhancedCode: "5.1.1", Response: "550 5.1.1 no such user", ReportingMTA: "mx.dest0.example",
		RemoteMTA: "mbox.dest0.example", BounceType: "hard", BounceClass: "invalid_recipient", Suppress: true}

	t.Run("delivered to bounced", func(t *testing.T) {
		res, err := s.ApplyReport(ctx, bounce)
		if err != nil || !res.Applied || !res.Suppressed || res.Email != m.Recipients[0].Email && res.Email != "user0@dest0.example" {
			t.Fatalf("%+v, %v", res, err)
		}
		if n := count(t, s, `SELECT count(*) FROM recipients WHERE message_id = $1 AND idx = 0 AND status = 'bounced'
			AND bounce_async AND bounce_class = 'invalid_recipient' AND bounce_type = 'hard' AND enhanced_code = '5.1.1'`, m.ID); n != 1 {
			t.Error("recipient 0 is not bounced asynchronously with its class")
		}
		if n := count(t, s, `SELECT count(*) FROM recipient_events WHERE message_id = $1 AND rcpt_idx = 0 AND type = 'bounced'
			AND async AND reporting_mta = 'mx.dest0.example' AND remote_mta = 'mbox.dest0.example'`, m.ID); n != 1 {
			t.Error("no bounced event")
		}
		if n := count(t, s, `SELECT count(*) FROM suppressions WHERE tenant_id = 'acme' AND email = 'user0@dest0.example'
			AND reason = 'hard_bounce' AND message_id = $1`, m.ID); n != 1 {
			t.Error("no suppression")
		}
	})
	t.Run("repeat changes nothing", func(t *testing.T) {
		res, err := s.ApplyReport(ctx, bounce)
		if err != nil || res.Applied || res.Suppressed {
			t.Fatalf("%+v, %v", res, err)
		}
		if n := count(t, s, `SELECT count(*) FROM recipient_events WHERE message_id = $1`, m.ID); n != 1 {
			t.Errorf("%d events, want 1", n)
		}
	})
	t.Run("delayed is an event only", func(t *testing.T) {
		res, err := s.ApplyReport(ctx, AsyncReport{InboundID: inbound, MessageID: m.ID, RcptIdx: 1, Type: EventDeferred,
			EnhancedCode: "4.4.7", Response: "still trying"})
		if err != nil || !res.Applied || res.Suppressed {
			t.Fatalf("%+v, %v", res, err)
		}
		if n := count(t, s, `SELECT count(*) FROM recipients WHERE message_id = $1 AND idx = 1 AND status = 'queued'`, m.ID); n != 1 {
			t.Error("a delay changed the recipient's state")
		}
	})
	t.Run("bounce of a recipient a worker holds waits", func(t *testing.T) {
		m2 := testMessage(k, 1)
		if err := s.AcceptBatch(ctx, []NewMessage{m2}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.TakeLease(ctx, m2.ID, []int{0}, Lease{Owner: "w1", For: time.Minute, Next: time.Now().Add(time.Minute),
			DueBy: time.Now().Add(time.Second)}); err != nil {
			t.Fatal(err)
		}
		b := bounce
		b.MessageID, b.RcptIdx = m2.ID, 0
		if _, err := s.ApplyReport(ctx, b); !errors.Is(err, ErrRecipientBusy) {
			t.Fatalf("ApplyReport on a leased recipient: %v, want ErrRecipientBusy", err)
		}
		if n := count(t, s, `SELECT count(*) FROM recipient_events WHERE message_id = $1`, m2.ID); n != 0 {
			t.Errorf("%d events recorded for a report that must wait", n)
		}
	})
	t.Run("bounce of a queued recipient stops it", func(t *testing.T) {
		b := bounce
		b.RcptIdx, b.Suppress, b.InboundID = 2, false, uuid.Nil
		res, err := s.ApplyReport(ctx, b)
		if err != nil || !res.Applied || res.Suppressed {
			t.Fatalf("%+v, %v", res, err)
		}
		if n := count(t, s, `SELECT count(*) FROM recipients WHERE message_id = $1 AND idx = 2 AND status = 'bounced'
			AND next_attempt_at IS NULL AND lease_owner IS NULL`, m.ID); n != 1 {
			t.Error("recipient 2 is still pending")
		}
	})
	t.Run("complaint", func(t *testing.T) {
		res, err := s.ApplyReport(ctx, AsyncReport{InboundID: inbound, MessageID: m.ID, RcptIdx: 1, Type: EventComplained, Response: "abuse"})
		if err != nil || !res.Applied || !res.Suppressed {
			t.Fatalf("%+v, %v", res, err)
		}
		if n := count(t, s, `SELECT count(*) FROM suppressions WHERE tenant_id = 'acme' AND email = 'user1@dest1.example' AND reason = 'complaint'`); n != 1 {
			t.Error("no complaint suppression")
		}
	})
	t.Run("unknown recipient", func(t *testing.T) {
		b := bounce
		b.RcptIdx = 9
		res, err := s.ApplyReport(ctx, b)
		if err != nil || res.Applied {
			t.Fatalf("%+v, %v", res, err)
		}
	})
	t.Run("lookups", func(t *testing.T) {
		rm, err := s.LoadReportMessage(ctx, m.ID)
		if err != nil || rm.TenantID != "acme" || len(rm.Recipients) != 3 || rm.Recipients[0].Status != "bounced" {
			t.Fatalf("%+v, %v", rm, err)
		}
		ids, err := s.FindMessages(ctx, "<"+m.MessageID+">")
		if err != nil || len(ids) != 1 || ids[0] != m.ID {
			t.Fatalf("%v, %v", ids, err)
		}
		if _, err := s.LoadReportMessage(ctx, uuid.New()); err == nil {
			t.Error("an unknown message was found")
		}
	})
}
