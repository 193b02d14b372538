package store

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// ParkedJob is a job taken out of delivery, and why.
type ParkedJob struct {
	MessageID uuid.UUID
	Domain    string
	Failures  int
	Reason    string
	ParkedAt  time.Time
}

const (
	// countFailure counts one failure and parks the job at the limit, in
	// one statement, so workers failing on it at once count every failure.
	countFailure = `INSERT INTO parked_jobs AS p (message_id, domain, failures, last_error, parked_at, reason)
VALUES ($1, $2, 1, $3, CASE WHEN $4 <= 1 THEN now() END, CASE WHEN $4 <= 1 THEN $3 END)
ON CONFLICT (message_id, domain) DO UPDATE SET
	failures = p.failures + 1, last_error = $3, updated_at = now(),
	parked_at = CASE WHEN p.parked_at IS NULL AND p.failures + 1 >= $4 THEN now() ELSE p.parked_at END,
	reason = CASE WHEN p.parked_at IS NULL AND p.failures + 1 >= $4 THEN $3 ELSE p.reason END
RETURNING parked_at IS NOT NULL`
	parkJob = `INSERT INTO parked_jobs AS p (message_id, domain, last_error, parked_at, reason)
VALUES ($1, $2, $3, now(), $3)
ON CONFLICT (message_id, domain) DO UPDATE SET parked_at = coalesce(p.parked_at, now()),
	reason = coalesce(p.reason, $3), last_error = $3, updated_at = now()`
	unparkJob   = `DELETE FROM parked_jobs WHERE message_id = $1 AND domain = $2`
	listParked  = `SELECT message_id, domain, failures, reason, parked_at FROM parked_jobs WHERE parked_at IS NOT NULL ORDER BY parked_at, message_id, domain`
	notParkedRc = `NOT EXISTS (SELECT FROM parked_jobs p WHERE p.message_id = r.message_id AND p.domain = r.domain AND p.parked_at IS NOT NULL)`
)

// CountJobFailure records one failure of the job (message id to domain)
// and parks it once failures reach limit; it reports whether the job is
// parked. The count lives in the ledger, so it adds up over every worker
// and restart.
func (s *Store) CountJobFailure(ctx context.Context, id uuid.UUID, domain, failure string, limit int) (parked bool, err error) {
	// The failure may quote what a peer or a panic said.
	failure = cleanText(failure, maxReplyText)
	if err := s.pool.QueryRow(ctx, countFailure, id, domain, failure, limit).Scan(&parked); err != nil {
		return false, fmt.Errorf("count failure of job %s to %s: %w", id, domain, err)
	}
	return parked, nil
}

// ParkJob takes the job out of delivery at once, with reason. A job
// parked already keeps its first reason.
func (s *Store) ParkJob(ctx context.Context, id uuid.UUID, domain, reason string) error {
	reason = cleanText(reason, maxReplyText)
	if _, err := s.pool.Exec(ctx, parkJob, id, domain, reason); err != nil {
		return fmt.Errorf("park job %s to %s: %w", id, domain, err)
	}
	return nil
}

// UnparkJob returns a parked job to delivery and forgets its failures;
// the caller enqueues it. It reports whether there was anything to undo.
func (s *Store) UnparkJob(ctx context.Context, id uuid.UUID, domain string) (bool, error) {
	tag, err := s.pool.Exec(ctx, unparkJob, id, domain)
	if err != nil {
		return false, fmt.Errorf("unpark job %s to %s: %w", id, domain, err)
	}
	return tag.RowsAffected() > 0, nil
}

// ParkedJobs lists the parked jobs, oldest first.
func (s *Store) ParkedJobs(ctx context.Context) ([]ParkedJob, error) {
	rows, err := s.pool.Query(ctx, listParked)
	if err != nil {
		return nil, fmt.Errorf("parked jobs: %w", err)
	}
	jobs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ParkedJob, error) {
		var j ParkedJob
		var reason *string
		err := row.Scan(&j.MessageID, &j.Domain, &j.Failures, &reason, &j.ParkedAt)
		if reason != nil {
			j.Reason = *reason
		}
		return j, err
	})
	if err != nil {
		return nil, fmt.Errorf("parked jobs: %w", err)
	}
	return jobs, nil
}
