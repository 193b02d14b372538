package store

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/internal/testenv"
)

// wired is one event of a message as the outbox holds it.
type wired struct {
	Type     string
	Rcpt     int
	Sequence int
	Data     struct {
		Recipient    string
		Attempt      *int
		SMTPCode     *int    `json:"smtp_code"`
		EnhancedCode *string `json:"enhanced_code"`
		BounceType   *string `json:"bounce_type"`
		BounceClass  *string `json:"bounce_class"`
		Async        bool
		Sequence     int
	}
}

// messageEvents returns the message's events in the order they were
// written.
func messageEvents(t *testing.T, s *Store, id uuid.UUID) []wired {
	t.Helper()
	rows, err := s.pool.Query(t.Context(), `SELECT type, rcpt_idx, sequence, data FROM events WHERE message_id = $1 ORDER BY xid, pos`, id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []wired
	for rows.Next() {
		var w wired
		var idx int16
		var data []byte
		if err := rows.Scan(&w.Type, &idx, &w.Sequence, &data); err != nil {
			t.Fatal(err)
		}
		w.Rcpt = int(idx)
		if err := json.Unmarshal(data, &w.Data); err != nil {
			t.Fatal(err)
		}
		if w.Data.Sequence != w.Sequence {
			t.Errorf("%s: data.sequence %d, column %d", w.Type, w.Data.Sequence, w.Sequence)
		}
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// kinds lists the events as "type/recipient/sequence".
func kinds(evs []wired) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Type + "/" + string(rune('0'+e.Rcpt)) + "/" + string(rune('0'+e.Sequence))
	}
	return out
}

// TestEventsOfEveryChange: accept, RecordOutcomes and ApplyReport write
// the events of what they change, numbered per recipient, with their
// details; a repeated or stale record adds none.
func TestEventsOfEveryChange(t *testing.T) {
	t.Parallel()
	s := newStoreWith(t, Options{SoftBounceLimit: 5})
	k := newTenant(t, s, "acme")
	ep, _ := newEndpoint(t, s, "acme", EventTypes()...)
	woke := 0
	s.onEvents = func() { woke++ }
	now := time.Now().Truncate(time.Microsecond)

	t.Run("accept", func(t *testing.T) {
		m := testMessage(k, 3)
		m.Recipients[2].Suppressed = SuppressedComplaint
		m.Tags = append(m.Tags, `q"<&>é`)
		m.Metadata["k"] = "line\nbreak"
		later := testMessage(k, 1)
		later.SendAt = now.Add(time.Hour)
		if err := s.AcceptBatch(t.Context(), []NewMessage{m, later}); err != nil {
			t.Fatal(err)
		}
		want := []string{"message.accepted/0/1", "message.accepted/1/1", "message.accepted/2/1", "message.suppressed/2/2"}
		evs := messageEvents(t, s, m.ID)
		if got := kinds(evs); !slices.Equal(got, want) {
			t.Errorf("accept wrote %v, want %v", got, want)
		}
		if d := evs[3].Data; d.BounceClass == nil || *d.BounceClass != BounceSuppressed || d.Recipient != m.Recipients[2].Email {
			t.Errorf("suppressed event data %+v", d)
		}
		// The data accept builds for its COPY is what insertEvents builds
		// from the rows.
		if n := count(t, s, `SELECT count(*) FROM events e JOIN messages m ON m.id = e.message_id
			JOIN recipients r ON r.message_id = e.message_id AND r.idx = e.rcpt_idx
			WHERE e.message_id = $1 AND e.type = 'message.accepted' AND e.data = jsonb_build_object('id', m.id,
				'message_id', m.message_id, 'recipient', r.email, 'tenant', m.tenant_id, 'tags', to_jsonb(m.tags),
				'metadata', m.metadata, 'sequence', e.sequence) || $2::jsonb`, m.ID, string(zeroDetail)); n != 3 {
			t.Errorf("%d of 3 accepted events carry the payload the rows give", n)
		}
		if got := kinds(messageEvents(t, s, later.ID)); !slices.Equal(got, []string{"message.accepted/0/1", "message.scheduled/0/2"}) {
			t.Errorf("scheduled message: %v", got)
		}
		if n := count(t, s, `SELECT count(*) FROM webhook_deliveries d JOIN events e ON e.id = d.event_id
			WHERE e.message_id = ANY($1) AND d.endpoint_id = $2`, []uuid.UUID{m.ID, later.ID}, ep.ID); n != 6 {
			t.Errorf("%d deliveries, want 6", n)
		}
		if woke != 1 {
			t.Errorf("OnEvents called %d times after one accept, want 1", woke)
		}
		if n := count(t, s, `SELECT event_seq FROM recipients WHERE message_id = $1 AND idx = 2`, m.ID); n != 2 {
			t.Errorf("event_seq %d after two events, want 2", n)
		}
	})

	t.Run("idempotent accept", func(t *testing.T) {
		m := testMessage(k, 1)
		key := Idempotency{Key: "k-" + m.ID.String(), RequestHash: []byte("h"), Status: 202, Response: []byte("{}")}
		for range 2 {
			if _, err := s.AcceptIdempotent(t.Context(), m, key); err != nil {
				t.Fatal(err)
			}
		}
		if got := kinds(messageEvents(t, s, m.ID)); !slices.Equal(got, []string{"message.accepted/0/1"}) {
			t.Errorf("idempotent accept and its repeat wrote %v", got)
		}
	})

	t.Run("outcomes", func(t *testing.T) {
		m := testMessage(k, 4)
		if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
			t.Fatal(err)
		}
		att := func(rcpt, n int, outcome string, code int, enh, typ, class string) Attempt {
			return Attempt{Recipient: rcpt, Attempt: n, StartedAt: now, SMTPCode: code, EnhancedCode: enh,
				Response: enh + " reply", MXHost: "mx.dest.example", TLSVersion: "TLS1.3", Outcome: outcome,
				BounceType: typ, BounceClass: class}
		}
		next := now.Add(time.Minute)
		first := []Outcome{
			{Attempt: att(0, 1, RecipientDeferred, 451, "4.2.0", BounceSoft, "other"), NextAttemptAt: &next},
			{Attempt: att(1, 1, RecipientBounced, 550, "5.1.1", BounceHard, "invalid_recipient"), Suppress: true},
			{Attempt: att(2, 1, RecipientBounced, 451, "5.4.7", BounceSoft, "expired")},
			{Attempt: att(3, 1, RecipientDelivered, 250, "2.0.0", "", "")},
		}
		// Twice: a retry after a lost commit reply adds nothing.
		for range 2 {
			if _, err := s.RecordOutcomes(t.Context(), m.ID, first); err != nil {
				t.Fatal(err)
			}
		}
		// Attempt 2 of recipient 0, then a stale repeat of its attempt 1.
		if _, err := s.RecordOutcomes(t.Context(), m.ID, []Outcome{{Attempt: att(0, 2, RecipientDelivered, 250, "2.0.0", "", "")}}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.RecordOutcomes(t.Context(), m.ID, first[:1]); err != nil {
			t.Fatal(err)
		}
		evs := messageEvents(t, s, m.ID)
		want := []string{"message.accepted/0/1", "message.accepted/1/1", "message.accepted/2/1", "message.accepted/3/1",
			"message.deferred/0/2", "message.bounced/1/2", "message.suppressed/1/3", "message.expired/2/2",
			"message.delivered/3/2", "message.delivered/0/3"}
		if got := kinds(evs); !slices.Equal(got, want) {
			t.Fatalf("events %v, want %v", got, want)
		}
		b := evs[5].Data
		if b.Attempt == nil || *b.Attempt != 1 || b.SMTPCode == nil || *b.SMTPCode != 550 || *b.EnhancedCode != "5.1.1" ||
			*b.BounceType != BounceHard || *b.BounceClass != "invalid_recipient" || b.Async {
			t.Errorf("bounced data %+v", b)
		}
		if d := evs[9].Data; d.Attempt == nil || *d.Attempt != 2 || d.BounceType != nil {
			t.Errorf("delivered data %+v", d)
		}
	})

	t.Run("reports", func(t *testing.T) {
		m := testMessage(k, 2)
		// Addresses "outcomes" did not put on the list already.
		m.Recipients = []NewRecipient{{Email: "r0@reports.example"}, {Email: "r1@reports.example"}}
		if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			if _, err := s.RecordOutcomes(t.Context(), m.ID, []Outcome{{Attempt: Attempt{Recipient: i, Attempt: 1,
				StartedAt: now, SMTPCode: 250, Outcome: RecipientDelivered}}}); err != nil {
				t.Fatal(err)
			}
		}
		for _, r := range []AsyncReport{
			{MessageID: m.ID, RcptIdx: 0, Type: EventDeferred, EnhancedCode: "4.4.1", Response: "delayed"},
			{MessageID: m.ID, RcptIdx: 0, Type: EventBounced, SMTPCode: 550, EnhancedCode: "5.1.1",
				BounceType: BounceHard, BounceClass: "invalid_recipient", Suppress: true},
			{MessageID: m.ID, RcptIdx: 1, Type: EventComplained, Response: "abuse"},
		} {
			if res, err := s.ApplyReport(t.Context(), r); err != nil || !res.Applied {
				t.Fatalf("apply %s: %+v, %v", r.Type, res, err)
			}
		}
		evs := messageEvents(t, s, m.ID)
		want := []string{"message.accepted/0/1", "message.accepted/1/1", "message.delivered/0/2", "message.delivered/1/2",
			"message.deferred/0/3", "message.bounced/0/4", "message.suppressed/0/5", "message.complained/1/3",
			"message.suppressed/1/4"}
		if got := kinds(evs); !slices.Equal(got, want) {
			t.Fatalf("events %v, want %v", got, want)
		}
		for _, e := range evs[4:] {
			if !e.Data.Async {
				t.Errorf("%s is not async", e.Type)
			}
		}
		if d := evs[5].Data; *d.BounceClass != "invalid_recipient" || *d.BounceType != BounceHard {
			t.Errorf("async bounce data %+v", d)
		}
	})
}

