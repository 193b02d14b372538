package store

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestAcceptBatchThenGet(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := t.Context()
	k := newTenant(t, s, "acme")

	const n = 1000
	msgs := make([]NewMessage, n)
	for i := range msgs {
		msgs[i] = testMessage(k, 2)
	}
	msgs[7].SendAt = msgs[7].CreatedAt.Add(time.Hour) // scheduled
	msgs[8].Tags, msgs[8].Metadata = nil, nil
	if err := s.AcceptBatch(ctx, msgs); err != nil {
		t.Fatalf("AcceptBatch: %v", err)
	}
	if got := count(t, s, `SELECT count(*) FROM messages`); got != n {
		t.Errorf("%d messages stored, want %d", got, n)
	}
	if got := count(t, s, `SELECT count(*) FROM recipients WHERE status = 'queued' AND attempts = 0`); got != 2*n {
		t.Errorf("%d queued recipients, want %d", got, 2*n)
	}

	for _, i := range []int{0, 7, 8, n - 1} {
		m := msgs[i]
		t.Run(fmt.Sprint("message ", i), func(t *testing.T) {
			v, err := s.GetMessage(ctx, k.TenantID, m.ID)
			if err != nil {
				t.Fatalf("GetMessage: %v", err)
			}
			if v.ID != m.ID || v.MessageID != m.MessageID || v.From != m.From || v.Subject != m.Subject {
				t.Errorf("GetMessage = %+v, want the fields of %+v", v, m)
			}
			wantTags, wantMeta := m.Tags, m.Metadata
			if wantTags == nil {
				wantTags, wantMeta = []string{}, map[string]string{}
			}
			if !slices.Equal(v.Tags, wantTags) || !maps.Equal(v.Metadata, wantMeta) || v.Tags == nil || v.Metadata == nil {
				t.Errorf("tags %q metadata %v, want %q %v", v.Tags, v.Metadata, wantTags, wantMeta)
			}
			if v.Status != StatusPending {
				t.Errorf("status %q, want pending", v.Status)
			}
			if !v.CreatedAt.Equal(m.CreatedAt) {
				t.Errorf("created %v, want %v", v.CreatedAt, m.CreatedAt)
			}
			due := m.CreatedAt
			wantEvents := []string{EventAccepted}
			if !m.SendAt.IsZero() {
				due = m.SendAt
				wantEvents = append(wantEvents, EventScheduled)
				if v.SendAt == nil || !v.SendAt.Equal(m.SendAt) {
					t.Errorf("send_at %v, want %v", v.SendAt, m.SendAt)
				}
			} else if v.SendAt != nil {
				t.Errorf("send_at %v, want none", v.SendAt)
			}
			if got := eventTypes(v.Events); !slices.Equal(got, wantEvents) {
				t.Errorf("events %q, want %q", got, wantEvents)
			}
			if !v.Events[0].At.Equal(m.CreatedAt) {
				t.Errorf("accepted at %v, want %v", v.Events[0].At, m.CreatedAt)
			}
			if len(v.Recipients) != 2 {
				t.Fatalf("%d recipients, want 2", len(v.Recipients))
			}
			for j, r := range v.Recipients {
				if r.Email != m.Recipients[j].Email || r.Status != RecipientQueued || r.Attempts != 0 ||
					r.NextAttemptAt == nil || !r.NextAttemptAt.Equal(due) || r.LastAttemptAt != nil || r.SMTPCode != nil {
					t.Errorf("recipient %d = %+v, want %s queued, due %v", j, r, m.Recipients[j].Email, due)
				}
			}
		})
	}
	var domain string
	var size int
	var body []byte
	if err := s.pool.QueryRow(ctx, `SELECT r.domain, m.size, m.body FROM recipients r JOIN messages m ON m.id = r.message_id
WHERE r.message_id = $1 AND r.idx = 1`, msgs[0].ID).Scan(&domain, &size, &body); err != nil {
		t.Fatal(err)
	}
	if domain != "dest1.example" || size != len(msgs[0].Body) || !bytes.Equal(body, msgs[0].Body) {
		t.Errorf("stored domain %q size %d body %q; want dest1.example (from the address, lower case), %d, the body",
			domain, size, body, len(msgs[0].Body))
	}
}

