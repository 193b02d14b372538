package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// STSPolicy is a cached MTA-STS policy (RFC 8461 3.2) of one domain.
type STSPolicy struct {
	Domain    string
	ID        string // the TXT record id it was fetched under
	Mode      string // enforce, testing or none
	MX        []string
	MaxAge    time.Duration
	FetchedAt time.Time
	ExpiresAt time.Time
	CheckedAt time.Time
}

const (
	selectSTSPolicy = `SELECT domain, policy_id, mode, mx, max_age, fetched_at, expires_at, checked_at
FROM mta_sts_policies WHERE domain = $1`
	upsertSTSPolicy = `INSERT INTO mta_sts_policies (domain, policy_id, mode, mx, max_age, fetched_at, expires_at, checked_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (domain) DO UPDATE SET policy_id = excluded.policy_id, mode = excluded.mode, mx = excluded.mx,
	max_age = excluded.max_age, fetched_at = excluded.fetched_at, expires_at = excluded.expires_at,
	checked_at = excluded.checked_at`
	// lockSTSDomain serialises refreshes of one domain's policy across the
	// fleet: two int4 keys, the first naming this use.
	lockSTSDomain = `SELECT pg_advisory_xact_lock(8461, hashtext($1))`
	addTLSRPT     = `INSERT INTO tlsrpt_counts (day, policy_domain, policy_type, mx_host, result_type, count)
SELECT * FROM unnest($1::date[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[])
ON CONFLICT (day, policy_domain, policy_type, mx_host, result_type) DO UPDATE SET count = tlsrpt_counts.count + EXCLUDED.count`
)

// STSPolicy returns domain's cached policy, or nil if there is none.
func (s *Store) STSPolicy(ctx context.Context, domain string) (*STSPolicy, error) {
	p, err := scanSTSPolicy(s.pool.QueryRow(ctx, selectSTSPolicy, domain))
	if err != nil {
		return nil, fmt.Errorf("read MTA-STS policy of %s: %w", domain, err)
	}
	return p, nil
}

func scanSTSPolicy(row pgx.Row) (*STSPolicy, error) {
	var p STSPolicy
	var maxAge int64
	err := row.Scan(&p.Domain, &p.ID, &p.Mode, &p.MX, &maxAge, &p.FetchedAt, &p.ExpiresAt, &p.CheckedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	p.MaxAge = time.Duration(maxAge) * time.Second
	return &p, nil
}

// RefreshSTSPolicy runs refresh for domain while holding a fleet-wide lock
// on it, with the policy cached now (nil if none): one worker fetches, the
// others wait and then find its result. refresh returns the policy to
// store, or nil to keep what is cached. The lock is held for the length of
// refresh, which must be bounded (a fetch timeout).
func (s *Store) RefreshSTSPolicy(ctx context.Context, domain string, refresh func(cached *STSPolicy) (*STSPolicy, error)) (*STSPolicy, error) {
	var out *STSPolicy
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, lockSTSDomain, domain); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		cached, err := scanSTSPolicy(tx.QueryRow(ctx, selectSTSPolicy, domain))
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		p, err := refresh(cached)
		if err != nil {
			return err
		}
		if p == nil {
			out = cached
			return nil
		}
		if _, err := tx.Exec(ctx, upsertSTSPolicy, domain, p.ID, p.Mode, p.MX, int64(p.MaxAge/time.Second),
			p.FetchedAt, p.ExpiresAt, p.CheckedAt); err != nil {
			return fmt.Errorf("save: %w", err)
		}
		out = p
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("refresh MTA-STS policy of %s: %w", domain, err)
	}
	return out, nil
}

