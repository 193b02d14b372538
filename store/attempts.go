package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Attempt is one SMTP attempt for one recipient.
type Attempt struct {
	MessageID    uuid.UUID
	Recipient    int // recipient idx within the message
	Attempt      int // 1 for the first
	StartedAt    time.Time
	Duration     time.Duration
	MXHost       string // "" when no host was reached (DNS failure)
	MXIP         string // "" when no address was dialled
	TLSVersion   string // "" without TLS
	TLSCipher    string
	TLSVerified  bool
	SMTPCode     int // 0 when there was no reply (network error)
	EnhancedCode string
	Response     string
	Outcome      string // delivered, deferred or bounced
	// BounceType ("hard" or "soft") and BounceClass (one of BounceClasses)
	// classify a failure (package bounce); both "" for a delivery.
	BounceType  string
	BounceClass string
	// TLSPolicy is the policy the attempt ran under (none, mta-sts, dane,
	// requiretls; "" before policies existed), TLSFailure the TLS-RPT
	// result type (RFC 8460 4.3) when the policy refused a host, TLSOptOut
	// that the message's "TLS-Required: No" set policies aside.
	TLSPolicy  string
	TLSFailure string
	TLSOptOut  bool
}

const (
	partitionExists = `SELECT to_regclass($1) IS NOT NULL`
	listPartitions  = `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'attempts'::regclass ORDER BY c.relname`
	deleteOldDefault = `DELETE FROM attempts_default WHERE started_at < $1`
)

// attemptColumnList names the attempts columns in the order of
// attemptArrays.
const attemptColumnList = `message_id, rcpt_idx, attempt, started_at, duration_ms, mx_host, mx_ip,
	tls_version, tls_cipher, tls_verified, smtp_code, enhanced_code, response, outcome, bounce_type, bounce_class,
	tls_policy, tls_failure, tls_opt_out`

// insertAttempts inserts attempts from arrays, one per column. Rows go to
// the partition of their started_at month (the default one if it has none).
const insertAttempts = `INSERT INTO attempts (` + attemptColumnList + `)
SELECT * FROM unnest($1::uuid[], $2::smallint[], $3::int[], $4::timestamptz[], $5::int[], $6::text[], $7::inet[],
	$8::text[], $9::text[], $10::bool[], $11::int[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[],
	$17::text[], $18::text[], $19::bool[])`

// InsertAttempts records attempts in one statement.
func (s *Store) InsertAttempts(ctx context.Context, as []Attempt) error {
	if len(as) == 0 {
		return nil
	}
	var cols attemptArrays
	for i, a := range as {
		if err := cols.add(a); err != nil {
			return fmt.Errorf("insert attempts: %w: attempt %d: %w", ErrRejected, i, err)
		}
	}
	if _, err := s.pool.Exec(ctx, insertAttempts, cols.message, cols.rcpt, cols.attempt, cols.started, cols.durationMS,
		cols.mxHost, cols.mxIP, cols.tlsVersion, cols.tlsCipher, cols.tlsVerified, cols.code, cols.enhanced,
		cols.response, cols.outcome, cols.bounceType, cols.bounceClass, cols.tlsPolicy, cols.tlsFailure, cols.tlsOptOut); err != nil {
		return fmt.Errorf("insert attempts: %w", rejected(err))
	}
	return nil
}

// checkAttempt reports everything wrong with a and returns its MX address
// (the zero Addr when none was dialled).
func checkAttempt(a Attempt) (netip.Addr, error) {
	var errs []error
	if a.MessageID == uuid.Nil {
		errs = append(errs, errors.New("message id is nil"))
	}
	if a.Recipient < 0 || a.Recipient >= maxRecipients {
		errs = append(errs, fmt.Errorf("recipient idx %d out of range", a.Recipient))
	}
	if a.Attempt < 1 || a.Attempt > math.MaxInt32 {
		errs = append(errs, fmt.Errorf("attempt number %d, want 1 to %d", a.Attempt, math.MaxInt32))
	}
	if a.StartedAt.IsZero() {
		errs = append(errs, errors.New("started_at is zero"))
	}
	if ms := a.Duration.Milliseconds(); ms > math.MaxInt32 {
		errs = append(errs, fmt.Errorf("duration %v too long", a.Duration))
	}
	switch a.Outcome {
	case RecipientDelivered, RecipientDeferred, RecipientBounced:
	default:
		errs = append(errs, fmt.Errorf("outcome %q is not delivered, deferred or bounced", a.Outcome))
	}
	if err := checkBounce(a); err != nil {
		errs = append(errs, err)
	}
	var ip netip.Addr
	if a.MXIP != "" {
		addr, err := netip.ParseAddr(a.MXIP)
		if err != nil {
			errs = append(errs, fmt.Errorf("mx ip: %w", err))
		}
		ip = addr.Unmap()
	}
	return ip, errors.Join(errs...)
}

