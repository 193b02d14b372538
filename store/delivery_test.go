package store

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestDeliveryLifecycle(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 4) // user0,2 @dest0.example; user1,3 @dest1.example
	m.Needs8Bit = true
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	d, err := s.LoadDelivery(t.Context(), m.ID, "dest0.example")
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if len(d.Recipients) != 2 || d.Recipients[0].Idx != 0 || d.Recipients[1].Idx != 2 || d.Signed || !d.Needs8Bit {
		t.Fatalf("delivery %+v", d)
	}
	if string(d.Body) != string(m.Body) || d.MailFrom != m.MailFrom {
		t.Errorf("body or sender differ: %+v", d)
	}

	// The first signature wins; a second worker gets it back.
	got, err := s.SaveSignature(t.Context(), m.ID, "DKIM-Signature: a\r\n")
	if err != nil || got != "DKIM-Signature: a\r\n" {
		t.Fatalf("save: %q %v", got, err)
	}
	got, err = s.SaveSignature(t.Context(), m.ID, "DKIM-Signature: b\r\n")
	if err != nil || got != "DKIM-Signature: a\r\n" {
		t.Fatalf("second save: %q %v", got, err)
	}

	next := time.Now().Add(time.Hour).Truncate(time.Microsecond)
	if err := s.MarkAttempting(t.Context(), m.ID, []int{0, 2}, next); err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Microsecond)
	retry := now.Add(5 * time.Minute)
	outs := []Outcome{
		{Attempt: Attempt{Recipient: 0, Attempt: 1, StartedAt: now, Duration: 30 * time.Millisecond, MXHost: "mx.dest0.example", MXIP: "127.0.0.2",
			TLSVersion: "TLS1.3", TLSCipher: "TLS_AES_128_GCM_SHA256", SMTPCode: 250, EnhancedCode: "2.0.0", Response: "ok", Outcome: RecipientDelivered}},
		{Attempt: Attempt{Recipient: 2, Attempt: 1, StartedAt: now, MXHost: "mx.dest0.example", SMTPCode: 451, EnhancedCode: "4.7.1", Response: "greylisted", Outcome: RecipientDeferred},
			NextAttemptAt: &retry},
	}
	complete, err := s.RecordOutcomes(t.Context(), m.ID, outs)
	if err != nil || complete {
		t.Fatalf("record: complete=%v err=%v", complete, err)
	}
	v, err := s.GetMessage(t.Context(), k.TenantID, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	r0, r2 := v.Recipients[0], v.Recipients[2]
	if r0.Status != RecipientDelivered || r0.Attempts != 1 || *r0.SMTPCode != 250 || *r0.TLSVersion != "TLS1.3" || r0.NextAttemptAt != nil {
		t.Errorf("recipient 0: %+v", r0)
	}
	if r2.Status != RecipientDeferred || r2.NextAttemptAt == nil || !r2.NextAttemptAt.Equal(retry) || *r2.EnhancedCode != "4.7.1" {
		t.Errorf("recipient 2: %+v", r2)
	}
	// Recording again (a reclaimed job) leaves final recipients alone.
	if _, err := s.RecordOutcomes(t.Context(), m.ID, outs[:1]); err != nil {
		t.Fatal(err)
	}
	if n := count(t, s, "SELECT attempts FROM recipients WHERE message_id = $1 AND idx = 0", m.ID); n != 1 {
		t.Errorf("final recipient counted %d attempts", n)
	}
	d, err = s.LoadDelivery(t.Context(), m.ID, "dest0.example")
	if err != nil || len(d.Recipients) != 1 || d.Recipients[0].Idx != 2 || d.Recipients[0].Attempts != 1 || !d.Signed {
		t.Fatalf("reload: %+v %v", d, err)
	}

	// Finish every recipient: the body goes, the metadata stays.
	var rest []Outcome
	for _, i := range []int{1, 2, 3} {
		rest = append(rest, Outcome{Attempt: Attempt{Recipient: i, Attempt: 2, StartedAt: now, SMTPCode: 550, EnhancedCode: "5.1.1", Response: "no such user", Outcome: RecipientBounced}})
	}
	complete, err = s.RecordOutcomes(t.Context(), m.ID, rest)
	if err != nil || !complete {
		t.Fatalf("record rest: complete=%v err=%v", complete, err)
	}
	if n := count(t, s, "SELECT count(*) FROM messages WHERE id = $1 AND body IS NULL AND completed_at IS NOT NULL", m.ID); n != 1 {
		t.Errorf("body kept after every recipient is final")
	}
	v, _ = s.GetMessage(t.Context(), k.TenantID, m.ID)
	if v.Status != StatusPartiallyDelivered {
		t.Errorf("status %q", v.Status)
	}
	d, err = s.LoadDelivery(t.Context(), m.ID, "dest1.example")
	if err != nil || len(d.Recipients) != 0 {
		t.Errorf("nothing should be pending: %+v %v", d, err)
	}
	if _, err := s.LoadDelivery(t.Context(), uuid.Must(uuid.NewV7()), "x.example"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown message: %v", err)
	}
}

func TestSaveSignatureConcurrent(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 2)
	if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	got := make([]string, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, err := s.SaveSignature(t.Context(), m.ID, string(rune('a'+i)))
			if err != nil {
				t.Error(err)
			}
			got[i] = h
		}()
	}
	wg.Wait()
	for _, h := range got {
		if h != got[0] {
			t.Fatalf("workers disagree on the signature: %q", got)
		}
	}
}

func TestDKIMKeys(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	for _, k := range []DKIMKey{
		{Domain: "Example.com", Selector: "s1", Algorithm: "rsa2048", PrivateKey: []byte("sealed1"), PublicKey: []byte("pub1")},
		{Domain: "example.com", Selector: "s2", Algorithm: "ed25519", PrivateKey: []byte("sealed2"), PublicKey: []byte("pub2")},
		{Domain: "other.test", Selector: "s1", Algorithm: "ed25519", PrivateKey: []byte("sealed3"), PublicKey: []byte("pub3")},
	} {
		if err := s.CreateDKIMKey(t.Context(), k); err != nil {
			t.Fatal(err)
		}
	}
	err := s.CreateDKIMKey(t.Context(), DKIMKey{Domain: "example.com", Selector: "s1", Algorithm: "ed25519", PrivateKey: []byte("x"), PublicKey: []byte("y")})
	if !errors.Is(err, ErrExists) {
		t.Errorf("duplicate selector: %v", err)
	}
	keys, err := s.ActiveDKIMKeys(t.Context(), "EXAMPLE.com")
	if err != nil || len(keys) != 2 || keys[0].Algorithm != "ed25519" || string(keys[1].PrivateKey) != "sealed1" {
		t.Errorf("active keys: %+v %v", keys, err)
	}
	all, err := s.ListDKIMKeys(t.Context())
	if err != nil || len(all) != 3 {
		t.Errorf("list: %d %v", len(all), err)
	}
}
