package store

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestAcceptSuppressed: a recipient accepted as suppressed is final from
// the start with its reason and class, is not pending for delivery, and a
// message whose every recipient is suppressed is complete without a body.
func TestAcceptSuppressed(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	some := testMessage(k, 2) // user0@Dest0.example, user1@Dest1.example
	some.Recipients[1].Suppressed = SuppressedHardBounce
	all := testMessage(k, 1)
	all.Recipients[0].Suppressed = SuppressedManual
	if err := s.AcceptBatch(t.Context(), []NewMessage{some, all}); err != nil {
		t.Fatal(err)
	}
	v, err := s.GetMessage(t.Context(), k.TenantID, some.ID)
	if err != nil {
		t.Fatal(err)
	}
	r := v.Recipients[1]
	if r.Status != RecipientSuppressed || deref(r.SuppressedReason) != SuppressedHardBounce ||
		deref(r.BounceType) != BounceHard || deref(r.BounceClass) != BounceSuppressed {
		t.Errorf("suppressed recipient %s %v %v %v", r.Status, deref(r.SuppressedReason), deref(r.BounceType), deref(r.BounceClass))
	}
	if v.Recipients[0].Status != RecipientQueued || v.Recipients[0].BounceClass != nil {
		t.Errorf("other recipient %s %v", v.Recipients[0].Status, v.Recipients[0].BounceClass)
	}
	var sup *Event
	for i, e := range v.Events {
		if e.Type == RecipientSuppressed {
			sup = &v.Events[i]
		}
	}
	if sup == nil || sup.Recipient != "user1@Dest1.example" || deref(sup.BounceClass) != BounceSuppressed {
		t.Errorf("suppressed event %+v", sup)
	}
	d, err := s.LoadDelivery(t.Context(), some.ID, "dest1.example")
	if err != nil || len(d.Recipients) != 0 {
		t.Errorf("suppressed recipient pending for delivery: %+v %v", d, err)
	}
	if n := count(t, s, `SELECT count(*) FROM messages WHERE id = $1 AND completed_at IS NOT NULL AND body IS NULL`, all.ID); n != 1 {
		t.Errorf("all-suppressed message not complete at accept")
	}
	if n := count(t, s, `SELECT count(*) FROM messages WHERE id = $1 AND completed_at IS NULL AND body IS NOT NULL`, some.ID); n != 1 {
		t.Errorf("partly suppressed message completed at accept")
	}
	if v, _ := s.GetMessage(t.Context(), k.TenantID, all.ID); v.Status != StatusBounced {
		t.Errorf("all-suppressed message status %s, want bounced", v.Status)
	}
	bad := testMessage(k, 1)
	bad.Recipients[0].Suppressed = "bored"
	if err := s.AcceptBatch(t.Context(), []NewMessage{bad}); !errors.Is(err, ErrRejected) {
		t.Errorf("unknown reason: %v, want ErrRejected", err)
	}
}

