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

// TestReturnPathCache: answers, negative ones too unless FreshNegatives,
// come from memory until the TTL has passed, then the ledger is asked
// again.
func TestReturnPathCache(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fresh bool
		// lookups after each of the asks below
		want []int
	}{
		{"negatives cached", false, []int{1, 1, 1, 2, 2}},
		{"fresh negatives", true, []int{1, 2, 2, 3, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			newTenant(t, s, "acme")
			saveDomain(t, s, "acme", "a.example", "missing")
			c := NewReturnPathCache(s, ReturnPathCacheOptions{TTL: time.Minute, FreshNegatives: tc.fresh})
			now := time.Now()
			c.now = func() time.Time { return now }
			lookups, step := 0, 0
			c.lookup = func(ctx context.Context, d string) (string, error) {
				lookups++
				return s.ReturnPathTenant(ctx, d)
			}
			ask := func(want string) {
				t.Helper()
				got, err := c.ReturnPathTenant(t.Context(), "A.example")
				if err != nil || got != want || lookups != tc.want[step] {
					t.Fatalf("ask %d: ReturnPathTenant = %q, %v after %d lookups; want %q after %d", step, got, err, lookups, want, tc.want[step])
				}
				step++
			}
			ask("")
			saveDomain(t, s, "acme", "a.example", "verified")
			want := ""
			if tc.fresh {
				want = "acme"
			}
			ask(want) // a cached "no", or a fresh "yes"
			now = now.Add(59 * time.Second)
			ask(want)
			now = now.Add(time.Minute)
			ask("acme")
			ask("acme") // a "yes" is cached either way
		})
	}
}
