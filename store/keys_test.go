package store

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestAPIKeys(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := t.Context()

	key, secret, err := s.CreateAPIKey(ctx, "acme", []string{"Example.COM", "mail.example.com.", "example.com"})
	if err != nil {
		t.Fatalf("CreateAPIKey: %v", err)
	}
	if !regexp.MustCompile(`^mf_k[a-z2-7]{12}_[A-Za-z0-9_-]{43}$`).MatchString(secret) {
		t.Errorf("secret %q does not have the mf_<id>_<base64url> layout", secret)
	}
	if !strings.HasPrefix(secret, "mf_"+key.ID+"_") {
		t.Errorf("secret %q does not carry key id %q", secret, key.ID)
	}
	if want := []string{"example.com", "mail.example.com"}; !slices.Equal(key.Domains, want) {
		t.Errorf("domains %q, want %q (lower case, no trailing dot, no duplicates)", key.Domains, want)
	}
	if key.TenantID != "acme" || key.CreatedAt.IsZero() || key.RevokedAt != nil {
		t.Errorf("key = %+v", key)
	}

	got, err := s.Authenticate(ctx, secret)
	if err != nil {
		t.Fatalf("Authenticate(right secret): %v", err)
	}
	if got.ID != key.ID || got.TenantID != "acme" || !slices.Equal(got.Domains, key.Domains) {
		t.Errorf("Authenticate = %+v, want %+v", got, key)
	}

	_, other, err := s.CreateAPIKey(ctx, "acme", []string{"example.org"})
	if err != nil {
		t.Fatalf("second key of the tenant: %v", err)
	}
	wrong := "mf_" + key.ID + other[len("mf_")+keyIDLen:] // right id, another key's secret part
	flipped := []byte(secret)
	flipped[len(flipped)-2] ^= 1 // still valid base64url
	refused := []struct{ name, secret string }{
		{"empty", ""},
		{"wrong secret", wrong},
		{"one character changed", string(flipped)},
		{"unknown id", "mf_kaaaaaaaaaaaa" + secret[len("mf_")+keyIDLen:]},
		{"no prefix", strings.TrimPrefix(secret, "mf_")},
		{"other prefix", "xx_" + secret[3:]},
		{"truncated", secret[:len(secret)-1]},
		{"too long", secret + "A"},
		{"upper-case id", "mf_" + strings.ToUpper(key.ID) + secret[len("mf_")+keyIDLen:]},
		{"not base64", secret[:len(secret)-1] + "!"},
		{"bearer left in", "Bearer " + secret},
	}
	for _, tt := range refused {
		t.Run("refuses "+tt.name, func(t *testing.T) {
			_, err := s.Authenticate(ctx, tt.secret)
			if !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("Authenticate = %v, want ErrUnauthorized", err)
			}
			if tt.secret != "" && strings.Contains(err.Error(), tt.secret) {
				t.Errorf("error %q shows the secret", err)
			}
		})
	}

	keys, err := s.ListAPIKeys(ctx)
	if err != nil {
		t.Fatalf("ListAPIKeys: %v", err)
	}
	if len(keys) != 2 || keys[0].ID != key.ID {
		t.Fatalf("ListAPIKeys = %+v, want the two keys, oldest first", keys)
	}

	if err := s.RevokeAPIKey(ctx, key.ID); err != nil {
		t.Fatalf("RevokeAPIKey: %v", err)
	}
	if _, err := s.Authenticate(ctx, secret); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("Authenticate right after revoke = %v, want ErrUnauthorized", err)
	}
	keys, _ = s.ListAPIKeys(ctx)
	first := keys[0].RevokedAt
	if first == nil {
		t.Fatal("revoked key lists without RevokedAt")
	}
	if err := s.RevokeAPIKey(ctx, key.ID); err != nil {
		t.Errorf("revoking twice: %v", err)
	}
	keys, _ = s.ListAPIKeys(ctx)
	if !keys[0].RevokedAt.Equal(*first) {
		t.Errorf("second revoke moved RevokedAt from %v to %v", first, keys[0].RevokedAt)
	}
	if keys[1].RevokedAt != nil {
		t.Error("revoking one key revoked the other")
	}
	if err := s.RevokeAPIKey(ctx, "knosuchkey234"); !errors.Is(err, ErrNotFound) {
		t.Errorf("RevokeAPIKey(unknown) = %v, want ErrNotFound", err)
	}
	if n := count(t, s, `SELECT count(*) FROM tenants`); n != 1 {
		t.Errorf("%d tenant rows, want 1 for two keys of one tenant", n)
	}
}

// TestSecretNotStored looks for the secret, in every encoding it could be
// stored in, in every row of every table, and finds its sha256 instead.
func TestSecretNotStored(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := t.Context()
	key, secret, err := s.CreateAPIKey(ctx, "acme", []string{"example.com"})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.RawURLEncoding.DecodeString(secret[len(secret)-secretTextLen:])
	if err != nil {
		t.Fatal(err)
	}
	needles := []string{
		secret,
		secret[len(secret)-secretTextLen:],
		hex.EncodeToString([]byte(secret)),
		hex.EncodeToString(raw),
		base64.StdEncoding.EncodeToString(raw),
	}
	rows, _ := s.pool.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_tables
WHERE schemaname NOT IN ('pg_catalog', 'information_schema')`)
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(tables) == 0 {
		t.Fatalf("list tables: %v %v", tables, err)
	}
	for _, table := range tables {
		var dump string
		err := s.pool.QueryRow(ctx, `SELECT coalesce(string_agg(t::text, E'\n'), '') FROM `+table+` t`).Scan(&dump)
		if err != nil {
			t.Fatalf("dump %s: %v", table, err)
		}
		for _, n := range needles {
			if strings.Contains(strings.ToLower(dump), strings.ToLower(n)) {
				t.Errorf("table %s holds the secret (as %q)", table, n)
			}
		}
	}
	var stored []byte
	if err := s.pool.QueryRow(ctx, `SELECT secret_hash FROM api_keys WHERE id = $1`, key.ID).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256([]byte(secret)); string(stored) != string(want[:]) {
		t.Errorf("secret_hash = %x, want sha256(secret) %x", stored, want)
	}
}

func TestCreateAPIKeyRefuses(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	tests := []struct {
		name    string
		tenant  string
		domains []string
		wantErr string
	}{
		{"empty tenant", " ", []string{"example.com"}, "tenant is empty"},
		{"tenant with space", "ac me", []string{"example.com"}, "space"},
		{"no domains", "acme", nil, "no sender domain"},
		{"empty domain", "acme", []string{"example.com", " "}, "sender domain is empty"},
		{"address not domain", "acme", []string{"bob@example.com"}, "not a domain name"},
		{"leading hyphen", "acme", []string{"-example.com"}, "not a domain name"},
		{"empty label", "acme", []string{"example..com"}, "not a domain name"},
		{"long label", "acme", []string{strings.Repeat("a", 64) + ".com"}, "not a domain name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, secret, err := s.CreateAPIKey(t.Context(), tt.tenant, tt.domains)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("CreateAPIKey = %v, want error containing %q", err, tt.wantErr)
			}
			if secret != "" {
				t.Error("a refused key returned a secret")
			}
		})
	}
	if n := count(t, s, `SELECT count(*) FROM api_keys`); n != 0 {
		t.Errorf("%d keys stored by refused calls", n)
	}
}
