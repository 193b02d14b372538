package store

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// WebhookEndpoint is a tenant's webhook receiver, without its secrets.
type WebhookEndpoint struct {
	ID          uuid.UUID
	TenantID    string
	URL         string
	Events      []string
	Description string
	CreatedAt   time.Time
	UpdatedAt   time.Time
	// DisabledAt is set when the endpoint answered 410, failed for too
	// long, or was disabled through the API; nothing is sent to it then
	// and new events are not queued for it.
	DisabledAt     *time.Time
	DisabledReason string
	FailingSince   *time.Time // first failure since the last success
	// PreviousSecretExpiresAt: after a rotation, until then the old secret
	// signs too.
	PreviousSecretExpiresAt *time.Time
}

// NewWebhookEndpoint is an endpoint to create.
type NewWebhookEndpoint struct {
	TenantID    string
	URL         string
	Events      []string
	Description string
}

// WebhookEndpointPatch changes an endpoint; nil fields stay as they are.
type WebhookEndpointPatch struct {
	URL         *string
	Events      []string
	Description *string
	Enabled     *bool // true clears a disable and the failure record
}

// WebhookSecretBytes is the size of a generated signing secret.
const WebhookSecretBytes = 32

const endpointColumns = `id, tenant_id, url, events, description, created_at, updated_at, disabled_at,
	coalesce(disabled_reason, ''), failing_since, CASE WHEN previous_expires_at > now() THEN previous_expires_at END`

const (
	insertEndpoint = `INSERT INTO webhook_endpoints (id, tenant_id, url, events, description, secret)
VALUES ($1, $2, $3, $4, $5, $6) RETURNING ` + endpointColumns
	selectEndpoints = `SELECT ` + endpointColumns + ` FROM webhook_endpoints WHERE tenant_id = $1 ORDER BY created_at, id`
	selectEndpoint  = `SELECT ` + endpointColumns + ` FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2`
	updateEndpoint  = `UPDATE webhook_endpoints SET
	url = coalesce($3, url), events = coalesce($4, events), description = coalesce($5, description),
	disabled_at = CASE WHEN $6::bool IS NULL THEN disabled_at WHEN $6 THEN NULL ELSE coalesce(disabled_at, now()) END,
	disabled_reason = CASE WHEN $6::bool IS NULL THEN disabled_reason WHEN $6 THEN NULL
		ELSE coalesce(disabled_reason, 'disabled through the API') END,
	failing_since = CASE WHEN $6::bool THEN NULL ELSE failing_since END,
	updated_at = now()
WHERE tenant_id = $1 AND id = $2 RETURNING ` + endpointColumns
	deleteEndpoint = `DELETE FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2`
	rotateSecret   = `UPDATE webhook_endpoints SET previous_secret = secret,
	previous_expires_at = now() + $4::bigint * interval '1 microsecond', secret = $3, updated_at = now()
WHERE tenant_id = $1 AND id = $2 RETURNING ` + endpointColumns
)

func scanEndpoint(row pgx.Row) (WebhookEndpoint, error) {
	var e WebhookEndpoint
	err := row.Scan(&e.ID, &e.TenantID, &e.URL, &e.Events, &e.Description, &e.CreatedAt, &e.UpdatedAt,
		&e.DisabledAt, &e.DisabledReason, &e.FailingSince, &e.PreviousSecretExpiresAt)
	return e, err
}

func checkEventTypes(types []string) error {
	if len(types) == 0 {
		return errors.New("no event types")
	}
	for _, t := range types {
		if !IsEventType(t) {
			return fmt.Errorf("unknown event type %q", t)
		}
	}
	return nil
}

