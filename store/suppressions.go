package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/prometheus/client_golang/prometheus"
)

// Suppression reasons, as suppressions.reason and recipients.suppressed_reason
// hold them.
const (
	SuppressedHardBounce      = "hard_bounce"
	SuppressedComplaint       = "complaint"
	SuppressedSoftBounceLimit = "soft_bounce_limit"
	SuppressedManual          = "manual"
)

// SuppressionReasons lists the reasons in a stable order.
func SuppressionReasons() []string {
	return []string{SuppressedHardBounce, SuppressedComplaint, SuppressedSoftBounceLimit, SuppressedManual}
}

// NormalizeEmail gives an address the form the suppression list keys it
// by: the local part exactly as written, the domain in lower case (RFC
// 5321 2.4: a local part may be case-sensitive, a domain is not). It is
// the form mail.Address.Addr already has for an A-label domain; an address
// without "@" comes back as it is.
func NormalizeEmail(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return addr
	}
	return addr[:i+1] + strings.ToLower(addr[i+1:])
}

// suppressionAddr is NormalizeEmail in SQL over recipients r: the greedy
// match ends the local part at the last "@", as LastIndexByte does.
const suppressionAddr = `(substring(r.email from '^(.*)@') || '@' || lower(substring(r.email from '[^@]*$')))`

// metrics are the store's Prometheus collectors; a nil *metrics counts
// nothing.
type metrics struct {
	suppressions *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{
		suppressions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailferry_suppressions_total",
			Help: "Addresses added to a suppression list, by reason.",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.suppressions)
	for _, r := range SuppressionReasons() {
		m.suppressions.WithLabelValues(r)
	}
	return m
}

// suppressed counts n suppressions added for reason.
func (m *metrics) suppressed(reason string, n int64) {
	if m != nil && n > 0 {
		m.suppressions.WithLabelValues(reason).Add(float64(n))
	}
}

// SuppressionKey names an address on a tenant's suppression list.
type SuppressionKey struct {
	TenantID string
	Email    string // as NormalizeEmail gives it
}

// lookupSuppressions finds the live entries among the keys: one statement
// whatever their number, so that intake asks once per group commit. The
// LATERAL probes the primary key once per key, so the cost follows the
// batch, never the size of the list (a hash join would read a tenant's
// whole list).
const lookupSuppressions = `SELECT s.tenant_id, s.email, s.reason
FROM unnest($1::text[], $2::text[]) AS k(tenant_id, email)
CROSS JOIN LATERAL (SELECT tenant_id, email, reason FROM suppressions
	WHERE tenant_id = k.tenant_id AND email = k.email AND (expires_at IS NULL OR expires_at > now())) s`

