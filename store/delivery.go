package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Delivery is what a worker needs to carry one message to one domain.
type Delivery struct {
	ID         uuid.UUID
	TenantID   string
	MessageID  string // RFC 5322 Message-ID
	MailFrom   string
	From       string // From header as text; its domain picks the DKIM keys
	Body       []byte
	DKIMHeader string // prepended to Body on every attempt
	Signed     bool   // false: DKIMHeader not computed yet
	Needs8Bit  bool
	NeedsUTF8  bool
	RequireTLS bool // REQUIRETLS (RFC 8689) asked for at submission
	CreatedAt  time.Time
	SendAt     *time.Time
	Recipients []PendingRecipient // queued or deferred, in this domain
	// Parked is why this job was taken out of delivery (ParkJob); "" if
	// it was not.
	Parked string
}

// PendingRecipient is a recipient still to be delivered.
type PendingRecipient struct {
	Idx      int
	Email    string
	Attempts int // attempts made so far
	// NextAttemptAt is when the recipient is due; nil means now.
	NextAttemptAt *time.Time
}

// The queries below look recipients up by primary key and say "not final"
// as status NOT IN the final states, not status IN ('queued', 'deferred'):
// the same rows (the CHECK on status), but the planner cannot match it to
// recipients_pending_idx. Before the table has statistics (a new database,
// the first minute of a burst) it otherwise ANDs that partial index with the
// primary key and reads every pending entry per lookup: O(backlog) work per
// delivery, 50 buffers instead of 3 at 10,000 pending.
const (
	selectDelivery = `SELECT tenant_id, message_id, mail_from, from_header, body, dkim_header, needs_8bit, needs_smtputf8, created_at, send_at,
	(SELECT reason FROM parked_jobs WHERE message_id = $1 AND domain = $2 AND parked_at IS NOT NULL), require_tls
FROM messages WHERE id = $1`
	selectPending = `SELECT idx, email, attempts, next_attempt_at FROM recipients
WHERE message_id = $1 AND domain = $2 AND status NOT IN ('delivered', 'bounced', 'suppressed', 'canceled') ORDER BY idx`
	// saveSignature stores the header unless one is stored and returns the
	// one that counts, in one statement. A NULL means a concurrent signer
	// committed after this statement's snapshot: readSignature sees it.
	saveSignature = `WITH saved AS (
	UPDATE messages SET dkim_header = $2 WHERE id = $1 AND dkim_header IS NULL RETURNING dkim_header)
SELECT dkim_header FROM saved
UNION ALL
SELECT dkim_header FROM messages WHERE id = $1 AND NOT EXISTS (SELECT FROM saved)`
	readSignature = `SELECT dkim_header FROM messages WHERE id = $1`
	// takeLease takes the due recipients nobody else is attempting: a lease
	// is taken over only once it lapsed, whoever asks (a worker's claim has
	// an owner of its own, so a reclaimed queue entry does not carry its
	// lease to a second, live holder). Under READ COMMITTED a concurrent
	// taker waits for the row and re-checks these conditions on the version
	// the first one wrote, so only one of them gets it.
	takeLease = `UPDATE recipients SET next_attempt_at = $3, lease_owner = $4,
	lease_until = now() + $5::bigint * interval '1 microsecond', updated_at = now()
WHERE message_id = $1 AND idx = ANY($2) AND status NOT IN ('delivered', 'bounced', 'suppressed', 'canceled')
AND (lease_owner IS NULL OR lease_until < now())
AND (next_attempt_at IS NULL OR next_attempt_at <= $6)
RETURNING idx`
	// renewLease keeps next_attempt_at no earlier than the lease: while
	// the holder lives, that is the earliest another attempt could start.
	renewLease = `UPDATE recipients SET lease_until = now() + $4::bigint * interval '1 microsecond',
	next_attempt_at = greatest(next_attempt_at, now() + $4::bigint * interval '1 microsecond')
WHERE message_id = $1 AND idx = ANY($2) AND lease_owner = $3 AND status NOT IN ('delivered', 'bounced', 'suppressed', 'canceled')`
	// lockMessage serialises RecordOutcomes per message: without it, workers
	// for two domains finishing at once each miss the other's uncommitted
	// recipients and neither completes the message. Advisory, so no row is
	// written; two int4 keys, a space apart from the bigint keys of
	// migrate.go.
	lockMessage = `SELECT pg_advisory_xact_lock($1::int, $2::int)`
	// recordAttempts moves the recipients to their outcome and inserts the
	// attempts in one statement, reading the parameters once. It is keyed
	// by attempt number: a recipient moves only from attempt n-1 to n, and
	// only the attempts of recipients that moved are inserted, so a retry
	// after a lost commit reply (the worker cannot tell it committed)
	// changes nothing.
	//
	// The suppression list and the soft-bounce counts follow from the
	// recipients that moved too, for the same reason: a retry moves none,
	// so it counts no failure twice and adds no suppression. Addresses are
	// compared as NormalizeEmail gives them (suppressionAddr). An entry
	// that expired is replaced; a live one is kept, with its older reason.
	// Rows are written in address order, so that two messages' outcomes
	// recorded at once lock shared addresses in the same order.
	// It returns how many suppressions it added, by reason.
	recordAttempts = `WITH o AS (
	SELECT * FROM unnest($2::smallint[], $3::int[], $4::timestamptz[], $5::int[], $6::text[], $7::inet[], $8::text[],
		$9::text[], $10::bool[], $11::int[], $12::text[], $13::text[], $14::text[], $15::timestamptz[],
		$16::text[], $17::text[], $18::bool[], $20::text[], $21::text[], $22::bool[])
	AS o(idx, attempt, started_at, duration_ms, mx_host, mx_ip, tls_version, tls_cipher, tls_verified,
		smtp_code, enhanced_code, response, outcome, next_at, bounce_type, bounce_class, suppress,
		tls_policy, tls_failure, tls_opt_out)
), moved AS (
	UPDATE recipients r SET
		status = o.outcome, attempts = o.attempt, last_attempt_at = o.started_at,
		next_attempt_at = o.next_at, smtp_code = o.smtp_code, enhanced_code = o.enhanced_code,
		response = o.response, mx_host = o.mx_host, tls_version = o.tls_version, updated_at = now(),
		tls_policy = o.tls_policy, tls_verified = CASE WHEN o.mx_host IS NULL THEN NULL ELSE o.tls_verified END,
		lease_owner = NULL, lease_until = NULL,
		-- NULL for a delivery: the class is the latest failure's.
		bounce_type = o.bounce_type, bounce_class = o.bounce_class, bounce_async = false
	FROM o
	WHERE r.message_id = $1 AND r.idx = o.idx AND r.attempts = o.attempt - 1
	AND r.status NOT IN ('delivered', 'bounced', 'suppressed', 'canceled')
	RETURNING r.idx, ` + suppressionAddr + ` AS addr, o.outcome, o.bounce_type, o.outcome = 'bounced' AND o.suppress AS suppress
), inserted AS (
	INSERT INTO attempts (` + attemptColumnList + `)
	SELECT $1, o.idx, o.attempt, o.started_at, o.duration_ms, o.mx_host, o.mx_ip, o.tls_version, o.tls_cipher,
		o.tls_verified, o.smtp_code, o.enhanced_code, o.response, o.outcome, o.bounce_type, o.bounce_class,
		o.tls_policy, o.tls_failure, o.tls_opt_out
	FROM o JOIN moved m ON m.idx = o.idx
), t AS (
	SELECT tenant_id FROM messages WHERE id = $1
), hard AS (
	INSERT INTO suppressions AS s (tenant_id, email, reason, message_id)
	SELECT DISTINCT t.tenant_id, m.addr, 'hard_bounce', $1::uuid FROM moved m, t WHERE m.suppress ORDER BY m.addr
	` + replaceExpired + `
	RETURNING 1
), soft AS (
	INSERT INTO soft_bounces AS b (tenant_id, email, failures, last_message_id)
	SELECT t.tenant_id, m.addr, count(*), $1 FROM moved m, t
	WHERE m.outcome = 'bounced' AND m.bounce_type = 'soft' AND NOT m.suppress
	GROUP BY t.tenant_id, m.addr ORDER BY m.addr
	ON CONFLICT (tenant_id, email) DO UPDATE SET failures = b.failures + excluded.failures,
		last_message_id = excluded.last_message_id, updated_at = now()
	RETURNING b.tenant_id, b.email, b.failures
), limited AS (
	INSERT INTO suppressions AS s (tenant_id, email, reason, message_id)
	SELECT tenant_id, email, 'soft_bounce_limit', $1::uuid FROM soft
	WHERE $19::int > 0 AND failures >= $19 AND email NOT IN (SELECT addr FROM moved WHERE suppress) ORDER BY email
	` + replaceExpired + `
	RETURNING 1
), reset AS (
	DELETE FROM soft_bounces b USING t
	WHERE b.tenant_id = t.tenant_id AND b.email IN (SELECT addr FROM moved WHERE outcome = 'delivered')
)
SELECT (SELECT count(*) FROM hard), (SELECT count(*) FROM limited)`
	// replaceExpired keeps a live entry and replaces one that expired.
	replaceExpired = `ON CONFLICT (tenant_id, email) DO UPDATE SET reason = excluded.reason,
		message_id = excluded.message_id, created_at = now(), expires_at = NULL
	WHERE s.expires_at IS NOT NULL AND s.expires_at <= now()`
	// clearSoftLimit ends the runs that reached the limit (recordAttempts
	// suppressed them): a statement of its own, since one statement cannot
	// both count a row and delete it. On a retry nothing is at the limit.
	clearSoftLimit = `DELETE FROM soft_bounces b USING messages m, recipients r
WHERE m.id = $1 AND r.message_id = $1 AND r.idx = ANY($2) AND b.tenant_id = m.tenant_id
AND b.email = ` + suppressionAddr + ` AND $3::int > 0 AND b.failures >= $3`
	// completeMessage drops the body once no recipient is left to deliver:
	// the ledger keeps the metadata, not the mail.
	// It also stores the final status (the message log filters on it): the
	// same row version, so no write is added.
	completeMessage = `UPDATE messages SET body = NULL, completed_at = now(), status = ` + finalStatus + `
WHERE id = $1 AND completed_at IS NULL
AND NOT EXISTS (SELECT 1 FROM recipients WHERE message_id = $1 AND status NOT IN ('delivered', 'bounced', 'suppressed', 'canceled'))
RETURNING true`
	// finalStatus is messageStatus in SQL for a message with no recipient
	// left to send: delivered, partially_delivered, canceled or bounced.
	finalStatus = `(SELECT CASE WHEN bool_and(status = 'delivered') THEN 'delivered'
	WHEN bool_or(status = 'delivered') THEN 'partially_delivered'
	WHEN bool_and(status = 'canceled') THEN 'canceled' ELSE 'bounced' END
FROM recipients WHERE message_id = $1)`
	// restatusMessage follows a report that bounced a recipient of a
	// message already complete (a DSN after a 250): its status changes,
	// its row only when it does.
	restatusMessage = `UPDATE messages SET status = ` + finalStatus + `
WHERE id = $1 AND completed_at IS NOT NULL AND status IS DISTINCT FROM ` + finalStatus
)

