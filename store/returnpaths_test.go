package store

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// returnPathRecords is a check's records JSON with the return path record
// in status (and a verified DKIM record, which must not count).
func returnPathRecords(status string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`[{"type":"TXT","purpose":"dkim","status":"verified"},
{"type":"CNAME","name":"bounces.x","purpose":"return_path","status":%q}]`, status))
}

// saveDomain creates tenant's domain and saves a check with its return
// path record in status ("" for no records at all).
func saveDomain(t *testing.T, s *Store, tenant, name, status string) {
	t.Helper()
	if _, err := s.GetDomain(t.Context(), "", name); err != nil {
		if _, err := s.CreateDomain(t.Context(), Domain{Name: name, TenantID: tenant, DKIMMode: "direct"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	recs := json.RawMessage(`[]`)
	if status != "" {
		recs = returnPathRecords(status)
	}
	if err := s.SaveDomainCheck(t.Context(), DomainCheck{Name: name, Status: DomainPending, Records: recs, At: time.Now()}); err != nil {
		t.Fatal(err)
	}
}

func TestReturnPathTenant(t *testing.T) {
	s := newStore(t)
	newTenant(t, s, "acme")
	newTenant(t, s, "other")
	saveDomain(t, s, "acme", "verified.example", "verified")
	saveDomain(t, s, "other", "other.example", "verified")
	saveDomain(t, s, "acme", "missing.example", "missing")
	saveDomain(t, s, "acme", "wrong.example", "wrong")
	saveDomain(t, s, "acme", "unchecked.example", "")
	for _, tc := range []struct{ domain, want string }{
		{"verified.example", "acme"},
		{"VERIFIED.Example", "acme"},
		{"other.example", "other"},
		{"missing.example", ""},
		{"wrong.example", ""},
		{"unchecked.example", ""},
		{"unknown.example", ""},
	} {
		t.Run(tc.domain, func(t *testing.T) {
			got, err := s.ReturnPathTenant(t.Context(), tc.domain)
			if err != nil || got != tc.want {
				t.Fatalf("ReturnPathTenant(%q) = %q, %v; want %q", tc.domain, got, err, tc.want)
			}
		})
	}
}

// TestReturnPathCache: answers, negative ones too, come from memory until
// the TTL has passed, then the ledger is asked again.
func TestReturnPathCache(t *testing.T) {
	s := newStore(t)
	newTenant(t, s, "acme")
	saveDomain(t, s, "acme", "a.example", "missing")
	c := NewReturnPathCache(s, time.Minute)
	now := time.Now()
	c.now = func() time.Time { return now }
	lookups := 0
	c.lookup = func(ctx context.Context, d string) (string, error) {
		lookups++
		return s.ReturnPathTenant(ctx, d)
	}
	ask := func(want string, wantLookups int) {
		t.Helper()
		got, err := c.ReturnPathTenant(t.Context(), "A.example")
		if err != nil || got != want || lookups != wantLookups {
			t.Fatalf("ReturnPathTenant = %q, %v after %d lookups; want %q after %d", got, err, lookups, want, wantLookups)
		}
	}
	ask("", 1)
	saveDomain(t, s, "acme", "a.example", "verified")
	ask("", 1) // cached negative
	now = now.Add(59 * time.Second)
	ask("", 1)
	now = now.Add(time.Second)
	ask("acme", 2)
	ask("acme", 2)
}
