// Package testenv gives tests real Redis and PostgreSQL servers. `make test`
// starts one of each for the whole run and exports MAILFERRY_TEST_REDIS_URL
// and MAILFERRY_TEST_DATABASE_URL; a plain `go test` starts them per test
// binary through Main. With WithCluster a Redis Cluster (3 primaries, 3
// replicas) joins them, MAILFERRY_TEST_REDIS_CLUSTER_URL (`make test` starts
// one for the whole run), and EachRedis runs a test on both kinds of Redis.
// A missing server fails the test; it never skips.
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
	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/internal/devstack"
	"github.com/mailferry/mailferry/internal/redisconn"
)

const (
	redisEnv    = "MAILFERRY_TEST_REDIS_URL"
	databaseEnv = "MAILFERRY_TEST_DATABASE_URL"
	// clusterEnv is a Redis Cluster's URL (redisconn.Cluster), for the
	// suites that run against both kinds of Redis (EachRedis).
	clusterEnv = "MAILFERRY_TEST_REDIS_CLUSTER_URL"
)

// Option adds to what Run starts.
type Option func(*runOptions)

type runOptions struct{ cluster bool }

// WithCluster also starts a Redis Cluster of 3 primaries and 3 replicas
// for the test binary (unless MAILFERRY_TEST_REDIS_CLUSTER_URL names one),
// shared by its tests as the single server is; EachRedis runs a test on it.
func WithCluster() Option { return func(o *runOptions) { o.cluster = true } }

// Main runs a package's tests, first starting Redis and PostgreSQL unless
// the environment already names them. Call it from TestMain.
func Main(m *testing.M, opts ...Option) {
	os.Exit(Run(m, opts...))
}

// Run is Main for a TestMain that does more around the tests: it returns
// the exit code, with the servers it started already stopped.
func Run(m *testing.M, opts ...Option) int {
	var ro runOptions
	for _, o := range opts {
		o(&ro)
	}
	needCluster := ro.cluster && os.Getenv(clusterEnv) == ""
	if os.Getenv(redisEnv) != "" && os.Getenv(databaseEnv) != "" && !needCluster {
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
	if needCluster {
		c, err := devstack.StartRedisCluster(ctx, devstack.ClusterOptions{Dir: dir + "/cluster"})
		if err != nil {
			fmt.Fprintln(os.Stderr, "testenv:", err)
			return 1
		}
		defer func() { c2, cancel := stopCtx(); defer cancel(); _ = c.Stop(c2) }()
		os.Setenv(clusterEnv, c.URL)
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

// RedisURL is the URL of the test Redis the test runs on (RedisMode): the
// single server, or under EachRedis's cluster subtest the cluster's URL.
// Tests share it, so each test keeps its keys apart with KeyPrefix.
func RedisURL(t testing.TB) string {
	t.Helper()
	env := redisEnv
	if RedisMode(t) == redisconn.Cluster {
		env = clusterEnv
	}
	u := os.Getenv(env)
	if u == "" {
		t.Fatalf("%s is not set: run the tests with `make test` or call testenv.Main (WithCluster for a cluster) from TestMain", env)
	}
	return u
}

// modeMark is the subtest name EachRedis gives the cluster run; the mode
// travels in the test's name, so helpers deep in a test find it with no
// state kept here.
const modeMark = "redis=" + redisconn.Cluster

// EachRedis runs f as two subtests, on the single test server
// ("redis=single") and on the test Redis Cluster ("redis=cluster"), so a
// suite proves it keeps each multi-key command in one slot. Run's
// WithCluster must have started the cluster.
func EachRedis(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	for _, mode := range []string{redisconn.Single, redisconn.Cluster} {
		t.Run("redis="+mode, f)
	}
}

// RedisMode is redisconn.Cluster inside EachRedis's cluster subtest (and
// its subtests), else redisconn.Single.
func RedisMode(t testing.TB) string {
	for _, part := range strings.Split(t.Name(), "/") {
		if part == modeMark {
			return redisconn.Cluster
		}
	}
	return redisconn.Single
}

// Redis opens a client to the test Redis of RedisMode(t), closed when the
// test ends.
func Redis(t testing.TB, opts redisconn.Options) redis.UniversalClient {
	t.Helper()
	rdb, err := redisconn.Open(RedisMode(t), RedisURL(t), opts)
	if err != nil {
		t.Fatalf("open test redis: %v", err)
	}
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// DeleteKeys deletes the keys under prefix, on every primary of a cluster
// and one key at a time, since a DEL of keys in several slots fails there.
func DeleteKeys(ctx context.Context, rdb redis.UniversalClient, prefix string) error {
	del := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, prefix+":*", 1000).Iterator()
		for iter.Next(ctx) {
			if err := c.Del(ctx, iter.Val()).Err(); err != nil {
				return err
			}
		}
		return iter.Err()
	}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, del)
	}
	if c, ok := rdb.(*redis.Client); ok {
		return del(ctx, c)
	}
	return fmt.Errorf("delete keys: unknown client %T", rdb)
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