// LoadDelivery reads a message and its recipients still pending in domain.
// ErrNotFound means the message is not in the ledger (its accept has not
// committed yet, or never will); a message with nothing pending there
// comes back with no Recipients.
func (s *Store) LoadDelivery(ctx context.Context, id uuid.UUID, domain string) (*Delivery, error) {
	out, err := s.LoadDeliveries(ctx, []DeliveryRequest{{ID: id, Domain: domain}})
	if err != nil {
		return nil, fmt.Errorf("load delivery %s: %w", id, err)
	}
	return out[0].Delivery, out[0].Err
}

// SaveSignature stores the message's DKIM header unless one is stored
// already, and returns the one that counts: workers for two domains of
// one message may sign at once, and the first write wins so every
// transaction sends the same bytes.
func (s *Store) SaveSignature(ctx context.Context, id uuid.UUID, header string) (string, error) {
	stored, err := s.signature(ctx, saveSignature, id, header)
	if err == nil && stored == nil {
		stored, err = s.signature(ctx, readSignature, id)
	}
	if err != nil {
		return "", fmt.Errorf("save signature %s: %w", id, err)
	}
	if stored == nil {
		return "", fmt.Errorf("save signature %s: not stored", id)
	}
	return *stored, nil
}

func (s *Store) signature(ctx context.Context, query string, args ...any) (*string, error) {
	var stored *string
	err := s.pool.QueryRow(ctx, query, args...).Scan(&stored)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	return stored, err
}

