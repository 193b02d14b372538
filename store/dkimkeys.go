package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrExists means a row with that identity is already stored.
var ErrExists = errors.New("already exists")

// DKIMKey is a stored signing key. PrivateKey is as the caller sealed it
// (see dkim.Sealer); the store never sees the plaintext key unless no
// MAILFERRY_SECRET_KEY is set.
type DKIMKey struct {
	Domain     string
	Selector   string
	Algorithm  string // rsa2048 or ed25519
	PrivateKey []byte
	PublicKey  []byte
	Active     bool
	CreatedAt  time.Time
	// State is where the key is in rotation: pending, active or retiring
	// (KeyActive when empty on a write).
	State string
}

const (
	insertDKIMKey = `INSERT INTO dkim_keys (domain, selector, algorithm, private_key, public_key, active, created_at)
VALUES ($1, $2, $3, $4, $5, true, $6)`
	selectDKIMKeys       = `SELECT domain, selector, algorithm, private_key, public_key, active, created_at, state FROM dkim_keys`
	selectActiveDKIMKeys = selectDKIMKeys + ` WHERE domain = $1 AND active ORDER BY algorithm, selector`
	uniqueViolation      = "23505"
)

// CreateDKIMKey stores a new key; ErrExists if the domain already has one
// under that selector.
func (s *Store) CreateDKIMKey(ctx context.Context, k DKIMKey) error {
	if k.CreatedAt.IsZero() {
		k.CreatedAt = time.Now()
	}
	_, err := s.pool.Exec(ctx, insertDKIMKey, strings.ToLower(k.Domain), k.Selector, k.Algorithm, k.PrivateKey, k.PublicKey, k.CreatedAt)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == uniqueViolation {
		return fmt.Errorf("create dkim key %s._domainkey.%s: %w", k.Selector, k.Domain, ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create dkim key: %w", err)
	}
	return nil
}

// ListDKIMKeys returns every key, by domain and selector.
func (s *Store) ListDKIMKeys(ctx context.Context) ([]DKIMKey, error) {
	return s.dkimKeys(ctx, selectDKIMKeys+` ORDER BY domain, selector`)
}

// ActiveDKIMKeys returns the keys that sign mail from domain.
func (s *Store) ActiveDKIMKeys(ctx context.Context, domain string) ([]DKIMKey, error) {
	return s.dkimKeys(ctx, selectActiveDKIMKeys, strings.ToLower(domain))
}

func (s *Store) dkimKeys(ctx context.Context, query string, args ...any) ([]DKIMKey, error) {
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("read dkim keys: %w", err)
	}
	keys, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (DKIMKey, error) {
		var k DKIMKey
		err := row.Scan(&k.Domain, &k.Selector, &k.Algorithm, &k.PrivateKey, &k.PublicKey, &k.Active, &k.CreatedAt, &k.State)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("read dkim keys: %w", err)
	}
	return keys, nil
}
