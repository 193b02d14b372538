package store

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mailferry/mailferry/internal/testenv"
)

// poolerEnv, set to PoolerPgBouncer, makes openStore put PgBouncer in
// transaction pooling mode between every test and its database.
const poolerEnv = "MAILFERRY_TEST_DATABASE_POOLER"

// pgbouncerSuite is the part of the store suite that runs a second time
// through PgBouncer: accepting, leasing, recording and reading messages,
// keys and their cache, idempotency, events, suppressions, partitions.
const pgbouncerSuite = `^(TestAccept.*|TestDeliveryLifecycle|TestLease|TestPendingJobs|TestSaveSignature.*|` +
	`TestKeyCache.*|TestGetMessageTenantIsolation|TestLookupIdempotencyAndExists|TestDKIMKeys|TestMigrate.*|` +
	`TestEvents.*|TestSuppress.*|TestRecord.*|TestAttempt.*|TestPartition.*)$`

// TestThroughPgBouncer runs pgbouncerSuite again in a child test process
// whose stores connect through PgBouncer (pool_mode=transaction) with
// PoolerPgBouncer, and the LISTEN of the key cache directly.
func TestThroughPgBouncer(t *testing.T) {
	if os.Getenv(poolerEnv) != "" {
		return // this is the child run
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run", pgbouncerSuite, "-test.count=1")
	cmd.Env = append(os.Environ(), poolerEnv+"="+PoolerPgBouncer)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("store suite through PgBouncer: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "PASS") {
		t.Fatalf("store suite through PgBouncer ran nothing:\n%s", out)
	}
}

// TestPgBouncerExecMode shows why PoolerPgBouncer exists: with pgx's
// default exec mode, named prepared statements made on one server
// connection are missing on the next, and concurrent queries through
// transaction pooling fail; with the pooler set, the same load passes.
func TestPgBouncerExecMode(t *testing.T) {
	direct := testenv.Database(t)
	bouncer := testenv.PgBouncer(t, direct)
	load := func(s *Store) error {
		// More clients than PgBouncer has server connections for one
		// database would not be needed: two pooled clients on few
		// server connections already swap them between statements.
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range 25 {
					var n int
					// Distinct texts per goroutine: each needs its own
					// prepared statement in the default mode.
					q := "SELECT $1::int + " + string(rune('0'+i%10))
					if err := s.pool.QueryRow(t.Context(), q, j).Scan(&n); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		return <-errs
	}
	t.Run("default mode", func(t *testing.T) {
		// Not asserted (which statement lands where is up to PgBouncer),
		// only reported: this is the failure PoolerPgBouncer avoids.
		s, err := Open(t.Context(), Options{URL: bouncer, MaxConns: 8})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		t.Logf("default exec mode through PgBouncer: %v", load(s))
	})
	t.Run("pooler set", func(t *testing.T) {
		s, err := Open(t.Context(), Options{URL: bouncer, Pooler: PoolerPgBouncer, MaxConns: 8})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if got := s.pool.Config().ConnConfig.DefaultQueryExecMode; got != pgx.QueryExecModeCacheDescribe {
			t.Fatalf("exec mode %v, want cache_describe", got)
		}
		if err := load(s); err != nil {
			t.Fatalf("through PgBouncer with Pooler set: %v", err)
		}
	})
	t.Run("URL wins", func(t *testing.T) {
		s, err := Open(t.Context(), Options{URL: bouncer + "&default_query_exec_mode=simple_protocol", Pooler: PoolerPgBouncer})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if got := s.pool.Config().ConnConfig.DefaultQueryExecMode; got != pgx.QueryExecModeSimpleProtocol {
			t.Fatalf("exec mode %v, want the URL's simple_protocol", got)
		}
	})
}

// TestKeyCachePollsBehindPooler: behind PgBouncer without a direct URL
// the cache does not LISTEN (the notification would go to a pooled server
// connection nobody reads); it caches for at most KeyCachePollTTL, so a
// revocation made without any notification reaching it is still refused
// within that time.
func TestKeyCachePollsBehindPooler(t *testing.T) {
	direct := testenv.Database(t)
	bouncer := testenv.PgBouncer(t, direct)
	s, err := Open(t.Context(), Options{URL: bouncer, Pooler: PoolerPgBouncer})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Migrate(t.Context()); err != nil {
		t.Fatalf("migrate through PgBouncer: %v", err)
	}
	c, err := NewKeyCache(s, KeyCacheOptions{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Polling() || c.ttl != KeyCachePollTTL {
		t.Fatalf("polling %v, ttl %s: want polling with ttl %s", c.Polling(), c.ttl, KeyCachePollTTL)
	}
	stop := runCache(t, c)
	defer stop()
	waitFor(t, 5*time.Second, "cache on", c.Listening)
	key, secret := newKey(t, s)
	mustAuth(t, c, secret, key)
	mustAuth(t, c, secret, key) // from the cache now
	if c.Len() != 1 {
		t.Fatalf("cache holds %d keys, want 1", c.Len())
	}
	revokeSilently(t, s, key.ID)
	took := waitFor(t, 5*time.Second, "revoked key refused", func() bool { return refused(c, t.Context(), secret) })
	if took > KeyCachePollTTL+500*time.Millisecond {
		t.Fatalf("revocation took %s to be seen, want at most about %s", took, KeyCachePollTTL)
	}
}

func TestPoolerOptions(t *testing.T) {
	for name, opts := range map[string]Options{
		"unknown pooler":  {URL: "postgres://127.0.0.1:1/x", Pooler: "pgpool"},
		"bad direct URL":  {URL: "postgres://127.0.0.1:1/x", Pooler: PoolerPgBouncer, DirectURL: "postgres://[::1"},
		"empty with pool": {URL: " ", Pooler: PoolerPgBouncer},
	} {
		if err := opts.validate(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if err := (Options{URL: "postgres://127.0.0.1:1/x", Pooler: PoolerNone}).validate(); err != nil {
		t.Errorf("pooler none: %v", err)
	}
}