// Lease asks for the recipients a worker is about to attempt.
type Lease struct {
	// Owner names the holder: unique to one worker's claim of a job, so
	// no one else renews or takes over the lease while it holds.
	Owner string
	// For is how long the lease holds unless renewed (RenewLease).
	For time.Duration
	// Next is the recipients' next attempt time should this one never be
	// recorded (a crash mid-delivery), set before dialling.
	Next time.Time
	// DueBy: recipients due later than this are not taken (the job is early
	// or a duplicate; their own job comes at their time).
	DueBy time.Time
}

// TakeLease takes a lease on those of the recipients idxs that are still
// pending, due by l.DueBy and not leased by another owner, and moves their
// next attempt to l.Next. It returns the indexes taken: only those may be
// attempted. Two workers holding the same job get disjoint sets, so no
// recipient is in two SMTP transactions at once.
func (s *Store) TakeLease(ctx context.Context, id uuid.UUID, idxs []int, l Lease) ([]int, error) {
	if l.Owner == "" || l.For <= 0 {
		return nil, fmt.Errorf("take lease %s: an owner and a positive duration are required", id)
	}
	rows, err := s.pool.Query(ctx, takeLease, id, toInt16(idxs), l.Next, l.Owner, l.For.Microseconds(), l.DueBy)
	if err != nil {
		return nil, fmt.Errorf("take lease %s: %w", id, err)
	}
	taken, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (int, error) {
		var idx int16
		err := row.Scan(&idx)
		return int(idx), err
	})
	if err != nil {
		return nil, fmt.Errorf("take lease %s: %w", id, err)
	}
	slices.Sort(taken)
	return taken, nil
}