// TestNoChangeWithoutItsEvent: when the event cannot be written, the
// change it describes rolls back with it, and the reverse.
func TestNoChangeWithoutItsEvent(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	newEndpoint(t, s, "acme", EventTypes()...)
	m := testMessage(k, 1)
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	// A trigger that fails every message.delivered event: the outcome that
	// writes one must not commit.
	if _, err := s.pool.Exec(t.Context(), `CREATE FUNCTION refuse_delivered() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN IF NEW.type = 'message.delivered' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$;
CREATE TRIGGER refuse_delivered BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_delivered()`); err != nil {
		t.Fatal(err)
	}
	o := []Outcome{{Attempt: Attempt{Recipient: 0, Attempt: 1, StartedAt: time.Now(), SMTPCode: 250, Outcome: RecipientDelivered}}}
	if _, err := s.RecordOutcomes(t.Context(), m.ID, o); err == nil {
		t.Fatal("RecordOutcomes succeeded without its event")
	}
	if n := count(t, s, `SELECT count(*) FROM recipients WHERE message_id = $1 AND status = 'queued' AND attempts = 0`, m.ID); n != 1 {
		t.Error("the recipient changed though its event failed")
	}
	if n := count(t, s, `SELECT count(*) FROM attempts WHERE message_id = $1`, m.ID); n != 0 {
		t.Error("the attempt was recorded though its event failed")
	}
	if _, err := s.pool.Exec(t.Context(), `DROP TRIGGER refuse_delivered ON events`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordOutcomes(t.Context(), m.ID, o); err != nil {
		t.Fatal(err)
	}
	if got := kinds(messageEvents(t, s, m.ID)); !slices.Equal(got, []string{"message.accepted/0/1", "message.delivered/0/2"}) {
		t.Errorf("after the retry: %v", got)
	}

	// The reverse: an accept that fails (the id exists) writes no event.
	before := count(t, s, `SELECT count(*) FROM events`)
	dup := testMessage(k, 1)
	dup.ID = m.ID
	if err := s.AcceptBatch(t.Context(), []NewMessage{testMessage(k, 1), dup}); err == nil {
		t.Fatal("accepted a message id twice")
	}
	if n := count(t, s, `SELECT count(*) FROM events`); n != before {
		t.Errorf("a failed accept wrote %d events", n-before)
	}
}

// TestWebhookSecretsSealed: with Options.Secrets the signing secret is
// stored sealed, and a claim opens it again (both secrets after a
// rotation); under another key the claim fails rather than sign wrong.
func TestWebhookSecretsSealed(t *testing.T) {
	t.Parallel()
	sealer, err := dkim.NewSealer([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	url := testenv.Database(t)
	s, err := Open(t.Context(), Options{URL: url, Secrets: sealer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if _, err := s.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	k := newTenant(t, s, "acme")
	ep, secret := newEndpoint(t, s, "acme", EventTypes()...)
	var stored []byte
	if err := s.pool.QueryRow(t.Context(), `SELECT secret FROM webhook_endpoints WHERE id = $1`, ep.ID).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if !dkim.IsSealed(stored) || bytes.Contains(stored, secret) {
		t.Fatalf("secret stored in the clear: %x", stored)
	}
	_, rotated, err := s.RotateWebhookSecret(t.Context(), "acme", ep.ID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	acceptedMessage(t, s, k, 1)
	if err := s.AppendEvents(t.Context(), []NewEvent{{Type: EventMessageAccepted, MessageID: uuid.Nil, TenantID: "acme"}}); err != nil {
		t.Fatal(err)
	}
	claim := WebhookClaim{Owner: "t", Lease: time.Minute, Limit: 10, PerEndpoint: 10}
	ds, err := s.ClaimWebhookDeliveries(t.Context(), claim)
	if err != nil || len(ds) != 1 {
		t.Fatalf("claim: %d, %v", len(ds), err)
	}
	if len(ds[0].Secrets) != 2 || !bytes.Equal(ds[0].Secrets[0], rotated) || !bytes.Equal(ds[0].Secrets[1], secret) {
		t.Errorf("claimed secrets do not open to the new and the old one")
	}

	other, err := dkim.NewSealer([]byte("another key, another key, another key"))
	if err != nil {
		t.Fatal(err)
	}
	s2, err := Open(t.Context(), Options{URL: url, Secrets: other})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s2.Close)
	if _, err := s.pool.Exec(t.Context(), `UPDATE webhook_deliveries SET lease_until = now() - interval '1 s'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.ClaimWebhookDeliveries(t.Context(), claim); err == nil {
		t.Error("a claim under another MAILFERRY_SECRET_KEY succeeded")
	}
}