// AddTLSResultCounts adds sessions' outcomes to the days' TLS-RPT counts
// (RFC 8460 4.4) in one statement: Result "" is a success, else a result
// type (4.3). Each key appears once in counts.
func (s *Store) AddTLSResultCounts(ctx context.Context, counts []TLSResultCount) error {
	if len(counts) == 0 {
		return nil
	}
	days := make([]time.Time, len(counts))
	domains, types, mxs, results := make([]string, len(counts)), make([]string, len(counts)), make([]string, len(counts)), make([]string, len(counts))
	ns := make([]int64, len(counts))
	for i, c := range counts {
		days[i] = c.Day.UTC().Truncate(24 * time.Hour)
		domains[i], types[i], mxs[i], results[i], ns[i] = c.PolicyDomain, c.PolicyType, c.MXHost, c.Result, c.Count
	}
	if _, err := s.pool.Exec(ctx, addTLSRPT, days, domains, types, mxs, results, ns); err != nil {
		return fmt.Errorf("add %d TLS result counts: %w", len(counts), err)
	}
	return nil
}

// TLSResultCount is one row of the TLS-RPT counts.
type TLSResultCount struct {
	Day          time.Time
	PolicyDomain string
	PolicyType   string
	MXHost       string
	Result       string // "" for successes
	Count        int64
}

// TLSResultCounts returns policyDomain's counts for the UTC days from
// since up to, not including, until.
func (s *Store) TLSResultCounts(ctx context.Context, policyDomain string, since, until time.Time) ([]TLSResultCount, error) {
	rows, _ := s.pool.Query(ctx, `SELECT day, policy_domain, policy_type, mx_host, result_type, count FROM tlsrpt_counts
WHERE policy_domain = $1 AND day >= $2 AND day < $3 ORDER BY day, policy_type, mx_host, result_type`, policyDomain, since, until)
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (TLSResultCount, error) {
		var c TLSResultCount
		err := row.Scan(&c.Day, &c.PolicyDomain, &c.PolicyType, &c.MXHost, &c.Result, &c.Count)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("read TLS-RPT counts of %s: %w", policyDomain, err)
	}
	return out, nil
}

// TLSReportDomains lists the policy domains with counts on day (UTC) for
// which no report has been claimed yet.
func (s *Store) TLSReportDomains(ctx context.Context, day time.Time) ([]string, error) {
	d := day.UTC().Truncate(24 * time.Hour)
	rows, _ := s.pool.Query(ctx, `SELECT DISTINCT c.policy_domain FROM tlsrpt_counts c
WHERE c.day = $1 AND NOT EXISTS (SELECT FROM tlsrpt_sent s WHERE s.day = $1 AND s.policy_domain = c.policy_domain)
ORDER BY 1`, d)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list TLS-RPT domains: %w", err)
	}
	return out, nil
}

// ClaimTLSReport reserves the report of policyDomain for day: true for the
// one caller in the fleet that gets to send it.
func (s *Store) ClaimTLSReport(ctx context.Context, day time.Time, policyDomain string) (bool, error) {
	d := day.UTC().Truncate(24 * time.Hour)
	tag, err := s.pool.Exec(ctx, `INSERT INTO tlsrpt_sent (day, policy_domain) VALUES ($1, $2) ON CONFLICT DO NOTHING`, d, policyDomain)
	if err != nil {
		return false, fmt.Errorf("claim TLS-RPT report of %s: %w", policyDomain, err)
	}
	return tag.RowsAffected() == 1, nil
}

// EnsureTenant creates tenant id unless it exists (the tenant TLS-RPT
// report mails are recorded under).
func (s *Store) EnsureTenant(ctx context.Context, id string) error {
	if _, err := s.pool.Exec(ctx, insertTenant, id); err != nil {
		return fmt.Errorf("ensure tenant %s: %w", id, err)
	}
	return nil
}

// STSPoliciesDue lists the domains whose cached policy is still valid at
// now and was last checked at least min(refresh, max_age/2) ago: due for
// a refresh (RFC 8461 10.2), oldest check first.
func (s *Store) STSPoliciesDue(ctx context.Context, now time.Time, refresh time.Duration, limit int) ([]string, error) {
	rows, _ := s.pool.Query(ctx, `SELECT domain FROM mta_sts_policies
WHERE expires_at > $1
AND $1 - checked_at >= least($2::bigint * interval '1 microsecond', (max_age / 2) * interval '1 second')
ORDER BY checked_at LIMIT $3`, now, refresh.Microseconds(), limit)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list MTA-STS policies due: %w", err)
	}
	return out, nil
}