// LookupSuppressions returns the reason of every live (unexpired) entry
// among keys, by key with its Email normalised (NormalizeEmail); keys not
// listed are absent. It is one query however many keys there are.
func (s *Store) LookupSuppressions(ctx context.Context, keys []SuppressionKey) (map[SuppressionKey]string, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	tenants := make([]string, 0, len(keys))
	emails := make([]string, 0, len(keys))
	for _, k := range keys {
		// A key PostgreSQL cannot take as text names nothing listed.
		if storable(k.TenantID) && storable(k.Email) {
			tenants = append(tenants, k.TenantID)
			emails = append(emails, NormalizeEmail(k.Email))
		}
	}
	rows, err := s.pool.Query(ctx, lookupSuppressions, tenants, emails)
	if err != nil {
		return nil, fmt.Errorf("lookup suppressions: %w", err)
	}
	found := map[SuppressionKey]string{}
	var k SuppressionKey
	var reason string
	_, err = pgx.ForEachRow(rows, []any{&k.TenantID, &k.Email, &reason}, func() error {
		found[k] = reason
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("lookup suppressions: %w", err)
	}
	return found, nil
}

// Suppression is one entry of a tenant's suppression list.
type Suppression struct {
	TenantID  string
	Email     string     // NormalizeEmail's form
	Reason    string     // SuppressedHardBounce, SuppressedComplaint, SuppressedSoftBounceLimit or SuppressedManual
	MessageID *uuid.UUID // the message that caused it; nil when added by hand
	CreatedAt time.Time
	ExpiresAt *time.Time // nil: never
}

// SuppressionPage asks ListSuppressions for one page.
type SuppressionPage struct {
	Reason string // "" for every reason
	After  string // the last Email of the previous page; "" for the first
	Limit  int    // 1 to MaxSuppressionPage
}

// MaxSuppressionPage is the most entries ListSuppressions returns at once.
const MaxSuppressionPage = 1000

const (
	liveSuppression     = `(expires_at IS NULL OR expires_at > now())`
	suppressionColumns  = `tenant_id, email, reason, message_id, created_at, expires_at`
	listSuppressionsSQL = `SELECT ` + suppressionColumns + ` FROM suppressions
WHERE tenant_id = $1 AND ($2 = '' OR reason = $2) AND email > $3 AND ` + liveSuppression + `
ORDER BY email LIMIT $4`
	getSuppressionSQL = `SELECT ` + suppressionColumns + ` FROM suppressions
WHERE tenant_id = $1 AND email = $2 AND ` + liveSuppression
	// putSuppressionSQL keeps created_at (and so answers a repeat the
	// same) unless the entry it replaces had expired.
	putSuppressionSQL = `INSERT INTO suppressions AS s (` + suppressionColumns + `)
VALUES ($1, $2, $3, $4, now(), $5)
ON CONFLICT (tenant_id, email) DO UPDATE SET reason = excluded.reason, message_id = excluded.message_id,
	expires_at = excluded.expires_at,
	created_at = CASE WHEN s.expires_at IS NOT NULL AND s.expires_at <= now() THEN now() ELSE s.created_at END
RETURNING ` + suppressionColumns + `, xmax = 0`
	deleteSuppressionSQL = `DELETE FROM suppressions WHERE tenant_id = $1 AND email = $2 RETURNING ` + liveSuppression
)

func scanSuppression(row pgx.Row, extra ...any) (Suppression, error) {
	var s Suppression
	err := row.Scan(append([]any{&s.TenantID, &s.Email, &s.Reason, &s.MessageID, &s.CreatedAt, &s.ExpiresAt}, extra...)...)
	return s, err
}

// ListSuppressions returns a page of the tenant's live entries, by Email,
// those after p.After.
func (s *Store) ListSuppressions(ctx context.Context, tenantID string, p SuppressionPage) ([]Suppression, error) {
	if p.Limit < 1 || p.Limit > MaxSuppressionPage {
		return nil, fmt.Errorf("list suppressions: %w: limit %d, want 1 to %d", ErrRejected, p.Limit, MaxSuppressionPage)
	}
	if p.Reason != "" && !slices.Contains(SuppressionReasons(), p.Reason) {
		return nil, fmt.Errorf("list suppressions: %w: reason %q", ErrRejected, p.Reason)
	}
	if !storable(p.After) {
		return nil, fmt.Errorf("list suppressions: %w: cursor is not text", ErrRejected)
	}
	rows, err := s.pool.Query(ctx, listSuppressionsSQL, tenantID, p.Reason, p.After, p.Limit)
	if err != nil {
		return nil, fmt.Errorf("list suppressions: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Suppression, error) { return scanSuppression(row) })
	if err != nil {
		return nil, fmt.Errorf("list suppressions: %w", err)
	}
	return out, nil
}

// GetSuppression returns the tenant's live entry for email (normalised
// here); ErrNotFound when there is none or it expired.
func (s *Store) GetSuppression(ctx context.Context, tenantID, email string) (Suppression, error) {
	email = NormalizeEmail(email)
	if !storable(email) {
		return Suppression{}, fmt.Errorf("get suppression: %w", ErrNotFound)
	}
	sup, err := scanSuppression(s.pool.QueryRow(ctx, getSuppressionSQL, tenantID, email))
	if errors.Is(err, pgx.ErrNoRows) {
		return Suppression{}, fmt.Errorf("get suppression: %w", ErrNotFound)
	}
	if err != nil {
		return Suppression{}, fmt.Errorf("get suppression: %w", err)
	}
	return sup, nil
}

// PutSuppression lists sup.Email (normalised here) for sup.TenantID with
// sup.Reason, MessageID and ExpiresAt, replacing what the entry said
// before; CreatedAt is set by the store and kept across repeats. It
// returns the entry as stored and whether it was new.
func (s *Store) PutSuppression(ctx context.Context, sup Suppression) (Suppression, bool, error) {
	sup.Email = NormalizeEmail(sup.Email)
	var errs []error
	if sup.TenantID == "" {
		errs = append(errs, errors.New("tenant is empty"))
	}
	if !strings.Contains(sup.Email, "@") || !storable(sup.Email) {
		errs = append(errs, fmt.Errorf("email %q is not an address", sup.Email))
	}
	if !slices.Contains(SuppressionReasons(), sup.Reason) {
		errs = append(errs, fmt.Errorf("reason %q is not one of %v", sup.Reason, SuppressionReasons()))
	}
	if err := errors.Join(errs...); err != nil {
		return Suppression{}, false, fmt.Errorf("put suppression: %w: %w", ErrRejected, err)
	}
	var created bool
	out, err := scanSuppression(s.pool.QueryRow(ctx, putSuppressionSQL, sup.TenantID, sup.Email, sup.Reason, sup.MessageID, sup.ExpiresAt), &created)
	if err != nil {
		return Suppression{}, false, fmt.Errorf("put suppression: %w", rejected(err))
	}
	if created {
		s.metrics.suppressed(sup.Reason, 1)
	}
	return out, created, nil
}

// DeleteSuppression takes email (normalised here) off the tenant's list.
// ErrNotFound when it was not listed or its entry had expired (which is
// deleted all the same).
func (s *Store) DeleteSuppression(ctx context.Context, tenantID, email string) error {
	email = NormalizeEmail(email)
	if !storable(email) {
		return fmt.Errorf("delete suppression: %w", ErrNotFound)
	}
	var live bool
	err := s.pool.QueryRow(ctx, deleteSuppressionSQL, tenantID, email).Scan(&live)
	if errors.Is(err, pgx.ErrNoRows) || err == nil && !live {
		return fmt.Errorf("delete suppression: %w", ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("delete suppression: %w", err)
	}
	return nil
}