// CreateWebhookEndpoint stores a new endpoint and returns it with its
// signing secret, which the API shows once. The URL must have been checked
// by the caller (package webhooks).
func (s *Store) CreateWebhookEndpoint(ctx context.Context, n NewWebhookEndpoint) (WebhookEndpoint, []byte, error) {
	if err := checkEventTypes(n.Events); err != nil {
		return WebhookEndpoint{}, nil, fmt.Errorf("create webhook endpoint: %w: %w", ErrRejected, err)
	}
	if n.URL == "" || !storable(n.URL) || !storable(n.Description) {
		return WebhookEndpoint{}, nil, fmt.Errorf("create webhook endpoint: %w: URL or description not storable", ErrRejected)
	}
	secret := newWebhookSecret()
	sealed, err := s.sealSecret(secret)
	if err != nil {
		return WebhookEndpoint{}, nil, fmt.Errorf("create webhook endpoint: %w", err)
	}
	e, err := scanEndpoint(s.pool.QueryRow(ctx, insertEndpoint, uuid.Must(uuid.NewV7()), n.TenantID, n.URL, n.Events, n.Description, sealed))
	if err != nil {
		return WebhookEndpoint{}, nil, fmt.Errorf("create webhook endpoint: %w", rejected(err))
	}
	return e, secret, nil
}

// sealSecret and openSecret pass a signing secret through
// Options.Secrets, if set.
func (s *Store) sealSecret(secret []byte) ([]byte, error) {
	if s.secrets == nil {
		return secret, nil
	}
	b, err := s.secrets.Seal(secret)
	if err != nil {
		return nil, fmt.Errorf("seal secret: %w", err)
	}
	return b, nil
}

func (s *Store) openSecret(blob []byte) ([]byte, error) {
	if s.secrets == nil || blob == nil {
		return blob, nil
	}
	b, err := s.secrets.Open(blob)
	if err != nil {
		return nil, fmt.Errorf("open webhook secret (MAILFERRY_SECRET_KEY): %w", err)
	}
	return b, nil
}

func newWebhookSecret() []byte {
	b := make([]byte, WebhookSecretBytes)
	rand.Read(b) // never fails: crypto/rand crashes the program instead
	return b
}