// RenewLease extends owner's lease on the recipients for d more and
// returns how many it still holds: fewer than len(idxs) means others were
// recorded or, after the lease lapsed, taken by another owner.
func (s *Store) RenewLease(ctx context.Context, id uuid.UUID, idxs []int, owner string, d time.Duration) (int, error) {
	tag, err := s.pool.Exec(ctx, renewLease, id, toInt16(idxs), owner, d.Microseconds())
	if err != nil {
		return 0, fmt.Errorf("renew lease %s: %w", id, err)
	}
	return int(tag.RowsAffected()), nil
}

// Outcome is the result of one attempt for one recipient.
type Outcome struct {
	Attempt       Attempt    // the attempt row; Attempt.Outcome is the new status
	NextAttemptAt *time.Time // when deferred
	// Suppress puts the address on the tenant's suppression list
	// (hard_bounce) when the outcome is bounced (bounce.Verdict.Suppress);
	// it is ignored for other outcomes.
	Suppress bool
}

// RecordOutcomes writes the attempts and the recipients' new state in one
// transaction, frees the recipients' lease, and drops the body when no
// recipient is left pending. In the same transaction it keeps the tenant's
// suppression list: a bounced outcome with Suppress adds the address
// (hard_bounce); a soft one (BounceType soft, Outcome bounced) counts one
// failure in the address's run, and Options.SoftBounceLimit of them in a
// row add it (soft_bounce_limit) and end the run; a delivery ends the run. It reports whether the message is now
// complete. Recording is safe to repeat: an outcome counts only for the
// recipient's next attempt number (Attempt.Attempt = attempts made + 1),
// so a repeat, or a stale attempt of a recipient recorded since, changes
// nothing.
//
// It is one round trip: the statements go as one pipelined batch, which
// PostgreSQL runs as one implicit transaction (committed at the batch's
// Sync, rolled back whole if a statement fails).
func (s *Store) RecordOutcomes(ctx context.Context, id uuid.UUID, outs []Outcome) (complete bool, err error) {
	if len(outs) == 0 {
		return false, nil
	}
	// One code path with the batch form (store/batch.go): the same
	// statements, but the events after clearSoftLimit and completeMessage,
	// which read nothing of them.
	c, err := s.RecordOutcomesBatch(ctx, []MessageOutcomes{{ID: id, Outcomes: outs}})
	if err != nil {
		return false, err
	}
	return c[0], nil
}

