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

// migrateLockKey is the pg_advisory_xact_lock key that serialises Migrate
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
	selectMigration  = `SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)`
)

// Migrate applies the migration files not yet recorded in
// schema_migrations, in name order, each in its own transaction, and
// returns their versions (file names without ".sql"). It then makes sure
// attempt partitions exist for this month and the next two.
//
// Each transaction first takes a transaction-scoped advisory lock and then
// checks whether its migration is still to do, so processes that start at
// once take turns: the first applies, the others find it done. The lock
// is never session-level: behind a transaction pooler (PgBouncer) a
// session lock would stay on whichever server connection took it, and
// pg_advisory_unlock could run on another.
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

	var done []string
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLockKey); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		if _, err := tx.Exec(ctx, createSchemaMigrations); err != nil {
			return fmt.Errorf("create schema_migrations: %w", err)
		}
		rows, _ := tx.Query(ctx, selectMigrations)
		done, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("read schema_migrations: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
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
		var ran bool
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLockKey); err != nil {
				return fmt.Errorf("lock: %w", err)
			}
			var exists bool
			if err := tx.QueryRow(ctx, selectMigration, version).Scan(&exists); err != nil {
				return err
			}
			if exists {
				return nil // another process applied it while we waited
			}
			// No arguments: pgx uses the simple protocol, which runs a
			// file of many statements in one go.
			if _, err := tx.Exec(ctx, string(sql)); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, insertMigration, version)
			ran = true
			return err
		})
		if err != nil {
			return applied, fmt.Errorf("migrate %s: %w", version, err)
		}
		if ran {
			applied = append(applied, version)
		}
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
