package inbound

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailferry/mailferry/bounce"
	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/store"
)

// TestProcessReports: each kind of report, received over SMTP and
// processed, does what it says to the ledger.
func TestProcessReports(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	addr := e.listen(nil)
	p := e.processor(nil)
	process := func(t *testing.T, rcpt, body string) (status, reason string) {
		t.Helper()
		if err := send(addr, "", []string{rcpt}, body); err != nil {
			t.Fatalf("send: %v", err)
		}
		if n, err := p.RunOnce(t.Context()); err != nil || n != 1 {
			t.Fatalf("RunOnce: %d, %v", n, err)
		}
		db, err := pgxConnect(t, e.stack.DatabaseURL)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRow(t.Context(), `SELECT status, coalesce(reason, '') FROM inbound_messages ORDER BY received_at DESC LIMIT 1`).Scan(&status, &reason); err != nil {
			t.Fatal(err)
		}
		return status, reason
	}

	t.Run("dsn after delivery", func(t *testing.T) {
		m := e.message(2, 2)
		rp := e.signer.Address(m.ID, 1)
		status, reason := process(t, rp, dsn(rp, "user1@dest.example", "failed", "5.1.1", "550 5.1.1 <user1@dest.example>: Recipient address rejected: User unknown"))
		if status != "processed" {
			t.Fatalf("status %s (%s)", status, reason)
		}
		if n := e.count(`SELECT count(*) FROM recipients WHERE message_id = $1 AND idx = 1 AND status = 'bounced' AND bounce_async
			AND bounce_type = 'hard' AND bounce_class = 'invalid_recipient' AND enhanced_code = '5.1.1' AND smtp_code = 550`, m.ID); n != 1 {
			t.Error("recipient 1 is not bounced asynchronously as a hard invalid_recipient")
		}
		if n := e.count(`SELECT count(*) FROM recipients WHERE message_id = $1 AND idx = 0 AND status = 'delivered'`, m.ID); n != 1 {
			t.Error("recipient 0 changed")
		}
		if n := e.count(`SELECT count(*) FROM recipient_events WHERE message_id = $1 AND rcpt_idx = 1 AND type = 'bounced' AND async
			AND reporting_mta = 'mx.dest.example' AND remote_mta = 'mbox.dest.example' AND response LIKE '550 5.1.1%'`, m.ID); n != 1 {
			t.Error("no async bounced event with the report's MTAs and diagnostic")
		}
		if n := e.count(`SELECT count(*) FROM suppressions WHERE tenant_id = 'acme' AND email = 'user1@dest.example' AND reason = 'hard_bounce'`); n != 1 {
			t.Error("address not suppressed")
		}
		if got := testutil.ToFloat64(e.metrics.bounces.WithLabelValues("invalid_recipient", KindAsync)); got != 1 {
			t.Errorf("async bounces counted %v, want 1", got)
		}
	})
	t.Run("dsn to a transaction of several recipients", func(t *testing.T) {
		m := e.message(3, 3)
		rp := e.signer.Address(m.ID, -1)
		if status, reason := process(t, rp, dsn(rp, "USER2@Dest.Example", "failed", "5.2.2", "552 5.2.2 mailbox full")); status != "processed" {
			t.Fatalf("status %s (%s)", status, reason)
		}
		if n := e.count(`SELECT count(*) FROM recipients WHERE message_id = $1 AND status = 'bounced' AND idx = 2`, m.ID); n != 1 {
			t.Error("recipient 2 not matched by its address")
		}
	})
	t.Run("a return path naming one recipient bounces only that one", func(t *testing.T) {
		m := e.message(2, 2)
		rp := e.signer.Address(m.ID, 0)
		if status, reason := process(t, rp, dsn(rp, "user1@dest.example", "failed", "5.1.1", "550 5.1.1 no")); status != "processed" {
			t.Fatalf("status %s (%s)", status, reason)
		}
		if n := e.count(`SELECT count(*) FROM recipients WHERE message_id = $1 AND status = 'bounced'`, m.ID); n != 1 {
			t.Fatalf("%d bounced, want 1", n)
		}
		if n := e.count(`SELECT count(*) FROM recipients WHERE message_id = $1 AND idx = 0 AND status = 'bounced'`, m.ID); n != 1 {
			t.Error("the report bounced another recipient than the one its return path names")
		}
	})
	t.Run("a return path of several recipients cannot bounce another domain's", func(t *testing.T) {
		m := e.messageTo([]string{"a@x.example", "b@x.example", "c@y.example"}, 3)
		rp := e.signer.Address(m.ID, -1) // the x.example transaction's
		status, _ := process(t, rp, dsn(rp, "c@y.example", "failed", "5.1.1", "550 5.1.1 no"))
		if status != "unmatched" {
			t.Errorf("status %s, want unmatched", status)
		}
		if n := e.count(`SELECT count(*) FROM recipients WHERE message_id = $1 AND status = 'bounced'`, m.ID); n != 0 {
			t.Errorf("%d recipients bounced by a report about another transaction", n)
		}
	})
	t.Run("delayed is an event only", func(t *testing.T) {
		m := e.message(1, 1)
		rp := e.signer.Address(m.ID, 0)
		if status, reason := process(t, rp, dsn(rp, "user0@dest.example", "delayed", "4.4.7", "421 4.4.7 try later")); status != "processed" {
			t.Fatalf("status %s (%s)", status, reason)
		}
		if n := e.count(`SELECT count(*) FROM recipients WHERE message_id = $1 AND status = 'delivered' AND NOT bounce_async`, m.ID); n != 1 {
			t.Error("a delay changed the recipient")
		}
		if n := e.count(`SELECT count(*) FROM recipient_events WHERE message_id = $1 AND type = 'deferred'`, m.ID); n != 1 {
			t.Error("no deferred event")
		}
	})
	t.Run("complaint", func(t *testing.T) {
		m := e.message(2, 2)
		if status, reason := process(t, fblAddress, arf(e.signer.Address(m.ID, -1), m.MessageID, "user0@dest.example", "user0@dest.example")); status != "processed" {
			t.Fatalf("status %s (%s)", status, reason)
		}
		if n := e.count(`SELECT count(*) FROM recipient_events WHERE message_id = $1 AND rcpt_idx = 0 AND type = 'complained' AND response = 'abuse'`, m.ID); n != 1 {
			t.Error("no complained event")
		}
		if n := e.count(`SELECT count(*) FROM suppressions WHERE tenant_id = 'acme' AND email = 'user0@dest.example' AND reason IN ('complaint', 'hard_bounce')`); n != 1 {
			t.Error("complainer not suppressed")
		}
		if got := testutil.ToFloat64(e.metrics.complaints); got < 1 {
			t.Errorf("complaints counted %v", got)
		}
	})
	t.Run("complaint without Original-Rcpt-To or return path", func(t *testing.T) {
		m := e.message(3, 3)
		if status, reason := process(t, fblAddress, arf("", m.MessageID, "", "User2@dest.example")); status != "processed" {
			t.Fatalf("status %s (%s)", status, reason)
		}
		if n := e.count(`SELECT count(*) FROM recipient_events WHERE message_id = $1 AND rcpt_idx = 2 AND type = 'complained'`, m.ID); n != 1 {
			t.Error("the complaint did not find its recipient by Message-ID and To")
		}
	})
	t.Run("complaint quoting a forged return path", func(t *testing.T) {
		m := e.message(1, 1)
		rp := e.signer.Address(m.ID, 0)
		forged := rp[:strings.IndexByte(rp, '@')-1] + "q@" + bounceDomain
		if forged == rp {
			forged = rp[:strings.IndexByte(rp, '@')-1] + "r@" + bounceDomain
		}
		status, reason := process(t, fblAddress, arf(forged, m.MessageID, "user0@dest.example", "user0@dest.example"))
		if status != "unmatched" || !strings.Contains(reason, "does not verify") {
			t.Errorf("status %s (%s), want unmatched for a forged tag", status, reason)
		}
		if n := e.count(`SELECT count(*) FROM recipient_events WHERE message_id = $1`, m.ID); n != 0 {
			t.Error("a report with a forged return path was applied")
		}
	})
	t.Run("message not ours", func(t *testing.T) {
		rp := e.signer.Address(uuid.Must(uuid.NewV7()), 0)
		if status, _ := process(t, rp, dsn(rp, "x@dest.example", "failed", "5.1.1", "550 no")); status != "unmatched" {
			t.Errorf("status %s, want unmatched", status)
		}
	})
	t.Run("not a report", func(t *testing.T) {
		rp := e.signer.Address(uuid.Must(uuid.NewV7()), 0)
		status, reason := process(t, rp, "Subject: hello\r\n\r\nJust saying hi.\r\n")
		if status != "unparseable" || reason == "" {
			t.Errorf("status %s (%q), want unparseable with a reason", status, reason)
		}
	})
}

