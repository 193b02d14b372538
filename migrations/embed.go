// Package migrations holds Mailferry's PostgreSQL schema as numbered SQL
// files, NNNN_name.sql, applied in name order by store.Migrate.
//
// Each file runs in its own transaction together with its row in
// schema_migrations, so a file must not contain BEGIN/COMMIT or statements
// that refuse a transaction block (CREATE INDEX CONCURRENTLY, VACUUM).
// A file that has been released is never edited: change the schema with a
// new file.
package migrations

import "embed"

// FS holds the migration files. An embed.FS is immutable, so this is not
// mutable package state.
//
//go:embed *.sql
var FS embed.FS