// TestSuppressionCRUD: entries are per tenant, keyed by the normalised
// address; expired ones are neither shown, nor looked up, nor deleted as
// live; a repeated put answers the same; pages follow each other with a
// reason filter.
func TestSuppressionCRUD(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	acme := newTenant(t, s, "acme")
	other := newTenant(t, s, "other")
	ctx := t.Context()
	put := func(tenant, email, reason string, expires *time.Time) (Suppression, bool) {
		t.Helper()
		sup, created, err := s.PutSuppression(ctx, Suppression{TenantID: tenant, Email: email, Reason: reason, ExpiresAt: expires})
		if err != nil {
			t.Fatal(err)
		}
		return sup, created
	}
	first, created := put(acme.TenantID, "Bob@Example.NET", SuppressedManual, nil)
	if !created || first.Email != "Bob@example.net" {
		t.Errorf("put: %+v created %v", first, created)
	}
	again, created := put(acme.TenantID, "Bob@example.net", SuppressedManual, nil)
	if created || !again.CreatedAt.Equal(first.CreatedAt) {
		t.Errorf("repeat put: created %v at %v, first at %v", created, again.CreatedAt, first.CreatedAt)
	}
	if _, err := s.GetSuppression(ctx, other.TenantID, "Bob@example.net"); !errors.Is(err, ErrNotFound) {
		t.Errorf("other tenant get: %v", err)
	}
	if _, err := s.GetSuppression(ctx, acme.TenantID, "bob@example.net"); !errors.Is(err, ErrNotFound) {
		t.Errorf("local part matched without case: %v", err)
	}
	past := time.Now().Add(-time.Minute)
	put(acme.TenantID, "old@example.net", SuppressedManual, &past)
	if _, err := s.GetSuppression(ctx, acme.TenantID, "old@example.net"); !errors.Is(err, ErrNotFound) {
		t.Errorf("expired get: %v", err)
	}
	found, err := s.LookupSuppressions(ctx, []SuppressionKey{
		{acme.TenantID, "Bob@EXAMPLE.net"}, {acme.TenantID, "old@example.net"}, {other.TenantID, "Bob@example.net"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[SuppressionKey{acme.TenantID, "Bob@example.net"}] != SuppressedManual {
		t.Errorf("lookup %v, want only acme's Bob", found)
	}
	if err := s.DeleteSuppression(ctx, acme.TenantID, "old@example.net"); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete expired: %v, want ErrNotFound", err)
	}
	if err := s.DeleteSuppression(ctx, other.TenantID, "Bob@example.net"); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete other tenant's: %v", err)
	}
	if err := s.DeleteSuppression(ctx, acme.TenantID, "Bob@example.net"); err != nil {
		t.Errorf("delete: %v", err)
	}
	if _, err := s.GetSuppression(ctx, acme.TenantID, "Bob@example.net"); !errors.Is(err, ErrNotFound) {
		t.Errorf("get after delete: %v", err)
	}

	for i := range 25 {
		reason := SuppressedManual
		if i%3 == 0 {
			reason = SuppressedComplaint
		}
		put(acme.TenantID, fmt.Sprintf("u%02d@example.org", i), reason, nil)
	}
	for _, tt := range []struct {
		reason string
		want   int
	}{{"", 25}, {SuppressedComplaint, 9}, {SuppressedManual, 16}, {SuppressedHardBounce, 0}} {
		var got []string
		after := ""
		for page := 0; ; page++ {
			list, err := s.ListSuppressions(ctx, acme.TenantID, SuppressionPage{Reason: tt.reason, After: after, Limit: 4})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range list {
				if tt.reason != "" && e.Reason != tt.reason {
					t.Errorf("reason %q listed %+v", tt.reason, e)
				}
				got = append(got, e.Email)
			}
			if len(list) < 4 {
				break
			}
			after = list[len(list)-1].Email
		}
		if len(got) != tt.want {
			t.Errorf("reason %q: %d listed, want %d", tt.reason, len(got), tt.want)
		}
		for i := 1; i < len(got); i++ {
			if got[i] <= got[i-1] {
				t.Errorf("reason %q: %s after %s", tt.reason, got[i], got[i-1])
			}
		}
	}
	if list, err := s.ListSuppressions(ctx, other.TenantID, SuppressionPage{Limit: 10}); err != nil || len(list) != 0 {
		t.Errorf("other tenant's list %v %v", list, err)
	}
	if _, _, err := s.PutSuppression(ctx, Suppression{TenantID: acme.TenantID, Email: "x@example.org", Reason: "bored"}); !errors.Is(err, ErrRejected) {
		t.Errorf("put with unknown reason: %v", err)
	}
}

// TestNormalizeEmailMatchesSQL: RecordOutcomes normalises in SQL
// (suppressionAddr), the lookups and the API in Go (NormalizeEmail); an
// address must come out the same both ways or a suppression would miss.
func TestNormalizeEmailMatchesSQL(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	for _, addr := range []string{
		"Alice@Example.COM", `"a@b"@Example.com`, `"A@B@C"@MIXED.Case.example`, "ÜSER@Example.org",
		"user+tag@xn--BCHER-kva.example", "plain@lower.example", "x@Y",
	} {
		var got string
		if err := s.pool.QueryRow(t.Context(), `SELECT `+suppressionAddr+` FROM (VALUES ($1::text)) AS r(email)`, addr).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if want := NormalizeEmail(addr); got != want {
			t.Errorf("%q: SQL gives %q, NormalizeEmail %q", addr, got, want)
		}
	}
}
