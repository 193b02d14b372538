package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/mailferry/mailferry/mail"

	"github.com/jackc/pgx/v5"
)

// APIKey is a key without its secret. ID is public; it shows in logs and
// `mailferry keys list`.
type APIKey struct {
	ID        string
	TenantID  string
	Domains   []string // sender domains the key may use, lower case
	Scopes    []string // ScopeSend, ScopeRead, ScopeManage
	Admin     bool     // operator key: manages tenants and every tenant's keys
	CreatedAt time.Time
	RevokedAt *time.Time
	// LastUsedAt is the last authenticated use, recorded at most once a
	// minute per key and process (KeyCache); nil: never used.
	LastUsedAt *time.Time
}

// Key scopes (migration 0012). Keys made before scopes existed have all
// three.
const (
	ScopeSend   = "send"   // POST /v1/messages, batch, cancel
	ScopeRead   = "read"   // messages, events, suppressions, webhook reads
	ScopeManage = "manage" // webhook and suppression writes, keys, domains
)

// Scopes returns every scope, in the order keys list them.
func Scopes() []string { return []string{ScopeSend, ScopeRead, ScopeManage} }

// Has reports whether the key carries scope.
func (k APIKey) Has(scope string) bool { return slices.Contains(k.Scopes, scope) }

// KeySpec is a key to create (CreateKey).
type KeySpec struct {
	Tenant  string
	Domains []string // sender domains; required with ScopeSend
	Scopes  []string // nil: all of Scopes()
	Admin   bool
}

// Secret layout: "mf_" + key id + "_" + base64url(32 random bytes), for
// example mf_kabcdefghijkl_<43 chars>. The id has a fixed length, so the
// secret part may itself contain "_".
const (
	secretPrefix   = "mf_"
	keyIDLen       = 13 // "k" + 12 base32 characters: 60 bits
	secretBytes    = 32
	secretTextLen  = 43 // base64url of 32 bytes, no padding
	secretTotalLen = len(secretPrefix) + keyIDLen + 1 + secretTextLen
)

// keyIDEncoding is lower-case base32 (a–z, 2–7): readable and case-free.
var keyIDEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

const (
	insertTenant = `INSERT INTO tenants (id) VALUES ($1) ON CONFLICT (id) DO NOTHING`
	insertAPIKey = `INSERT INTO api_keys (id, tenant_id, secret_hash, domains, scopes, admin)
VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at`
	keyColumns    = `id, tenant_id, domains, scopes, admin, created_at, revoked_at, last_used_at`
	selectAPIKeys = `SELECT ` + keyColumns + `
FROM api_keys WHERE $1 = '' OR tenant_id = $1 ORDER BY created_at, id`
	selectAPIKey = `SELECT ` + keyColumns + ` FROM api_keys WHERE id = $1`
	// revokeAPIKey revokes within a tenant, or any key when $2 is ''. A
	// tenant's revocation never reaches an operator key, even one of the
	// same tenant: managing keys must not reach above the tenant.
	revokeAPIKey     = `UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 AND ($2 = '' OR (tenant_id = $2 AND NOT admin))`
	selectKeyForAuth = `SELECT tenant_id, secret_hash, domains, scopes, admin, created_at, revoked_at
FROM api_keys WHERE id = $1`
	// touchKeys records last use; migration 0012 keeps it from notifying
	// the key caches.
	touchKeys = `UPDATE api_keys SET last_used_at = $2 WHERE id = ANY($1) AND (last_used_at IS NULL OR last_used_at < $2)`
)

// CreateAPIKey creates a key for tenant that may send from domains,
// creating the tenant if it is new. It returns the secret, which is stored
// only as a hash and cannot be shown again.
func (s *Store) CreateAPIKey(ctx context.Context, tenant string, domains []string) (APIKey, string, error) {
	return s.CreateKey(ctx, KeySpec{Tenant: tenant, Domains: domains})
}

