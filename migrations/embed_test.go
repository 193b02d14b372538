package migrations

import (
	"fmt"
	"io/fs"
	"regexp"
	"strings"
	"testing"
)

// TestFiles checks what store.Migrate relies on: names NNNN_name.sql
// numbered 0001, 0002, … without gaps, and no statement that cannot run in
// the transaction each file is applied in.
func TestFiles(t *testing.T) {
	entries, err := fs.ReadDir(FS, ".")
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) == 0 {
		t.Fatal("no migration files embedded")
	}
	name := regexp.MustCompile(`^(\d{4})_[a-z0-9_]+\.sql$`)
	for i, e := range entries {
		t.Run(e.Name(), func(t *testing.T) {
			m := name.FindStringSubmatch(e.Name())
			if m == nil {
				t.Fatalf("name %q does not match NNNN_name.sql", e.Name())
			}
			if want := fmt.Sprintf("%04d", i+1); m[1] != want {
				t.Errorf("number %s, want %s (files are numbered without gaps)", m[1], want)
			}
			b, err := fs.ReadFile(FS, e.Name())
			if err != nil {
				t.Fatal(err)
			}
			if strings.TrimSpace(string(b)) == "" {
				t.Error("empty file")
			}
			if f := badStatement(string(b)); f != "" {
				t.Errorf("contains %q, which cannot run inside the file's transaction", f)
			}
		})
	}
}

func TestBadStatement(t *testing.T) {
	tests := []struct{ sql, want string }{
		{"CREATE TABLE t (a int);", ""},
		{"BEGIN;\nCREATE TABLE t (a int);", "BEGIN;"},
		{"  commit ;", "commit ;"},
		{"START TRANSACTION;", "START TRANSACTION;"},
		{"CREATE INDEX CONCURRENTLY i ON t (a);", "CONCURRENTLY"},
		{"VACUUM t;", "VACUUM"},
		{"-- BEGIN;\nSELECT 1;", ""},
		{"DO $$\nBEGIN\n  PERFORM 1;\nEND $$;", ""}, // PL/pgSQL block, not a transaction
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			if got := badStatement(tt.sql); got != tt.want {
				t.Errorf("badStatement = %q, want %q", got, tt.want)
			}
		})
	}
}

// badStatement returns the first statement in sql that cannot run in a
// transaction block, or "". A BEGIN without ";" opens a PL/pgSQL block.
func badStatement(sql string) string {
	re := regexp.MustCompile(`(?im)^\s*(BEGIN|START|COMMIT|ROLLBACK)(\s+(TRANSACTION|WORK))?\s*;|\bVACUUM\b|\bCONCURRENTLY\b`)
	return strings.TrimSpace(re.FindString(stripComments(sql)))
}

func stripComments(sql string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(sql, "\n") {
		if i := strings.Index(line, "--"); i >= 0 {
			line = line[:i]
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}