func eventTypes(es []Event) []string {
	var ts []string
	for _, e := range es {
		ts = append(ts, e.Type)
	}
	return ts
}

func TestGetMessageTenantIsolation(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := t.Context()
	acme, other := newTenant(t, s, "acme"), newTenant(t, s, "other")
	m := testMessage(acme, 1)
	if err := s.AcceptBatch(ctx, []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	if err := s.InsertAttempts(ctx, []Attempt{{MessageID: m.ID, Attempt: 1, StartedAt: time.Now(), Outcome: "deferred"}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		tenant string
		id     uuid.UUID
	}{
		{"another tenant's message", other.TenantID, m.ID},
		{"unknown id", acme.TenantID, uuid.Must(uuid.NewV7())},
		{"unknown tenant", "nobody", m.ID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := s.GetMessage(ctx, tt.tenant, tt.id)
			if !errors.Is(err, ErrNotFound) || v != nil {
				t.Errorf("GetMessage = %+v, %v; want nil, ErrNotFound", v, err)
			}
		})
	}
	if _, err := s.GetMessage(ctx, acme.TenantID, m.ID); err != nil {
		t.Errorf("GetMessage by its own tenant: %v", err)
	}
}

func TestAcceptBatchRefuses(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	tests := []struct {
		name    string
		edit    func(ms []NewMessage)
		wantErr string
	}{
		{"nil id", func(ms []NewMessage) { ms[1].ID = uuid.Nil }, "message 1: id is nil"},
		{"no tenant", func(ms []NewMessage) { ms[0].TenantID = "" }, "tenant is empty"},
		{"bad ingress", func(ms []NewMessage) { ms[0].Ingress = "ftp" }, `ingress "ftp"`},
		{"no recipients", func(ms []NewMessage) { ms[2].Recipients = nil }, "message 2: no recipients"},
		{"empty recipient", func(ms []NewMessage) { ms[0].Recipients[0].Email = "" }, "recipient 0: email is empty"},
		{"recipient without domain", func(ms []NewMessage) { ms[0].Recipients[0].Email = "bob" }, "has no domain"},
		{"too many recipients", func(ms []NewMessage) {
			ms[0].Recipients = make([]NewRecipient, maxRecipients+1)
			for i := range ms[0].Recipients {
				ms[0].Recipients[i].Email = "a@b.example"
			}
		}, "at most 32768"},
		// Caught by PostgreSQL, not check: the whole batch rolls back.
		{"duplicate id", func(ms []NewMessage) { ms[2].ID = ms[0].ID }, "messages_pkey"},
		{"unknown tenant", func(ms []NewMessage) { ms[2].TenantID = "nobody" }, "messages_tenant_id_fkey"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms := []NewMessage{testMessage(k, 1), testMessage(k, 1), testMessage(k, 1)}
			tt.edit(ms)
			err := s.AcceptBatch(t.Context(), ms)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("AcceptBatch = %v, want error containing %q", err, tt.wantErr)
			}
			if n := count(t, s, `SELECT count(*) FROM messages`); n != 0 {
				t.Errorf("%d messages stored by a refused batch", n)
			}
		})
	}
}

func TestDeleteMessages(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := t.Context()
	k := newTenant(t, s, "acme")
	a, b, c := testMessage(k, 2), testMessage(k, 2), testMessage(k, 1)
	if err := s.AcceptBatch(ctx, []NewMessage{a, b}); err != nil {
		t.Fatal(err)
	}
	key := Idempotency{Key: "req-1", RequestHash: []byte{1}, Status: 202, Response: []byte(`{"id":"c"}`)}
	if _, err := s.AcceptIdempotent(ctx, c, key); err != nil {
		t.Fatal(err)
	}

	if err := s.DeleteMessages(ctx, []uuid.UUID{a.ID, c.ID, uuid.Must(uuid.NewV7())}); err != nil {
		t.Fatalf("DeleteMessages: %v", err)
	}
	for _, m := range []NewMessage{a, c} {
		if _, err := s.GetMessage(ctx, k.TenantID, m.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("GetMessage(deleted) = %v, want ErrNotFound", err)
		}
	}
	if n := count(t, s, `SELECT count(*) FROM recipients WHERE message_id = ANY($1)`, []uuid.UUID{a.ID, c.ID}); n != 0 {
		t.Errorf("%d recipients of deleted messages remain", n)
	}
	if n := count(t, s, `SELECT count(*) FROM idempotency_keys`); n != 0 {
		t.Errorf("%d idempotency rows remain for a deleted message", n)
	}
	if v, err := s.GetMessage(ctx, k.TenantID, b.ID); err != nil || len(v.Recipients) != 2 {
		t.Errorf("GetMessage(kept) = %v, %v", v, err)
	}
	// The undone request can be retried under its key and is accepted anew.
	c2 := testMessage(k, 1)
	if existing, err := s.AcceptIdempotent(ctx, c2, key); err != nil || existing != nil {
		t.Errorf("retry after undo = %v, %v; want a fresh accept", existing, err)
	}
	if err := s.DeleteMessages(ctx, nil); err != nil {
		t.Errorf("DeleteMessages(nil): %v", err)
	}
}