// CreateKey creates the key spec describes, creating its tenant if it is
// new, and returns it with its secret, shown this once: only its sha256 is
// stored. Errors wrapping ErrRejected name what is wrong with spec.
func (s *Store) CreateKey(ctx context.Context, spec KeySpec) (APIKey, string, error) {
	tenant := strings.TrimSpace(spec.Tenant)
	if err := checkTenant(tenant); err != nil {
		return APIKey{}, "", fmt.Errorf("create api key: %w: %w", ErrRejected, err)
	}
	scopes, err := normalizeScopes(spec.Scopes)
	if err != nil {
		return APIKey{}, "", fmt.Errorf("create api key: %w: %w", ErrRejected, err)
	}
	doms := []string{}
	if len(spec.Domains) > 0 || slices.Contains(scopes, ScopeSend) {
		if doms, err = normalizeDomains(spec.Domains); err != nil {
			return APIKey{}, "", fmt.Errorf("create api key: %w: %w", ErrRejected, err)
		}
	}
	id := newKeyID()
	raw := make([]byte, secretBytes)
	rand.Read(raw) // never fails: crypto/rand crashes the program instead
	secret := secretPrefix + id + "_" + base64.RawURLEncoding.EncodeToString(raw)
	hash := sha256.Sum256([]byte(secret))

	key := APIKey{ID: id, TenantID: tenant, Domains: doms, Scopes: scopes, Admin: spec.Admin}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, insertTenant, tenant); err != nil {
			return err
		}
		return tx.QueryRow(ctx, insertAPIKey, id, tenant, hash[:], doms, scopes, spec.Admin).Scan(&key.CreatedAt)
	})
	if err != nil {
		return APIKey{}, "", fmt.Errorf("create api key: %w", err)
	}
	return key, secret, nil
}

// ListAPIKeys returns every key, revoked ones included, oldest first.
func (s *Store) ListAPIKeys(ctx context.Context) ([]APIKey, error) {
	return s.ListKeys(ctx, "")
}

// ListKeys returns tenant's keys, or every key when tenant is "", revoked
// ones included, oldest first.
func (s *Store) ListKeys(ctx context.Context, tenant string) ([]APIKey, error) {
	rows, _ := s.pool.Query(ctx, selectAPIKeys, tenant)
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (APIKey, error) {
		return scanKey(r)
	})
	if err != nil {
		return nil, fmt.Errorf("list api keys: %w", err)
	}
	return keys, nil
}