// TestCrashSafety: a report is stored before its 250, so with no processor
// running (or one killed mid-way, its lease held) nothing is lost: a
// processor started later applies it, once.
func TestCrashSafety(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	addr := e.listen(nil) // no processor: as if the process died after the 250
	m := e.message(1, 1)
	rp := e.signer.Address(m.ID, 0)
	if err := send(addr, "", []string{rp}, dsn(rp, "user0@dest.example", "failed", "5.1.1", "550 5.1.1 no such user")); err != nil {
		t.Fatal(err)
	}
	if n := e.count(`SELECT count(*) FROM inbound_messages WHERE status = 'pending'`); n != 1 {
		t.Fatalf("%d pending after the 250, want 1", n)
	}
	// A processor claims it and dies before finishing: its lease lapses.
	if rows, err := e.st.ClaimInbound(t.Context(), 10, 200*time.Millisecond); err != nil || len(rows) != 1 {
		t.Fatalf("claim: %d, %v", len(rows), err)
	}
	p := e.processor(func(o *ProcessorOptions) { o.Poll = 50 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	wait.For(t, "the report to be applied by the new processor", func() bool {
		return e.count(`SELECT count(*) FROM inbound_messages WHERE status = 'processed' AND tries = 2`) == 1
	})
	if n := e.count(`SELECT count(*) FROM recipients WHERE message_id = $1 AND status = 'bounced' AND bounce_async`, m.ID); n != 1 {
		t.Error("recipient not bounced")
	}
	if n := e.count(`SELECT count(*) FROM recipient_events WHERE message_id = $1`, m.ID); n != 1 {
		t.Errorf("%d events, want 1", n)
	}
}

// TestReportBeforeOutcome: a DSN can arrive before the worker has recorded
// the 250 it answers. The report waits (pending) while the worker holds
// the recipient, and is applied a second or so after: the delivered
// attempt stays on record and the recipient ends bounced.
func TestReportBeforeOutcome(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	addr := e.listen(nil)
	p := e.processor(nil) // the default lease: the report must come back sooner
	m := e.message(1, 0)
	now := time.Now()
	if _, err := e.st.TakeLease(t.Context(), m.ID, []int{0}, store.Lease{Owner: "w1", For: time.Minute,
		Next: now.Add(time.Minute), DueBy: now.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	rp := e.signer.Address(m.ID, 0)
	if err := send(addr, "", []string{rp}, dsn(rp, "user0@dest.example", "failed", "5.1.1", "550 5.1.1 no such user")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := e.count(`SELECT count(*) FROM inbound_messages WHERE status = 'pending'`); n != 1 {
		t.Fatal("the report did not wait for the worker")
	}
	if _, err := e.st.RecordOutcomes(t.Context(), m.ID, []store.Outcome{{Attempt: store.Attempt{Recipient: 0, Attempt: 1,
		StartedAt: now, SMTPCode: 250, Response: "250 ok", Outcome: store.RecipientDelivered}}}); err != nil {
		t.Fatal(err)
	}
	wait.Within(t, 10*time.Second, "the report to be applied once the attempt is recorded", func() bool {
		_, _ = p.RunOnce(t.Context())
		return e.count(`SELECT count(*) FROM inbound_messages WHERE status = 'processed'`) == 1
	})
	if n := e.count(`SELECT count(*) FROM attempts WHERE message_id = $1 AND outcome = 'delivered'`, m.ID); n != 1 {
		t.Error("the delivered attempt was lost")
	}
	if n := e.count(`SELECT count(*) FROM recipients WHERE message_id = $1 AND status = 'bounced' AND bounce_async`, m.ID); n != 1 {
		t.Error("the recipient is not bounced")
	}
}

// TestComplaintWithoutRecipients: an ARF report whose parse names no
// recipient at all (no Original-Rcpt-To) is still a complaint about the
// original's To.
func TestComplaintWithoutRecipients(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	addr := e.listen(nil)
	m := e.message(2, 2)
	p := e.processor(func(o *ProcessorOptions) {
		o.Parse = func([]byte) (*bounce.Report, error) {
			return &bounce.Report{Kind: bounce.KindARF, Feedback: "abuse",
				Original: bounce.OriginalHeaders{MessageID: m.MessageID, To: []string{"user1@dest.example"}}}, nil
		}
	})
	if err := send(addr, "", []string{fblAddress}, "Subject: complaint\r\n\r\nsee above\r\n"); err != nil {
		t.Fatal(err)
	}
	if n, err := p.RunOnce(t.Context()); err != nil || n != 1 {
		t.Fatalf("RunOnce: %d, %v", n, err)
	}
	if n := e.count(`SELECT count(*) FROM recipient_events WHERE message_id = $1 AND rcpt_idx = 1 AND type = 'complained'`, m.ID); n != 1 {
		t.Error("no complaint recorded")
	}
	if n := e.count(`SELECT count(*) FROM suppressions WHERE email = 'user1@dest.example' AND reason = 'complaint'`); n != 1 {
		t.Error("complainer not suppressed")
	}
}