// ListWebhookEndpoints returns the tenant's endpoints, oldest first.
func (s *Store) ListWebhookEndpoints(ctx context.Context, tenant string) ([]WebhookEndpoint, error) {
	rows, err := s.pool.Query(ctx, selectEndpoints, tenant)
	if err != nil {
		return nil, fmt.Errorf("list webhook endpoints: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (WebhookEndpoint, error) { return scanEndpoint(row) })
	if err != nil {
		return nil, fmt.Errorf("list webhook endpoints: %w", err)
	}
	return out, nil
}

// GetWebhookEndpoint returns one of the tenant's endpoints, or ErrNotFound
// (also for another tenant's).
func (s *Store) GetWebhookEndpoint(ctx context.Context, tenant string, id uuid.UUID) (WebhookEndpoint, error) {
	return s.endpointQuery(ctx, "get webhook endpoint", selectEndpoint, tenant, id)
}

// UpdateWebhookEndpoint applies p and returns the endpoint as it is now.
func (s *Store) UpdateWebhookEndpoint(ctx context.Context, tenant string, id uuid.UUID, p WebhookEndpointPatch) (WebhookEndpoint, error) {
	if p.Events != nil {
		if err := checkEventTypes(p.Events); err != nil {
			return WebhookEndpoint{}, fmt.Errorf("update webhook endpoint: %w: %w", ErrRejected, err)
		}
	}
	return s.endpointQuery(ctx, "update webhook endpoint", updateEndpoint, tenant, id, p.URL, p.Events, p.Description, p.Enabled)
}

// RotateWebhookSecret gives the endpoint a new secret and returns it; the
// old one keeps signing for overlap (24 h in the API), so receivers can
// switch without losing a delivery.
func (s *Store) RotateWebhookSecret(ctx context.Context, tenant string, id uuid.UUID, overlap time.Duration) (WebhookEndpoint, []byte, error) {
	secret := newWebhookSecret()
	sealed, err := s.sealSecret(secret)
	if err != nil {
		return WebhookEndpoint{}, nil, fmt.Errorf("rotate webhook secret: %w", err)
	}
	e, err := s.endpointQuery(ctx, "rotate webhook secret", rotateSecret, tenant, id, sealed, overlap.Microseconds())
	if err != nil {
		return WebhookEndpoint{}, nil, err
	}
	return e, secret, nil
}

func (s *Store) endpointQuery(ctx context.Context, what, query string, args ...any) (WebhookEndpoint, error) {
	e, err := scanEndpoint(s.pool.QueryRow(ctx, query, args...))
	if errors.Is(err, pgx.ErrNoRows) {
		return WebhookEndpoint{}, fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	if err != nil {
		return WebhookEndpoint{}, fmt.Errorf("%s: %w", what, rejected(err))
	}
	return e, nil
}

// DeleteWebhookEndpoint deletes the endpoint with its deliveries and their
// history; ErrNotFound if the tenant has no such endpoint.
func (s *Store) DeleteWebhookEndpoint(ctx context.Context, tenant string, id uuid.UUID) error {
	tag, err := s.pool.Exec(ctx, deleteEndpoint, tenant, id)
	if err != nil {
		return fmt.Errorf("delete webhook endpoint: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("delete webhook endpoint: %w", ErrNotFound)
	}
	return nil
}

// WebhookClaim asks for due webhook deliveries.
type WebhookClaim struct {
	Owner string        // unique to the claiming process
	Lease time.Duration // how long the deliveries stay this owner's
	Limit int           // most deliveries to take
	// PerEndpoint caps this process's deliveries in flight to one endpoint;
	// InFlight is how many it has now, per endpoint. An endpoint at its
	// cap gets nothing, so a slow one never takes the slots of others.
	PerEndpoint int
	InFlight    map[uuid.UUID]int
}

// WebhookDelivery is one event to send to one endpoint, under a lease.
type WebhookDelivery struct {
	ID         int64
	EndpointID uuid.UUID
	URL        string
	Secrets    [][]byte // the current one first, then the previous one during a rotation
	Attempt    int      // the number of the attempt about to be made
	CreatedAt  time.Time
	Event      StoredEvent
}

// claimDeliveries takes due deliveries nobody holds, in due order, at
// most $6 (or the endpoint's free slots) per endpoint. Per-recipient
// order: a delivery waits while an earlier event of its recipient is
// still pending for the same endpoint. FOR UPDATE SKIP LOCKED lets
// processes claim at once without waiting for each other; the lease keeps
// the rows theirs after this statement.
const claimDeliveries = `WITH cand AS (
	SELECT d.id, d.endpoint_id, d.next_attempt_at FROM webhook_deliveries d
	JOIN webhook_endpoints ep ON ep.id = d.endpoint_id
	WHERE d.status = 'pending' AND d.next_attempt_at <= now()
	AND (d.lease_until IS NULL OR d.lease_until < now())
	AND ep.disabled_at IS NULL
	AND NOT (d.endpoint_id = ANY ($4::uuid[]))
	AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p
		WHERE p.endpoint_id = d.endpoint_id AND p.status = 'pending' AND p.message_id = d.message_id
		AND p.rcpt_idx = d.rcpt_idx AND (p.sequence, p.id) < (d.sequence, d.id))
	ORDER BY d.next_attempt_at, d.id
	LIMIT $5
	FOR UPDATE OF d SKIP LOCKED
), pick AS (
	SELECT x.id FROM (
		SELECT c.id, c.next_attempt_at, coalesce(f.free, $6) AS free,
			row_number() OVER (PARTITION BY c.endpoint_id ORDER BY c.next_attempt_at, c.id) AS rn
		FROM cand c LEFT JOIN unnest($7::uuid[], $8::int[]) AS f(endpoint_id, free) ON f.endpoint_id = c.endpoint_id
	) x WHERE x.rn <= x.free ORDER BY x.next_attempt_at, x.id LIMIT $3
)
UPDATE webhook_deliveries d SET lease_owner = $1, lease_until = now() + $2::bigint * interval '1 microsecond', updated_at = now()
FROM pick, events e, webhook_endpoints ep
WHERE d.id = pick.id AND e.id = d.event_id AND ep.id = d.endpoint_id
RETURNING d.id, d.endpoint_id, ep.url, ep.secret, CASE WHEN ep.previous_expires_at > now() THEN ep.previous_secret END,
	d.attempts + 1, d.created_at, e.id, e.type, e.created_at, e.data`

// ClaimWebhookDeliveries takes up to c.Limit due deliveries under a lease.
func (s *Store) ClaimWebhookDeliveries(ctx context.Context, c WebhookClaim) ([]WebhookDelivery, error) {
	if c.Owner == "" || c.Lease <= 0 || c.Limit <= 0 || c.PerEndpoint <= 0 {
		return nil, errors.New("claim webhook deliveries: Owner, Lease, Limit and PerEndpoint are required")
	}
	full := []uuid.UUID{}
	var ids []uuid.UUID
	var free []int32
	for id, n := range c.InFlight {
		if n >= c.PerEndpoint {
			full = append(full, id)
			continue
		}
		ids = append(ids, id)
		free = append(free, int32(c.PerEndpoint-n))
	}
	// Look at more rows than asked, so endpoints at their cap within the
	// scan leave room for others.
	scan := c.Limit * 4
	rows, err := s.pool.Query(ctx, claimDeliveries, c.Owner, c.Lease.Microseconds(), c.Limit, full, scan, c.PerEndpoint, ids, free)
	if err != nil {
		return nil, fmt.Errorf("claim webhook deliveries: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (WebhookDelivery, error) {
		var d WebhookDelivery
		var cur, prev []byte
		err := row.Scan(&d.ID, &d.EndpointID, &d.URL, &cur, &prev, &d.Attempt, &d.CreatedAt,
			&d.Event.ID, &d.Event.Type, &d.Event.CreatedAt, &d.Event.Data)
		if err != nil {
			return d, err
		}
		if cur, err = s.openSecret(cur); err != nil {
			return d, err
		}
		if prev, err = s.openSecret(prev); err != nil {
			return d, err
		}
		d.Secrets = [][]byte{cur}
		if prev != nil {
			d.Secrets = append(d.Secrets, prev)
		}
		return d, nil
	})
	if err != nil {
		return nil, fmt.Errorf("claim webhook deliveries: %w", err)
	}
	return out, nil
}

// Webhook delivery outcomes of one attempt.
const (
	WebhookDelivered = "delivered" // a 2xx answer
	WebhookRetry     = "retry"     // stays pending until NextAttemptAt
	WebhookFailed    = "failed"    // given up
)

// WebhookResult is the result of one attempt of a delivery.
type WebhookResult struct {
	DeliveryID    int64
	EndpointID    uuid.UUID
	Owner         string // the claim's owner: a result of a lapsed lease is dropped
	Attempt       int
	StartedAt     time.Time
	StatusCode    int // 0: no HTTP answer
	Latency       time.Duration
	Error         string
	Outcome       string    // WebhookDelivered, WebhookRetry or WebhookFailed
	NextAttemptAt time.Time // for WebhookRetry
	// DisableReason, when set, disables the endpoint at once (410 Gone).
	DisableReason string
	// DisableAfter disables the endpoint when this failure finds it failing
	// for at least that long (5 days); 0: never.
	DisableAfter time.Duration
}

// recordDelivery writes one attempt: the delivery's new state, its
// history row, and the endpoint's health (failing since, disabled) in one
// statement. Only the lease's owner may record.
const recordDelivery = `WITH d AS (
	UPDATE webhook_deliveries SET status = CASE WHEN $3::text = 'retry' THEN 'pending' ELSE $3 END,
		attempts = $4, next_attempt_at = coalesce($5, next_attempt_at), lease_owner = NULL, lease_until = NULL,
		last_status = $6, last_latency_ms = $7, last_error = $8, updated_at = now()
	WHERE id = $1 AND lease_owner = $2 AND status = 'pending'
	RETURNING id, endpoint_id
), a AS (
	INSERT INTO webhook_attempts (delivery_id, endpoint_id, attempt, started_at, status_code, latency_ms, error, outcome)
	SELECT d.id, d.endpoint_id, $4, $9, $6, $7, $8, $3 FROM d
), ep AS (
	UPDATE webhook_endpoints e SET
		failing_since = CASE WHEN $3 = 'delivered' THEN NULL ELSE coalesce(e.failing_since, $9) END,
		disabled_at = CASE WHEN e.disabled_at IS NULL AND $3 <> 'delivered'
			AND ($10::text <> '' OR ($11::bigint > 0 AND coalesce(e.failing_since, $9) <= now() - $11 * interval '1 microsecond'))
			THEN now() ELSE e.disabled_at END,
		disabled_reason = CASE WHEN e.disabled_at IS NULL AND $3 <> 'delivered'
			AND ($10 <> '' OR ($11 > 0 AND coalesce(e.failing_since, $9) <= now() - $11 * interval '1 microsecond'))
			THEN coalesce(nullif($10, ''), 'failing since ' || to_char(coalesce(e.failing_since, $9) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
			ELSE e.disabled_reason END,
		updated_at = now()
	FROM d WHERE e.id = d.endpoint_id AND ($3 <> 'delivered' OR e.failing_since IS NOT NULL)
	RETURNING e.disabled_at = now() AS disabled, coalesce(e.disabled_reason, '') AS reason
)
SELECT EXISTS (SELECT 1 FROM d), coalesce((SELECT disabled FROM ep), false), coalesce((SELECT reason FROM ep), '')`

// WebhookRecorded is what RecordWebhookAttempt changed.
type WebhookRecorded struct {
	Recorded       bool   // false: the lease had lapsed and another sender took the delivery
	Disabled       bool   // this attempt disabled the endpoint
	DisabledReason string // why, when Disabled
}

// RecordWebhookAttempt records one attempt of a claimed delivery.
func (s *Store) RecordWebhookAttempt(ctx context.Context, r WebhookResult) (WebhookRecorded, error) {
	switch r.Outcome {
	case WebhookDelivered, WebhookRetry, WebhookFailed:
	default:
		return WebhookRecorded{}, fmt.Errorf("record webhook attempt: %w: outcome %q", ErrRejected, r.Outcome)
	}
	var next *time.Time
	if r.Outcome == WebhookRetry {
		next = &r.NextAttemptAt
	}
	var status *int
	if r.StatusCode > 0 {
		status = &r.StatusCode
	}
	var out WebhookRecorded
	err := s.pool.QueryRow(ctx, recordDelivery, r.DeliveryID, r.Owner, r.Outcome, r.Attempt, next, status,
		int(r.Latency.Milliseconds()), nullString(cleanText(r.Error, maxHeaderText)), r.StartedAt,
		cleanLine(r.DisableReason, maxHeaderText), r.DisableAfter.Microseconds()).
		Scan(&out.Recorded, &out.Disabled, &out.DisabledReason)
	if err != nil {
		return WebhookRecorded{}, fmt.Errorf("record webhook attempt %d: %w", r.DeliveryID, rejected(err))
	}
	return out, nil
}

// WebhookAttempt is one HTTP attempt of a delivery, for the history.
type WebhookAttempt struct {
	ID             int64
	DeliveryID     int64
	EventID        uuid.UUID
	EventType      string
	Attempt        int
	StartedAt      time.Time
	StatusCode     *int
	LatencyMS      int
	Error          *string
	Outcome        string // WebhookDelivered, WebhookRetry or WebhookFailed
	DeliveryStatus string // the delivery's state now: pending, delivered or failed
}

const selectAttempts = `SELECT a.id, a.delivery_id, d.event_id, e.type, a.attempt, a.started_at, a.status_code,
	a.latency_ms, a.error, a.outcome, d.status
FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id JOIN events e ON e.id = d.event_id
WHERE a.endpoint_id = $1 AND ($2::bigint = 0 OR a.id < $2) ORDER BY a.id DESC LIMIT $3`

// ListWebhookAttempts returns an endpoint's attempts, newest first, before
// the attempt id before (0: from the newest), and the id to pass next (0:
// no more). The caller checks that the endpoint is the tenant's.
func (s *Store) ListWebhookAttempts(ctx context.Context, endpoint uuid.UUID, before int64, limit int) ([]WebhookAttempt, int64, error) {
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, 1000)
	rows, err := s.pool.Query(ctx, selectAttempts, endpoint, before, limit+1)
	if err != nil {
		return nil, 0, fmt.Errorf("list webhook attempts: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (WebhookAttempt, error) {
		var a WebhookAttempt
		err := row.Scan(&a.ID, &a.DeliveryID, &a.EventID, &a.EventType, &a.Attempt, &a.StartedAt, &a.StatusCode,
			&a.LatencyMS, &a.Error, &a.Outcome, &a.DeliveryStatus)
		return a, err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list webhook attempts: %w", err)
	}
	var next int64
	if len(out) > limit {
		out = out[:limit]
		next = out[limit-1].ID
	}
	return out, next, nil
}

// WebhookReplay selects the events to send again: those in [Since, Until)
// of a type the endpoint is subscribed to, or exactly EventIDs.
type WebhookReplay struct {
	Since, Until time.Time
	EventIDs     []uuid.UUID
}

const (
	replayRange = `INSERT INTO webhook_deliveries (endpoint_id, event_id, message_id, rcpt_idx, sequence)
SELECT ep.id, e.id, e.message_id, e.rcpt_idx, e.sequence
FROM webhook_endpoints ep JOIN events e ON e.tenant_id = ep.tenant_id
WHERE ep.tenant_id = $1 AND ep.id = $2 AND e.created_at >= $3 AND e.created_at < $4 AND e.type = ANY (ep.events)
ORDER BY e.xid, e.pos
RETURNING event_id`
	replayIDs = `INSERT INTO webhook_deliveries (endpoint_id, event_id, message_id, rcpt_idx, sequence)
SELECT ep.id, e.id, e.message_id, e.rcpt_idx, e.sequence
FROM webhook_endpoints ep JOIN events e ON e.tenant_id = ep.tenant_id
WHERE ep.tenant_id = $1 AND ep.id = $2 AND e.id = ANY ($3)
ORDER BY e.xid, e.pos
RETURNING event_id`
)

// ReplayWebhook queues the selected events for the endpoint again (with
// their own ids, so receivers that keep ids see repeats as repeats) and
// returns the ids queued. With EventIDs, ids the tenant has no event for
// are returned in missing and nothing is queued.
func (s *Store) ReplayWebhook(ctx context.Context, tenant string, endpoint uuid.UUID, r WebhookReplay) (queued, missing []uuid.UUID, err error) {
	if _, err := s.GetWebhookEndpoint(ctx, tenant, endpoint); err != nil {
		return nil, nil, fmt.Errorf("replay webhook: %w", err)
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var rows pgx.Rows
		if r.EventIDs != nil {
			rows, _ = tx.Query(ctx, replayIDs, tenant, endpoint, r.EventIDs)
		} else {
			rows, _ = tx.Query(ctx, replayRange, tenant, endpoint, r.Since, r.Until)
		}
		var err error
		queued, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		if err != nil {
			return err
		}
		if r.EventIDs == nil {
			return nil
		}
		have := make(map[uuid.UUID]bool, len(queued))
		for _, id := range queued {
			have[id] = true
		}
		for _, id := range r.EventIDs {
			if !have[id] {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			queued = nil
			return errReplayMissing
		}
		return nil
	})
	if errors.Is(err, errReplayMissing) {
		return nil, missing, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("replay webhook: %w", err)
	}
	if len(queued) > 0 {
		s.EventsAdded()
	}
	return queued, nil, nil
}

var errReplayMissing = errors.New("replay: unknown event ids")

// WebhookBacklog is the sending backlog of enabled endpoints, for the
// metrics mailferry_events_pending and mailferry_webhook_oldest_pending_seconds.
type WebhookBacklog struct {
	Pending       int64
	OldestPending time.Time // zero when nothing is pending
}

const selectBacklog = `SELECT count(*), min(d.created_at) FROM webhook_deliveries d
JOIN webhook_endpoints ep ON ep.id = d.endpoint_id AND ep.disabled_at IS NULL
WHERE d.status = 'pending'`

// WebhookBacklog counts pending deliveries to enabled endpoints.
func (s *Store) WebhookBacklog(ctx context.Context) (WebhookBacklog, error) {
	var b WebhookBacklog
	var oldest *time.Time
	if err := s.pool.QueryRow(ctx, selectBacklog).Scan(&b.Pending, &oldest); err != nil {
		return b, fmt.Errorf("webhook backlog: %w", err)
	}
	if oldest != nil {
		b.OldestPending = *oldest
	}
	return b, nil
}
