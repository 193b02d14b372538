package store

import (
	"context"
	"fmt"
	"io/fs"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mailferry/mailferry/migrations"
)

// migrateLockKey is the pg_advisory_lock key that serialises Migrate
// across processes ("mfmigrat" in ASCII); partitionLockKey does the same
// for partition maintenance.
const (
	migrateLockKey   int64 = 0x6d666d6967726174
	partitionLockKey int64 = 0x6d66706172746e73 // "mfpartns"
)

// partitionsAhead is how many months after the current one Migrate
// creates attempt partitions for, so a month never starts without one.
const partitionsAhead = 2

var migrationName = regexp.MustCompile(`^\d{4}_[a-z0-9_]+\.sql$`)

const (
	createSchemaMigrations = `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    text PRIMARY KEY,
	applied_at timestamptz NOT NULL DEFAULT now()
)`
	selectMigrations = `SELECT version FROM schema_migrations`
	insertMigration  = `INSERT INTO schema_migrations (version) VALUES ($1)`
)

// Migrate applies the migration files not yet recorded in
// schema_migrations, in name order, each in its own transaction, and
// returns their versions (file names without ".sql"). It then makes sure
// attempt partitions exist for this month and the next two.
//
// A session-level advisory lock makes processes that start at once take
// turns: the first applies, the others find nothing left to do.
func (s *Store) Migrate(ctx context.Context) (applied []string, err error) {
	files, err := migrationFiles()
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrateLockKey); err != nil {
		return nil, fmt.Errorf("migrate: lock: %w", err)
	}
	defer func() {
		// Unlock even if ctx is done; should that fail, close the
		// connection, since a session lock would outlive us on a pooled one.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, uerr := conn.Exec(uctx, `SELECT pg_advisory_unlock($1)`, migrateLockKey); uerr != nil {
			_ = conn.Conn().Close(uctx)
		}
	}()

	if _, err := conn.Exec(ctx, createSchemaMigrations); err != nil {
		return nil, fmt.Errorf("migrate: create schema_migrations: %w", err)
	}
	rows, _ := conn.Query(ctx, selectMigrations)
	done, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("migrate: read schema_migrations: %w", err)
	}
	have := make(map[string]bool, len(done))
	for _, v := range done {
		have[v] = true
	}
	applied = []string{}
	for _, name := range files {
		version := strings.TrimSuffix(name, ".sql")
		if have[version] {
			continue
		}
		sql, err := fs.ReadFile(migrations.FS, name)
		if err != nil {
			return applied, fmt.Errorf("migrate %s: %w", version, err)
		}
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			// No arguments: pgx uses the simple protocol, which runs a
			// file of many statements in one go.
			if _, err := tx.Exec(ctx, string(sql)); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, insertMigration, version)
			return err
		})
		if err != nil {
			return applied, fmt.Errorf("migrate %s: %w", version, err)
		}
		applied = append(applied, version)
	}

	if err := ensureAttemptPartitions(ctx, conn, time.Now(), partitionsAhead); err != nil {
		return applied, fmt.Errorf("migrate: %w", err)
	}
	return applied, nil
}

// migrationFiles lists the embedded files in the order they apply.
func migrationFiles() ([]string, error) {
	entries, err := fs.ReadDir(migrations.FS, ".") // sorted by name
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if !migrationName.MatchString(e.Name()) {
			return nil, fmt.Errorf("migration file %q is not named NNNN_name.sql", e.Name())
		}
		names = append(names, e.Name())
	}
	return names, nil
}
