package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Sending domain statuses (domains.status).
const (
	DomainPending  = "pending"
	DomainVerified = "verified"
	DomainFailed   = "failed"
)

// DKIM key states (dkim_keys.state).
const (
	KeyPending  = "pending"
	KeyActive   = "active"
	KeyRetiring = "retiring"
)

// ErrTaken means another tenant owns the domain.
var ErrTaken = errors.New("taken by another tenant")

// Domain is a tenant's sending domain with its last DNS check. Records is
// the check's JSON, as the API shows it.
type Domain struct {
	Name       string
	TenantID   string
	DKIMMode   string // delegated or direct
	Status     string
	Records    json.RawMessage
	CheckedAt  *time.Time
	VerifiedAt *time.Time
	CreatedAt  time.Time
}

const (
	domainColumns = `name, tenant_id, dkim_mode, status, records, checked_at, verified_at, created_at`
	insertDomain  = `INSERT INTO domains (name, tenant_id, dkim_mode) VALUES ($1, $2, $3)
ON CONFLICT (name) DO NOTHING RETURNING ` + domainColumns
	selectDomain  = `SELECT ` + domainColumns + ` FROM domains WHERE name = $1`
	selectDomains = `SELECT ` + domainColumns + ` FROM domains WHERE tenant_id = $1 ORDER BY name`
	// Due: never checked, checked before the cutoff, or with a rotation
	// waiting for DNS (checked every sweep until its key shows).
	selectDueDomains = `SELECT ` + domainColumns + ` FROM domains d WHERE checked_at IS NULL OR checked_at < $1
OR EXISTS (SELECT 1 FROM dkim_keys k WHERE k.domain = d.name AND k.state = 'pending')
ORDER BY checked_at NULLS FIRST LIMIT $2`
	insertStateKey = `INSERT INTO dkim_keys (domain, selector, algorithm, private_key, public_key, active, state, created_at)
VALUES ($1, $2, $3, $4, $5, $6 = 'active', $6, $7)`
	selectDomainKeys = `SELECT domain, selector, algorithm, private_key, public_key, active, created_at, state, retire_at
FROM dkim_keys WHERE domain = $1 ORDER BY created_at, algorithm, selector`
)

// CreateDomain stores a new domain for tenant with its first keys, all in
// one transaction. It returns ErrExists if the tenant already has it and
// ErrTaken if another tenant does.
func (s *Store) CreateDomain(ctx context.Context, d Domain, keys []DKIMKey) (Domain, error) {
	d.Name = strings.ToLower(d.Name)
	var out Domain
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, insertTenant, d.TenantID); err != nil {
			return err
		}
		var err error
		out, err = scanDomain(tx.QueryRow(ctx, insertDomain, d.Name, d.TenantID, d.DKIMMode))
		if errors.Is(err, pgx.ErrNoRows) {
			var owner string
			if err := tx.QueryRow(ctx, `SELECT tenant_id FROM domains WHERE name = $1`, d.Name).Scan(&owner); err != nil {
				return err
			}
			if owner == d.TenantID {
				return ErrExists
			}
			return ErrTaken
		}
		if err != nil {
			return err
		}
		for _, k := range keys {
			if err := insertKey(ctx, tx, k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Domain{}, fmt.Errorf("create domain %s: %w", d.Name, err)
	}
	return out, nil
}

func insertKey(ctx context.Context, tx pgx.Tx, k DKIMKey) error {
	if k.State == "" {
		k.State = KeyActive
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = time.Now()
	}
	_, err := tx.Exec(ctx, insertStateKey, strings.ToLower(k.Domain), k.Selector, k.Algorithm, k.PrivateKey, k.PublicKey, k.State, k.CreatedAt)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == uniqueViolation {
		return fmt.Errorf("dkim key %s._domainkey.%s: %w", k.Selector, k.Domain, ErrExists)
	}
	return err
}

// GetDomain returns tenant's domain; another tenant's is ErrNotFound.
// An empty tenant reads any domain (the scheduler and the CLI).
func (s *Store) GetDomain(ctx context.Context, tenant, name string) (Domain, error) {
	d, err := scanDomain(s.pool.QueryRow(ctx, selectDomain, strings.ToLower(name)))
	if errors.Is(err, pgx.ErrNoRows) || err == nil && tenant != "" && d.TenantID != tenant {
		return Domain{}, fmt.Errorf("get domain %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return Domain{}, fmt.Errorf("get domain %s: %w", name, err)
	}
	return d, nil
}

// ListDomains returns tenant's domains by name.
func (s *Store) ListDomains(ctx context.Context, tenant string) ([]Domain, error) {
	return s.domains(ctx, selectDomains, tenant)
}

// DueDomains returns up to limit domains last checked before cutoff, or
// with a rotation waiting for DNS.
func (s *Store) DueDomains(ctx context.Context, cutoff time.Time, limit int) ([]Domain, error) {
	return s.domains(ctx, selectDueDomains, cutoff, limit)
}

func (s *Store) domains(ctx context.Context, query string, args ...any) ([]Domain, error) {
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Domain, error) { return scanDomain(row) })
	if err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	return out, nil
}

func scanDomain(row pgx.Row) (Domain, error) {
	var d Domain
	err := row.Scan(&d.Name, &d.TenantID, &d.DKIMMode, &d.Status, &d.Records, &d.CheckedAt, &d.VerifiedAt, &d.CreatedAt)
	return d, err
}