// GetKey returns the key id; ErrNotFound if there is none.
func (s *Store) GetKey(ctx context.Context, id string) (APIKey, error) {
	k, err := scanKey(s.pool.QueryRow(ctx, selectAPIKey, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return APIKey{}, fmt.Errorf("get api key %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return APIKey{}, fmt.Errorf("get api key %s: %w", id, err)
	}
	return k, nil
}

func scanKey(r pgx.Row) (APIKey, error) {
	var k APIKey
	err := r.Scan(&k.ID, &k.TenantID, &k.Domains, &k.Scopes, &k.Admin, &k.CreatedAt, &k.RevokedAt, &k.LastUsedAt)
	return k, err
}

// RevokeTenantKey is RevokeAPIKey for a key of tenant only: another
// tenant's key, or an operator key, is ErrNotFound, as if it did not
// exist.
func (s *Store) RevokeTenantKey(ctx context.Context, tenant, id string) error {
	if tenant == "" {
		return fmt.Errorf("revoke api key %s: %w: no tenant", id, ErrRejected)
	}
	return s.revoke(ctx, tenant, id)
}

// TouchKeys records that the keys ids were used at at. Keys that were
// used later already are left alone.
func (s *Store) TouchKeys(ctx context.Context, ids []string, at time.Time) error {
	if len(ids) == 0 {
		return nil
	}
	if _, err := s.pool.Exec(ctx, touchKeys, ids, at); err != nil {
		return fmt.Errorf("record api key use: %w", err)
	}
	return nil
}

// RevokeAPIKey revokes a key at once: the next Authenticate refuses it,
// and the NOTIFY that migration 0004 sends on commit flushes the KeyCache
// of every API process within milliseconds. Revoking a revoked key keeps
// the first revocation time.
func (s *Store) RevokeAPIKey(ctx context.Context, id string) error {
	return s.revoke(ctx, "", id)
}

func (s *Store) revoke(ctx context.Context, tenant, id string) error {
	tag, err := s.pool.Exec(ctx, revokeAPIKey, id, tenant)
	if err != nil {
		return fmt.Errorf("revoke api key %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("revoke api key %s: %w", id, ErrNotFound)
	}
	return nil
}

// Authenticate returns the key a secret belongs to. A malformed, unknown,
// wrong or revoked secret is ErrUnauthorized; other errors mean the
// database could not answer. Errors never contain the secret.
func (s *Store) Authenticate(ctx context.Context, secret string) (APIKey, error) {
	return s.authenticate(ctx, secret, hashSecret(secret))
}

// authenticate is Authenticate for a caller that has hashed the secret
// already (KeyCache, whose map is keyed by the hash).
func (s *Store) authenticate(ctx context.Context, secret string, hash [sha256.Size]byte) (APIKey, error) {
	id, ok := parseSecret(secret)
	if !ok {
		return APIKey{}, fmt.Errorf("authenticate: malformed key: %w", ErrUnauthorized)
	}
	k := APIKey{ID: id}
	var stored []byte
	err := s.pool.QueryRow(ctx, selectKeyForAuth, id).
		Scan(&k.TenantID, &stored, &k.Domains, &k.Scopes, &k.Admin, &k.CreatedAt, &k.RevokedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return APIKey{}, fmt.Errorf("authenticate key %s: unknown key: %w", id, ErrUnauthorized)
	}
	if err != nil {
		return APIKey{}, fmt.Errorf("authenticate key %s: %w", id, err)
	}
	if subtle.ConstantTimeCompare(hash[:], stored) != 1 {
		return APIKey{}, fmt.Errorf("authenticate key %s: wrong secret: %w", id, ErrUnauthorized)
	}
	if k.RevokedAt != nil {
		return APIKey{}, fmt.Errorf("authenticate key %s: revoked: %w", id, ErrUnauthorized)
	}
	return k, nil
}

func newKeyID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return "k" + keyIDEncoding.EncodeToString(b)[:keyIDLen-1]
}

// parseSecret checks the secret's layout and returns its key id.
func parseSecret(secret string) (id string, ok bool) {
	if len(secret) != secretTotalLen || !strings.HasPrefix(secret, secretPrefix) {
		return "", false
	}
	id = secret[len(secretPrefix) : len(secretPrefix)+keyIDLen]
	rest := secret[len(secretPrefix)+keyIDLen:]
	if id[0] != 'k' || rest[0] != '_' {
		return "", false
	}
	for _, c := range id[1:] {
		if !('a' <= c && c <= 'z' || '2' <= c && c <= '7') {
			return "", false
		}
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(rest[1:])
	if err != nil || len(raw) != secretBytes {
		return "", false
	}
	return id, true
}

// normalizeScopes checks scopes and puts them in Scopes() order; nil or
// empty is every scope.
func normalizeScopes(scopes []string) ([]string, error) {
	if len(scopes) == 0 {
		return Scopes(), nil
	}
	out := make([]string, 0, len(scopes))
	for _, sc := range Scopes() {
		if slices.Contains(scopes, sc) {
			out = append(out, sc)
		}
	}
	for _, sc := range scopes {
		if !slices.Contains(out, sc) {
			return nil, fmt.Errorf("unknown scope %q: scopes are send, read and manage", sc)
		}
	}
	return out, nil
}

// CheckTenant says what is wrong with a tenant id, if anything.
func CheckTenant(t string) error { return checkTenant(t) }

// checkTenant accepts any printable name without spaces, up to 200 bytes:
// tenant ids come from operators, and they are shown back in listings.
func checkTenant(t string) error {
	switch {
	case t == "":
		return errors.New("tenant is empty")
	case len(t) > 200:
		return errors.New("tenant is longer than 200 bytes")
	}
	for _, r := range t {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return fmt.Errorf("tenant %q contains a space or control character", t)
		}
	}
	return nil
}

// normalizeDomains lower-cases, trims and de-duplicates sender domains and
// checks each is a DNS name (IDNs in their A-label form, xn--…).
func normalizeDomains(domains []string) ([]string, error) {
	if len(domains) == 0 {
		return nil, errors.New("no sender domain: a key must be allowed at least one")
	}
	seen := make(map[string]bool, len(domains))
	out := make([]string, 0, len(domains))
	for _, d := range domains {
		d = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
		if err := checkDomain(d); err != nil {
			return nil, err
		}
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	return out, nil
}

// checkDomain names what is wrong with a sender domain.
func checkDomain(d string) error {
	switch {
	case d == "":
		return errors.New("sender domain is empty")
	case len(d) > 253:
		return fmt.Errorf("sender domain %q is longer than 253 characters", d)
	case !mail.IsDomainName(d):
		return fmt.Errorf("sender domain %q: not a domain name", d)
	}
	return nil
}