func TestAcceptIdempotent(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := t.Context()
	k := newTenant(t, s, "acme")
	other := newTenant(t, s, "other")
	now := time.Now().Truncate(time.Microsecond)
	first := Idempotency{Key: "order-42", RequestHash: []byte("hash-1"), Status: 202,
		Response: []byte(`{"id":"x",  "b":1}`), CreatedAt: now}

	m1 := testMessage(k, 1)
	existing, err := s.AcceptIdempotent(ctx, m1, first)
	if err != nil || existing != nil {
		t.Fatalf("first AcceptIdempotent = %v, %v; want nil, nil", existing, err)
	}

	t.Run("repeat returns the first answer and stores nothing", func(t *testing.T) {
		m2 := testMessage(k, 1)
		again := Idempotency{Key: "order-42", RequestHash: []byte("hash-2"), Status: 500, Response: []byte(`{}`),
			CreatedAt: now.Add(23 * time.Hour)}
		existing, err := s.AcceptIdempotent(ctx, m2, again)
		if err != nil || existing == nil {
			t.Fatalf("repeat = %v, %v; want the first record", existing, err)
		}
		if existing.Key != first.Key || !bytes.Equal(existing.RequestHash, first.RequestHash) ||
			existing.Status != 202 || !bytes.Equal(existing.Response, first.Response) || !existing.CreatedAt.Equal(now) {
			t.Errorf("existing = %+v, want %+v (response byte for byte)", existing, first)
		}
		if _, err := s.GetMessage(ctx, k.TenantID, m2.ID); !errors.Is(err, ErrNotFound) {
			t.Errorf("repeat stored its message: %v", err)
		}
	})

	t.Run("another tenant's key of the same name is separate", func(t *testing.T) {
		if existing, err := s.AcceptIdempotent(ctx, testMessage(other, 1), first); err != nil || existing != nil {
			t.Errorf("AcceptIdempotent = %v, %v; want a fresh accept", existing, err)
		}
	})

	t.Run("expired key is replaced", func(t *testing.T) {
		old := Idempotency{Key: "old", RequestHash: []byte("a"), Status: 202, Response: []byte(`1`),
			CreatedAt: now.Add(-25 * time.Hour)}
		mOld := testMessage(k, 1)
		if _, err := s.AcceptIdempotent(ctx, mOld, old); err != nil {
			t.Fatal(err)
		}
		mNew := testMessage(k, 1)
		renewed := Idempotency{Key: "old", RequestHash: []byte("b"), Status: 202, Response: []byte(`2`), CreatedAt: now}
		existing, err := s.AcceptIdempotent(ctx, mNew, renewed)
		if err != nil || existing != nil {
			t.Fatalf("AcceptIdempotent(expired key) = %v, %v; want a fresh accept", existing, err)
		}
		var resp []byte
		var msgID uuid.UUID
		if err := s.pool.QueryRow(ctx, `SELECT response, message_id FROM idempotency_keys WHERE tenant_id = $1 AND key = 'old'`,
			k.TenantID).Scan(&resp, &msgID); err != nil {
			t.Fatal(err)
		}
		if string(resp) != "2" || msgID != mNew.ID {
			t.Errorf("key row has response %s, message %s; want the new ones", resp, msgID)
		}
		for _, m := range []NewMessage{mOld, mNew} {
			if _, err := s.GetMessage(ctx, k.TenantID, m.ID); err != nil {
				t.Errorf("GetMessage: %v", err)
			}
		}
	})

	t.Run("refuses an empty key", func(t *testing.T) {
		if _, err := s.AcceptIdempotent(ctx, testMessage(k, 1), Idempotency{}); err == nil {
			t.Error("AcceptIdempotent with an empty key succeeded")
		}
	})

	t.Run("purge", func(t *testing.T) {
		before := count(t, s, `SELECT count(*) FROM idempotency_keys`)
		n, err := s.PurgeIdempotency(ctx, now.Add(-IdempotencyTTL))
		if err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("purged %d keys younger than the TTL", n)
		}
		n, err = s.PurgeIdempotency(ctx, now.Add(time.Second))
		if err != nil || int(n) != before {
			t.Errorf("PurgeIdempotency(after all) = %d, %v; want %d", n, err, before)
		}
		if _, err := s.GetMessage(ctx, k.TenantID, m1.ID); err != nil {
			t.Errorf("purging keys removed their message: %v", err)
		}
	})
}