// attemptArrays holds attempts column by column, the parameters of an
// INSERT ... SELECT FROM unnest: unlike COPY, that can go in a pipelined
// batch with other statements. Nil pointers are NULLs.
type attemptArrays struct {
	message     []uuid.UUID
	rcpt        []int16
	attempt     []int32
	started     []time.Time
	durationMS  []int32
	mxHost      []*string
	mxIP        []*netip.Addr
	tlsVersion  []*string
	tlsCipher   []*string
	tlsVerified []bool
	code        []*int32
	enhanced    []*string
	response    []*string
	outcome     []string
	bounceType  []*string
	bounceClass []*string
	tlsPolicy   []*string
	tlsFailure  []*string
	tlsOptOut   []bool
}

// add appends a, checked as InsertAttempts checks it.
func (c *attemptArrays) add(a Attempt) error {
	ip, err := checkAttempt(a)
	if err != nil {
		return err
	}
	var mxIP *netip.Addr
	if ip.IsValid() {
		mxIP = &ip
	}
	var code *int32
	if a.SMTPCode != 0 {
		n := int32(a.SMTPCode)
		code = &n
	}
	c.message = append(c.message, a.MessageID)
	c.rcpt = append(c.rcpt, int16(a.Recipient))
	c.attempt = append(c.attempt, int32(a.Attempt))
	c.started = append(c.started, a.StartedAt)
	c.durationMS = append(c.durationMS, int32(max(a.Duration.Milliseconds(), 0)))
	// Every text column here may hold what a peer sent (its reply, the
	// names it gave, a TLS field); each is made storable text.
	c.mxHost = append(c.mxHost, optional(cleanLine(a.MXHost, maxHostText)))
	c.mxIP = append(c.mxIP, mxIP)
	c.tlsVersion = append(c.tlsVersion, optional(cleanLine(a.TLSVersion, maxHostText)))
	c.tlsCipher = append(c.tlsCipher, optional(cleanLine(a.TLSCipher, maxHostText)))
	c.tlsVerified = append(c.tlsVerified, a.TLSVerified)
	c.code = append(c.code, code)
	c.enhanced = append(c.enhanced, optional(cleanLine(a.EnhancedCode, maxHostText)))
	c.response = append(c.response, optional(cleanText(a.Response, maxReplyText)))
	c.outcome = append(c.outcome, a.Outcome)
	c.bounceType = append(c.bounceType, optional(a.BounceType))
	c.bounceClass = append(c.bounceClass, optional(a.BounceClass))
	c.tlsPolicy = append(c.tlsPolicy, optional(cleanLine(a.TLSPolicy, maxHostText)))
	c.tlsFailure = append(c.tlsFailure, optional(cleanLine(a.TLSFailure, maxHostText)))
	c.tlsOptOut = append(c.tlsOptOut, a.TLSOptOut)
	return nil
}

// EnsureAttemptPartitions creates the monthly partitions attempts_yYYYYmMM
// (UTC months) for the month of now and monthsAhead months after it, those
// missing. Run it at least monthly (Migrate does, for two months ahead).
//
// PostgreSQL refuses to create a partition while the default partition
// holds rows of its range, so a month is created detached, the default
// partition's rows of that month are moved into it, and it is attached —
// all in one transaction while the default partition is locked. That is
// quick only while the default partition is small, which creating months
// ahead of time ensures.
func (s *Store) EnsureAttemptPartitions(ctx context.Context, now time.Time, monthsAhead int) error {
	return ensureAttemptPartitions(ctx, s.pool, now, monthsAhead)
}