// outcomeEvents are the events of outs: message.delivered, .deferred,
// .bounced, or .expired for a recipient given up after the queue lifetime
// (5.4.7, class expired); and message.suppressed after a failure that put
// the address on the suppression list (hard bounce or the soft-bounce
// limit). Each is written only if its recipient moved to that attempt in
// this transaction (WhenAttempt), with an id from EventID, so a repeated
// or stale record adds none.
func outcomeEvents(id uuid.UUID, outs []Outcome) []NewEvent {
	evs := make([]NewEvent, 0, len(outs))
	for _, o := range outs {
		a := o.Attempt
		typ := EventMessageDeferred
		switch a.Outcome {
		case RecipientDelivered:
			typ = EventMessageDelivered
		case RecipientBounced:
			typ = EventMessageBounced
			if a.BounceClass == "expired" || a.EnhancedCode == "5.4.7" {
				typ = EventMessageExpired
			}
		}
		d := EventDetail{Attempt: a.Attempt, SMTPCode: a.SMTPCode, EnhancedCode: a.EnhancedCode, Response: a.Response,
			MXHost: a.MXHost, TLSVersion: a.TLSVersion, BounceType: a.BounceType, BounceClass: a.BounceClass}
		d.TLSPolicy, d.TLSFailure = a.TLSPolicy, a.TLSFailure
		if a.MXHost != "" {
			d.TLSVerified = &a.TLSVerified
		}
		evs = append(evs, NewEvent{ID: EventID(id, a.Recipient, typ, a.Attempt), Type: typ, MessageID: id,
			RcptIdx: a.Recipient, Detail: d, When: WhenAttempt})
		if a.Outcome == RecipientBounced {
			evs = append(evs, NewEvent{ID: EventID(id, a.Recipient, EventMessageSuppressed, a.Attempt),
				Type: EventMessageSuppressed, MessageID: id, RcptIdx: a.Recipient, Detail: d, When: WhenSuppressed})
		}
	}
	return evs
}

// messageLockClass is lockMessage's first key ("mfdl"); messageLockKey the
// second, from the random tail of the message id. Ids that share it only
// wait for each other.
const messageLockClass int32 = 0x6d66646c

func messageLockKey(id uuid.UUID) int32 {
	return int32(binary.BigEndian.Uint32(id[12:]))
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func toInt16(xs []int) []int16 {
	out := make([]int16, len(xs))
	for i, x := range xs {
		out[i] = int16(x)
	}
	return out
}