// DeleteDomain removes tenant's domain and its DKIM keys: mail from it is
// then sent unsigned.
func (s *Store) DeleteDomain(ctx context.Context, tenant, name string) error {
	name = strings.ToLower(name)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM domains WHERE name = $1 AND tenant_id = $2`, name, tenant)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrNotFound
		}
		_, err = tx.Exec(ctx, `DELETE FROM dkim_keys WHERE domain = $1`, name)
		return err
	})
	if err != nil {
		return fmt.Errorf("delete domain %s: %w", name, err)
	}
	return nil
}

// DomainCheck is the outcome of one DNS check, to save.
type DomainCheck struct {
	Name    string
	Status  string
	Records json.RawMessage
	At      time.Time
	// Event is written in the same transaction when the saved status
	// differs from the stored one as Event's rule says (domains decides);
	// built by the caller from the previous status it passes in Prev.
	Event func(prev string) *NewEvent
}

// SaveDomainCheck stores a check and, when the status changed, the event
// Event builds, in one transaction: a change is announced exactly once
// even when two schedulers check at once (the row lock orders them).
func (s *Store) SaveDomainCheck(ctx context.Context, c DomainCheck) error {
	deliveries := 0
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var prev string
		err := tx.QueryRow(ctx, `SELECT status FROM domains WHERE name = $1 FOR UPDATE`, c.Name).Scan(&prev)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound // deleted meanwhile
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE domains SET status = $2, records = $3, checked_at = $4,
verified_at = CASE WHEN $2 = 'verified' AND status <> 'verified' THEN $4 ELSE verified_at END WHERE name = $1`,
			c.Name, c.Status, c.Records, c.At); err != nil {
			return err
		}
		if c.Event == nil {
			return nil
		}
		if ev := c.Event(prev); ev != nil {
			n, err := InsertEvents(ctx, tx, []NewEvent{*ev})
			deliveries = n
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save check of domain %s: %w", c.Name, err)
	}
	if deliveries > 0 {
		s.EventsAdded()
	}
	return nil
}

// DomainKey is a DKIM key with its place in rotation.
type DomainKey struct {
	DKIMKey
	State    string
	RetireAt *time.Time
}

// DomainKeys returns every key of domain (pending, active, retiring), by age.
func (s *Store) DomainKeys(ctx context.Context, domain string) ([]DomainKey, error) {
	rows, err := s.pool.Query(ctx, selectDomainKeys, strings.ToLower(domain))
	if err != nil {
		return nil, fmt.Errorf("read dkim keys of %s: %w", domain, err)
	}
	keys, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (DomainKey, error) {
		var k DomainKey
		err := row.Scan(&k.Domain, &k.Selector, &k.Algorithm, &k.PrivateKey, &k.PublicKey, &k.Active, &k.CreatedAt, &k.State, &k.RetireAt)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("read dkim keys of %s: %w", domain, err)
	}
	return keys, nil
}

// ErrRotating means a rotation already waits for its keys to show in DNS.
var ErrRotating = errors.New("a rotation is already waiting for DNS")

// StartRotation adds keys as pending: they sign nothing until PromoteKeys.
// Selectors still held by keys (a retiring one, in delegated mode's two
// slots) make it ErrExists; a pending key already there, ErrRotating.
func (s *Store) StartRotation(ctx context.Context, domain string, keys []DKIMKey) error {
	domain = strings.ToLower(domain)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Lock the domain row: two rotations at once would both see no
		// pending key.
		if _, err := tx.Exec(ctx, `SELECT 1 FROM domains WHERE name = $1 FOR UPDATE`, domain); err != nil {
			return err
		}
		var pending bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM dkim_keys WHERE domain = $1 AND state = 'pending')`, domain).Scan(&pending); err != nil {
			return err
		}
		if pending {
			return ErrRotating
		}
		for _, k := range keys {
			k.State = KeyPending
			if err := insertKey(ctx, tx, k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("rotate dkim keys of %s: %w", domain, err)
	}
	return nil
}

// PromoteKeys makes domain's pending keys sign and moves the keys that
// signed until now to retiring, published until retireAt, in one
// transaction: no message is signed by neither or by both generations.
func (s *Store) PromoteKeys(ctx context.Context, domain string, retireAt time.Time) (bool, error) {
	domain = strings.ToLower(domain)
	promoted := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE dkim_keys SET state = 'retiring', active = false, retire_at = $2
WHERE domain = $1 AND state = 'active' AND EXISTS (SELECT 1 FROM dkim_keys WHERE domain = $1 AND state = 'pending')`, domain, retireAt)
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE dkim_keys SET state = 'active', active = true WHERE domain = $1 AND state = 'pending'`, domain)
		promoted = tag.RowsAffected() > 0
		return err
	})
	if err != nil {
		return false, fmt.Errorf("promote dkim keys of %s: %w", domain, err)
	}
	return promoted, nil
}

// RetireKeys deletes retiring keys whose time is up and returns how many.
func (s *Store) RetireKeys(ctx context.Context, now time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM dkim_keys WHERE state = 'retiring' AND retire_at <= $1`, now)
	if err != nil {
		return 0, fmt.Errorf("retire dkim keys: %w", err)
	}
	return tag.RowsAffected(), nil
}
