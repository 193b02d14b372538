// Package testenv gives tests real Redis and PostgreSQL servers. `make test`
// starts one of each for the whole run and exports MAILFERRY_TEST_REDIS_URL
// and MAILFERRY_TEST_DATABASE_URL; a plain `go test` starts them per test
// binary through Main. A missing server fails the test; it never skips.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mailferry/mailferry/internal/devstack"
)

const (
	redisEnv    = "MAILFERRY_TEST_REDIS_URL"
	databaseEnv = "MAILFERRY_TEST_DATABASE_URL"
)

// Main runs a package's tests, first starting Redis and PostgreSQL unless
// the environment already names them. Call it from TestMain.
func Main(m *testing.M) {
	os.Exit(Run(m))
}

// Run is Main for a TestMain that does more around the tests: it returns
// the exit code, with the servers it started already stopped.
func Run(m *testing.M) int {
	if os.Getenv(redisEnv) != "" && os.Getenv(databaseEnv) != "" {
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "mailferry-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	stopCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 20*time.Second)
	}
	if os.Getenv(redisEnv) == "" {
		p, err := devstack.StartRedis(ctx, devstack.RedisOptions{Dir: dir + "/redis"})
		if err != nil {
			fmt.Fprintln(os.Stderr, "testenv:", err)
			return 1
		}
		defer func() { c, cancel := stopCtx(); defer cancel(); _ = p.Stop(c) }()
		os.Setenv(redisEnv, p.URL)
	}
	if os.Getenv(databaseEnv) == "" {
		p, err := devstack.StartPostgres(ctx, devstack.PostgresOptions{Dir: dir + "/postgres"})
		if err != nil {
			fmt.Fprintln(os.Stderr, "testenv:", err)
			return 1
		}
		defer func() { c, cancel := stopCtx(); defer cancel(); _ = p.Stop(c) }()
		os.Setenv(databaseEnv, p.URL)
	}
	return m.Run()
}

// RedisURL is the URL of the test Redis server. Tests share it, so each
// test keeps its keys apart with KeyPrefix.
func RedisURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(redisEnv)
	if u == "" {
		t.Fatalf("%s is not set: run the tests with `make test` or call testenv.Main from TestMain", redisEnv)
	}
	return u
}

// KeyPrefix is a Redis key prefix no other test uses.
func KeyPrefix(t testing.TB) string {
	return "t" + randomHex(t, 6)
}

// Database creates an empty database for this test alone and drops it when
// the test ends. It returns the database URL.
func Database(t testing.TB) string {
	t.Helper()
	base := os.Getenv(databaseEnv)
	if base == "" {
		t.Fatalf("%s is not set: run the tests with `make test` or call testenv.Main from TestMain", databaseEnv)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connect to test postgres: %v", err)
	}
	defer admin.Close(ctx)
	name := "test_" + strings.ToLower(randomHex(t, 8))
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Errorf("drop test database: %v", err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse %s: %v", databaseEnv, err)
	}
	u.Path = "/" + name
	return u.String()
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random: %v", err)
	}
	return hex.EncodeToString(b)
}

// PgBouncer starts PgBouncer in transaction pooling mode on a free
// loopback port in front of the PostgreSQL server of dbURL (a URL from
// Database, or the server's own), stops it when the test ends, and returns
// dbURL pointed at PgBouncer, with the same user and database. Give that
// URL to Mailferry with MAILFERRY_DATABASE_POOLER=pgbouncer (pgx's
// describe-cache exec mode; see store.Options.Pooler), and dbURL itself as
// MAILFERRY_DATABASE_DIRECT_URL where LISTEN/NOTIFY is wanted.
//
// As root PgBouncer runs as the "postgres" user, like PostgreSQL.
func PgBouncer(t testing.TB, dbURL string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := devstack.StartPgBouncer(ctx, devstack.PgBouncerOptions{Dir: t.TempDir(), Upstream: dbURL})
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := p.Stop(ctx); err != nil {
			t.Errorf("stop pgbouncer: %v", err)
		}
	})
	return p.URL
}
