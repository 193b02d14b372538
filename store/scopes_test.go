package store

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestCreateKeyScopes(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	tests := []struct {
		name       string
		spec       KeySpec
		wantScopes []string
		wantErr    bool
	}{
		{"default: every scope", KeySpec{Tenant: "acme", Domains: []string{"example.com"}}, Scopes(), false},
		{"read only, no domain", KeySpec{Tenant: "acme", Scopes: []string{ScopeRead}}, []string{ScopeRead}, false},
		{"put in order, deduplicated", KeySpec{Tenant: "acme", Domains: []string{"example.com"}, Scopes: []string{ScopeManage, ScopeSend, ScopeManage}}, []string{ScopeSend, ScopeManage}, false},
		{"operator", KeySpec{Tenant: "operator", Scopes: []string{ScopeRead, ScopeManage}, Admin: true}, []string{ScopeRead, ScopeManage}, false},
		{"send without a domain", KeySpec{Tenant: "acme", Scopes: []string{ScopeSend}}, nil, true},
		{"unknown scope", KeySpec{Tenant: "acme", Domains: []string{"example.com"}, Scopes: []string{"admin"}}, nil, true},
		{"bad tenant", KeySpec{Tenant: "a b", Domains: []string{"example.com"}}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, secret, err := s.CreateKey(t.Context(), tt.spec)
			if tt.wantErr {
				if !errors.Is(err, ErrRejected) {
					t.Fatalf("CreateKey = %v, want ErrRejected", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Authenticate(t.Context(), secret)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Scopes, tt.wantScopes) || !slices.Equal(k.Scopes, tt.wantScopes) || got.Admin != tt.spec.Admin {
				t.Fatalf("scopes %v (created %v) admin %v, want %v admin %v", got.Scopes, k.Scopes, got.Admin, tt.wantScopes, tt.spec.Admin)
			}
		})
	}
}

// TestKeysBeforeScopes: a key row written without scopes (as every key
// before migration 0012) has all three.
func TestKeysBeforeScopes(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	if _, err := s.pool.Exec(t.Context(), `INSERT INTO api_keys (id, tenant_id, secret_hash, domains) VALUES ('kold2222222222', 'acme', $1, '{example.com}')`, make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	old, err := s.GetKey(t.Context(), "kold2222222222")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(old.Scopes, Scopes()) || old.Admin {
		t.Fatalf("old key: scopes %v admin %v, want every scope, not admin", old.Scopes, old.Admin)
	}
	if keys, err := s.ListKeys(t.Context(), "acme"); err != nil || len(keys) != 2 || keys[0].ID != k.ID {
		t.Fatalf("ListKeys(acme) = %+v, %v", keys, err)
	}
	if keys, err := s.ListKeys(t.Context(), "globex"); err != nil || len(keys) != 0 {
		t.Fatalf("ListKeys(globex) = %+v, %v", keys, err)
	}
	if err := s.RevokeTenantKey(t.Context(), "globex", k.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("RevokeTenantKey(other tenant) = %v, want ErrNotFound", err)
	}
	if err := s.RevokeTenantKey(t.Context(), "acme", k.ID); err != nil {
		t.Fatal(err)
	}
	op, _, err := s.CreateKey(t.Context(), KeySpec{Tenant: "acme", Scopes: []string{ScopeManage}, Admin: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeTenantKey(t.Context(), "acme", op.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a tenant revokes an operator key of its tenant: %v, want ErrNotFound", err)
	}
}

// TestKeyLastUse: the cache writes a key's last use once per
// KeyUseInterval, not per request, and that write notifies no cache.
func TestKeyLastUse(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k, secret := newKey(t, s)
	other, _ := newKey(t, s)

	// A listener of our own hears which changes notify.
	conn, err := pgx.ConnectConfig(t.Context(), s.pool.Config().ConnConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	if _, err := conn.Exec(t.Context(), "LISTEN "+KeyCacheChannel); err != nil {
		t.Fatal(err)
	}

	c, err := NewKeyCache(s, KeyCacheOptions{})
	if err != nil {
		t.Fatal(err)
	}
	runCache(t, c)
	waitFor(t, 10*time.Second, "cache listening", c.Listening)
	before := time.Now().Add(-time.Second)
	for range 50 {
		if _, err := c.Authenticate(t.Context(), secret); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.GetKey(t.Context(), k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.LastUsedAt == nil || got.LastUsedAt.Before(before) {
		t.Fatalf("last_used_at %v after use, want about now", got.LastUsedAt)
	}
	var xmin string
	if err := s.pool.QueryRow(t.Context(), `SELECT xmin::text FROM api_keys WHERE id = $1`, k.ID).Scan(&xmin); err != nil {
		t.Fatal(err)
	}
	// 50 requests, one write: a second write would have a newer xmin than
	// the first, and a third request moves nothing.
	if _, err := c.Authenticate(t.Context(), secret); err != nil {
		t.Fatal(err)
	}
	var xmin2 string
	if err := s.pool.QueryRow(t.Context(), `SELECT xmin::text FROM api_keys WHERE id = $1`, k.ID).Scan(&xmin2); err != nil {
		t.Fatal(err)
	}
	if xmin != xmin2 {
		t.Fatalf("another request rewrote the key row (xmin %s → %s): last use must be written once a minute", xmin, xmin2)
	}
	// The first notification the listener hears is the revocation of the
	// other key, committed after the last-use write: that write sent none.
	if err := s.RevokeAPIKey(t.Context(), other.ID); err != nil {
		t.Fatal(err)
	}
	n, err := conn.WaitForNotification(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if n.Payload != other.ID {
		t.Fatalf("first notification names %q, want the revoked key %s: recording last use notified the caches", n.Payload, other.ID)
	}
}