// TestAcceptIdempotentConcurrent sends one key from several goroutines at
// once: exactly one message is stored and every other caller gets its
// record.
func TestAcceptIdempotentConcurrent(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	const callers = 4
	for round := range 5 {
		key := Idempotency{Key: fmt.Sprint("k", round), RequestHash: []byte("h"), Status: 202, Response: []byte(`{}`)}
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			accepted []uuid.UUID
			repeats  int
		)
		start := make(chan struct{})
		for range callers {
			m := testMessage(k, 1)
			wg.Go(func() {
				<-start
				existing, err := s.AcceptIdempotent(t.Context(), m, key)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					t.Errorf("AcceptIdempotent: %v", err)
				case existing == nil:
					accepted = append(accepted, m.ID)
				default:
					repeats++
				}
			})
		}
		close(start)
		wg.Wait()
		if len(accepted) != 1 || repeats != callers-1 {
			t.Fatalf("round %d: %d accepted, %d repeats; want 1 and %d", round, len(accepted), repeats, callers-1)
		}
		var stored uuid.UUID
		if err := s.pool.QueryRow(t.Context(), `SELECT message_id FROM idempotency_keys WHERE key = $1`, key.Key).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		if stored != accepted[0] {
			t.Errorf("key points at %s, the accepted message is %s", stored, accepted[0])
		}
	}
	if n := count(t, s, `SELECT count(*) FROM messages`); n != 5 {
		t.Errorf("%d messages stored, want one per key (5)", n)
	}
}

// TestLookupIdempotencyAndExists: the two reads intake settles an accept
// with: a live key is found (only the tenant's own, only within the TTL),
// and MessageExists tells a committed message from one never written.
func TestLookupIdempotencyAndExists(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := t.Context()
	k := newTenant(t, s, "acme")
	other := newTenant(t, s, "other")
	now := time.Now().Truncate(time.Microsecond)
	m := testMessage(k, 1)
	if _, err := s.AcceptIdempotent(ctx, m, Idempotency{Key: "k1", RequestHash: []byte("h"), Status: 202, Response: []byte(`{}`), CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		tenant string
		key    string
		at     time.Time
		found  bool
	}{
		{"live", k.TenantID, "k1", now.Add(time.Hour), true},
		{"expired", k.TenantID, "k1", now.Add(IdempotencyTTL + time.Second), false},
		{"other tenant", other.TenantID, "k1", now, false},
		{"unknown key", k.TenantID, "k2", now, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.LookupIdempotency(ctx, tc.tenant, tc.key, tc.at)
			if err != nil {
				t.Fatal(err)
			}
			if (got != nil) != tc.found {
				t.Fatalf("LookupIdempotency = %+v, want found %v", got, tc.found)
			}
			if got != nil && (got.Status != 202 || string(got.RequestHash) != "h" || !got.CreatedAt.Equal(now)) {
				t.Errorf("record %+v", got)
			}
		})
	}
	for _, tc := range []struct {
		id   uuid.UUID
		want bool
	}{{m.ID, true}, {uuid.Must(uuid.NewV7()), false}} {
		if got, err := s.MessageExists(ctx, tc.id); err != nil || got != tc.want {
			t.Errorf("MessageExists(%s) = %v, %v; want %v", tc.id, got, err, tc.want)
		}
	}
}