// beginner is a pool or one of its connections.
type beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// ensureAttemptPartitions runs on db so that Migrate can use the connection
// it already holds: with a pool of one it would otherwise wait forever.
func ensureAttemptPartitions(ctx context.Context, db beginner, now time.Time, monthsAhead int) error {
	if monthsAhead < 0 {
		return fmt.Errorf("ensure attempt partitions: monthsAhead %d is negative", monthsAhead)
	}
	first := monthStart(now)
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, partitionLockKey); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		for i := 0; i <= monthsAhead; i++ {
			lo := first.AddDate(0, i, 0)
			if err := createPartition(ctx, tx, lo, lo.AddDate(0, 1, 0)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ensure attempt partitions: %w", err)
	}
	return nil
}

func createPartition(ctx context.Context, tx pgx.Tx, lo, hi time.Time) error {
	name := partitionName(lo)
	var exists bool
	if err := tx.QueryRow(ctx, partitionExists, name).Scan(&exists); err != nil {
		return fmt.Errorf("partition %s: %w", name, err)
	}
	if exists {
		return nil
	}
	// Names and bounds come from time.Time, never from input; DDL takes
	// no parameters.
	ident := pgx.Identifier{name}.Sanitize()
	bounds := fmt.Sprintf("FROM ('%s') TO ('%s')", lo.Format(time.RFC3339), hi.Format(time.RFC3339))
	steps := []struct {
		sql  string
		args []any
	}{
		// Parent first, in a mode inserts do not conflict with, then the
		// default partition: the order inserts take them, so no deadlock.
		{sql: `LOCK TABLE ONLY attempts IN SHARE UPDATE EXCLUSIVE MODE`},
		{sql: `LOCK TABLE attempts_default IN ACCESS EXCLUSIVE MODE`},
		{sql: `CREATE TABLE ` + ident + ` (LIKE attempts INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`},
		{sql: `WITH moved AS (DELETE FROM attempts_default WHERE started_at >= $1 AND started_at < $2 RETURNING *)
INSERT INTO ` + ident + ` SELECT * FROM moved`, args: []any{lo, hi}},
		// Attaching builds the parent's indexes on the new table.
		{sql: `ALTER TABLE attempts ATTACH PARTITION ` + ident + ` FOR VALUES ` + bounds},
	}
	for _, st := range steps {
		if _, err := tx.Exec(ctx, st.sql, st.args...); err != nil {
			return fmt.Errorf("partition %s: %w", name, err)
		}
	}
	return nil
}

// DropAttemptPartitionsBefore drops the monthly partitions that end on or
// before before, deletes older rows from the default partition, and
// returns the names of the partitions it dropped.
func (s *Store) DropAttemptPartitionsBefore(ctx context.Context, before time.Time) ([]string, error) {
	dropped := []string{}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		dropped = dropped[:0]
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, partitionLockKey); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		rows, _ := tx.Query(ctx, listPartitions)
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("list partitions: %w", err)
		}
		for _, name := range names {
			lo, ok := parsePartitionName(name)
			if !ok || lo.AddDate(0, 1, 0).After(before) {
				continue // the default partition, or a month not wholly before
			}
			if _, err := tx.Exec(ctx, `DROP TABLE `+pgx.Identifier{name}.Sanitize()); err != nil {
				return fmt.Errorf("drop %s: %w", name, err)
			}
			dropped = append(dropped, name)
		}
		if _, err := tx.Exec(ctx, deleteOldDefault, before); err != nil {
			return fmt.Errorf("trim default partition: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("drop attempt partitions: %w", err)
	}
	return dropped, nil
}

func monthStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

func partitionName(month time.Time) string {
	return fmt.Sprintf("attempts_y%04dm%02d", month.Year(), int(month.Month()))
}

// parsePartitionName is the inverse of partitionName.
func parsePartitionName(name string) (time.Time, bool) {
	var y, m int
	if _, err := fmt.Sscanf(name, "attempts_y%4dm%2d", &y, &m); err != nil || m < 1 || m > 12 {
		return time.Time{}, false
	}
	month := time.Date(y, time.Month(m), 1, 0, 0, 0, 0, time.UTC)
	if partitionName(month) != name {
		return time.Time{}, false
	}
	return month, true
}
