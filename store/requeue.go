package store

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// PendingJob is one delivery the queue ought to hold: a message and a
// recipient domain with recipients still queued or deferred.
type PendingJob struct {
	MessageID uuid.UUID
	Domain    string
	// Due is the earliest next attempt among those recipients: send_at for
	// scheduled mail, the retry time for deferred mail. Zero means now.
	Due time.Time
}

const (
	// Both queries read the partial index recipients_pending_idx, so their
	// cost follows the mail still pending, not the size of the ledger.
	// Parked jobs are left out: they must not come back on their own.
	selectPendingJobs = `SELECT message_id, domain, min(next_attempt_at) FROM recipients r
WHERE status IN ('queued', 'deferred') AND ` + notParkedRc + `
GROUP BY message_id, domain`
	// selectStaleJobs: pending, due long ago, and no live lease (nobody is
	// attempting them); one page after the key ($2, $3), in key order, so
	// a walk sees every stale job once however many there are.
	selectStaleJobs = `SELECT message_id, domain, min(next_attempt_at) FROM recipients r
WHERE status IN ('queued', 'deferred') AND next_attempt_at < $1
AND (lease_owner IS NULL OR lease_until < now())
AND (message_id, domain) > ($2, $3) AND ` + notParkedRc + `
GROUP BY message_id, domain
ORDER BY message_id, domain
LIMIT $4`
)

// PendingJobs calls fn once for every (message, recipient domain) with
// recipients still to deliver: what the queue must hold for nothing to be
// lost. It streams one query, so memory stays flat however much is
// pending; fn runs while the query holds a pool connection. An error from
// fn stops the walk and is returned.
func (s *Store) PendingJobs(ctx context.Context, fn func(PendingJob) error) error {
	rows, err := s.pool.Query(ctx, selectPendingJobs)
	if err != nil {
		return fmt.Errorf("pending jobs: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		j, err := scanPendingJob(rows)
		if err != nil {
			return fmt.Errorf("pending jobs: %w", err)
		}
		if err := fn(j); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("pending jobs: %w", err)
	}
	return nil
}

// StaleJobs returns up to limit pending jobs after the job after (zero:
// from the start), in (message id, domain) order, with a recipient due
// before dueBefore that no worker holds a lease on. Pass the last job
// returned as after to get the next page; fewer than limit means the walk
// is done. A job queued in Redis is claimed within moments of being due,
// so these are the ones the queue may have lost; the caller checks the
// queue before requeueing them.
func (s *Store) StaleJobs(ctx context.Context, dueBefore time.Time, after PendingJob, limit int) ([]PendingJob, error) {
	rows, err := s.pool.Query(ctx, selectStaleJobs, dueBefore, after.MessageID, after.Domain, limit)
	if err != nil {
		return nil, fmt.Errorf("stale jobs: %w", err)
	}
	jobs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (PendingJob, error) { return scanPendingJob(row) })
	if err != nil {
		return nil, fmt.Errorf("stale jobs: %w", err)
	}
	return jobs, nil
}

func scanPendingJob(row pgx.Row) (PendingJob, error) {
	var j PendingJob
	var due *time.Time
	if err := row.Scan(&j.MessageID, &j.Domain, &due); err != nil {
		return PendingJob{}, err
	}
	if due != nil {
		j.Due = *due
	}
	return j, nil
}
