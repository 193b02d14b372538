package store

import (
	"context"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/migrations"
)

func allVersions(t *testing.T) []string {
	t.Helper()
	entries, err := fs.ReadDir(migrations.FS, ".")
	if err != nil {
		t.Fatal(err)
	}
	var vs []string
	for _, e := range entries {
		vs = append(vs, strings.TrimSuffix(e.Name(), ".sql"))
	}
	return vs
}

func TestMigrateTwice(t *testing.T) {
	t.Parallel()
	s := openStore(t, testenv.Database(t))
	want := allVersions(t)

	got, err := s.Migrate(t.Context())
	if err != nil {
		t.Fatalf("first Migrate: %v", err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("first Migrate applied %v, want %v", got, want)
	}
	got, err = s.Migrate(t.Context())
	if err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	if len(got) != 0 {
		t.Errorf("second Migrate applied %v, want nothing", got)
	}
	if n := count(t, s, `SELECT count(*) FROM schema_migrations`); n != len(want) {
		t.Errorf("schema_migrations has %d rows, want %d", n, len(want))
	}
	// Migrate also prepares attempt partitions: this month and two ahead.
	month := monthStart(time.Now())
	for i := range 3 {
		name := partitionName(month.AddDate(0, i, 0))
		if n := count(t, s, `SELECT count(*) FROM pg_class WHERE relname = $1`, name); n != 1 {
			t.Errorf("partition %s missing after Migrate", name)
		}
	}
}

// TestMigrateOneConn: Migrate holds its connection for the lock, so the
// partition step must not ask the pool for a second one.
func TestMigrateOneConn(t *testing.T) {
	t.Parallel()
	s, err := Open(t.Context(), Options{URL: testenv.Database(t), MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate with a pool of one: %v", err)
	}
}

// TestMigrateConcurrent starts three "processes" (stores with their own
// pools) on one empty database at once: the advisory lock must make them
// take turns, so each file is applied exactly once and none fails.
func TestMigrateConcurrent(t *testing.T) {
	t.Parallel()
	url := testenv.Database(t)
	stores := []*Store{openStore(t, url), openStore(t, url), openStore(t, url)}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		applied []string
		errs    []error
	)
	for _, s := range stores {
		wg.Go(func() {
			got, err := s.Migrate(t.Context())
			mu.Lock()
			defer mu.Unlock()
			applied = append(applied, got...)
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		t.Errorf("Migrate: %v", err)
	}
	slices.Sort(applied)
	if want := allVersions(t); !slices.Equal(applied, want) {
		t.Errorf("applied %v in all, want each of %v once", applied, want)
	}
	// The lock is released: one more Migrate does not wait and does nothing.
	got, err := stores[0].Migrate(t.Context())
	if err != nil || len(got) != 0 {
		t.Errorf("Migrate after the others = %v, %v; want nothing, nil", got, err)
	}
}
