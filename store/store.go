package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// Errors callers match with errors.Is.
var (
	ErrNotFound     = errors.New("not found")
	ErrUnauthorized = errors.New("unauthorized")
	// ErrRejected: the ledger refused the write as given (a check here, or
	// PostgreSQL refusing its data or a constraint). Repeating the same
	// write fails the same way; an unreachable ledger is never this.
	ErrRejected = errors.New("rejected")
)

// rejected marks err with ErrRejected when PostgreSQL answered and refused
// the statement, and leaves it as it is when PostgreSQL could not be
// reached or asked to be tried again: SQLSTATE classes 08 (connection), 40
// (serialization failure, deadlock), 53 (insufficient resources), 55 (lock
// not available), 57 (shutdown, cancel, statement timeout), 58 (system
// I/O). Those, and any error without a SQLSTATE (network, timeout), pass;
// so does a failed connect whatever its code (a wrong password is an
// outage to ride out, not a bad row).
func rejected(err error) error {
	var pgErr *pgconn.PgError
	var connErr *pgconn.ConnectError
	if err == nil || errors.As(err, &connErr) || !errors.As(err, &pgErr) || errors.Is(err, ErrRejected) {
		return err
	}
	switch pgErr.Code[:min(2, len(pgErr.Code))] {
	case "08", "40", "53", "55", "57", "58":
		return err
	}
	return fmt.Errorf("%w: %w", ErrRejected, err)
}

// minDefaultConns is the floor for the pool size when Options.MaxConns is
// 0: pgxpool's default is max(4, NumCPU), too few for an API that
// group-commits while workers record attempts on a two-core machine.
const minDefaultConns = 8

// Options configures Open.
type Options struct {
	URL string // postgres:// URL or key=value DSN; pgxpool's pool_* settings apply
	// Pooler names what URL points at when it is not PostgreSQL itself
	// (MAILFERRY_DATABASE_POOLER): "" or PoolerNone for PostgreSQL, or
	// PoolerPgBouncer for PgBouncer in transaction pooling mode. See
	// PoolerPgBouncer for what changes.
	Pooler string
	// DirectURL reaches PostgreSQL itself, not through the pooler
	// (MAILFERRY_DATABASE_DIRECT_URL). Only the KeyCache's LISTEN
	// connection uses it. Empty: URL, unless Pooler is set, in which case
	// the KeyCache polls instead of listening (see KeyCache).
	DirectURL string
	// MaxConns caps the pool. 0: pool_max_conns from URL, else pgxpool's
	// default but at least 8.
	MaxConns int32
	// SoftBounceLimit is how many soft failures in a row, across
	// messages, put an address on its tenant's suppression list
	// (MAILFERRY_SOFT_BOUNCE_LIMIT); 0: never.
	SoftBounceLimit int
	// Registerer takes the store's metrics (mailferry_suppressions_total);
	// nil: none.
	Registerer prometheus.Registerer
	// OnEvents, if set, is called after events with webhook deliveries
	// commit (EventsAdded): the in-process webhook sender's wake-up.
	OnEvents func()
	// Secrets seals webhook signing secrets at rest and opens them to sign
	// (serve passes a dkim.Sealer under MAILFERRY_SECRET_KEY, as for DKIM
	// keys); nil: they are stored as they are.
	Secrets SecretSealer
}

// SecretSealer encrypts secrets the store must be able to read back.
type SecretSealer interface {
	Seal(plaintext []byte) ([]byte, error)
	Open(blob []byte) ([]byte, error)
}

// Values of Options.Pooler.
const (
	PoolerNone = "none"
	// PoolerPgBouncer is PgBouncer in transaction pooling mode, where each
	// transaction (or statement outside one) may run on a different
	// server connection. pgx's default exec mode prepares named
	// statements on a connection and reuses them, which fails there
	// (PgBouncer before 1.21, as Debian 12 ships, does not track prepared
	// statements: "prepared statement ... does not exist"). The store then
	// uses QueryExecModeCacheDescribe instead: every query is sent as one
	// self-contained Parse/Bind/Execute/Sync with the unnamed statement,
	// one round trip once the parameter and result types are cached, so a
	// server switch between round trips breaks nothing.
	// QueryExecModeDescribeExec would not do: its describe and execute
	// are two round trips on the unnamed statement, and PgBouncer may
	// switch servers between them. The simple protocol would work too but
	// sends every value as text. A default_query_exec_mode set in the URL
	// wins over this choice.
	//
	// The store holds no session state across transactions: its advisory
	// locks are transaction-scoped (pg_advisory_xact_lock) and SET is
	// always SET LOCAL.
	PoolerPgBouncer = "pgbouncer"
)

func (o Options) validate() error {
	var errs []error
	if strings.TrimSpace(o.URL) == "" {
		errs = append(errs, errors.New("URL is empty"))
	}
	switch o.Pooler {
	case "", PoolerNone, PoolerPgBouncer:
	default:
		errs = append(errs, fmt.Errorf("pooler %q is not %q or %q", o.Pooler, PoolerNone, PoolerPgBouncer))
	}
	if o.DirectURL != "" {
		if _, err := pgx.ParseConfig(o.DirectURL); err != nil {
			errs = append(errs, fmt.Errorf("DirectURL: %w", err))
		}
	}
	if o.MaxConns < 0 {
		errs = append(errs, fmt.Errorf("MaxConns %d is negative", o.MaxConns))
	}
	if o.SoftBounceLimit < 0 || o.SoftBounceLimit > math.MaxInt32 {
		errs = append(errs, fmt.Errorf("SoftBounceLimit %d is out of range", o.SoftBounceLimit))
	}
	return errors.Join(errs...)
}

// Store is the PostgreSQL ledger. It is safe for concurrent use.
type Store struct {
	pool            *pgxpool.Pool
	pooled          bool   // URL is a transaction-pooling PgBouncer
	directURL       string // for LISTEN; "" : the pool's config
	softBounceLimit int32
	metrics         *metrics
	onEvents        func()
	secrets         SecretSealer
}

// Open connects to PostgreSQL and checks the connection. It does not
// migrate: call Migrate.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	// pgx's parse errors redact the password, so err is safe to log.
	cfg, err := pgxpool.ParseConfig(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	pooled := opts.Pooler == PoolerPgBouncer
	if pooled && !strings.Contains(opts.URL, "default_query_exec_mode") {
		cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeCacheDescribe
	}
	switch {
	case opts.MaxConns > 0:
		cfg.MaxConns = opts.MaxConns
	case !strings.Contains(opts.URL, "pool_max_conns"):
		cfg.MaxConns = max(cfg.MaxConns, minDefaultConns)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open store: %w", err)
	}
	return &Store{pool: pool, pooled: pooled, directURL: opts.DirectURL, softBounceLimit: int32(opts.SoftBounceLimit), metrics: newMetrics(opts.Registerer),
		onEvents: opts.OnEvents, secrets: opts.Secrets}, nil
}

// Close waits for borrowed connections to return and closes the pool.
func (s *Store) Close() {
	s.pool.Close()
}

// Ping checks that PostgreSQL answers, for /readyz.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping postgres: %w", err)
	}
	return nil
}

// nullString maps "" to SQL NULL.
func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}
