// Package teststack starts the accept half of Mailferry for tests: a
// migrated store, a Redis client, a queue under a key prefix of the test's
// own and an intake over both, on the real servers testenv provides. The
// api, submission, intake, relay and scheduler tests build on it instead of
// each repeating the same set-up.
package teststack

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/internal/redisconn"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/store"
)

// Options shape a Stack. Zero values take the shared test servers and the
// packages' own defaults.
type Options struct {
	// RedisURL overrides the shared test Redis (an outage test brings its
	// own server to stop).
	RedisURL string
	// Queue is passed to queue.New; Prefix defaults to one unique to the
	// test, so parallel tests never see each other's jobs.
	Queue queue.Options
	// Intake is passed to intake.New with Ledger, Queue and Metrics filled
	// in; CommitTimeout defaults to 3s so an outage fails a test quickly.
	Intake intake.Options
	// Ledger, if set, wraps the store before intake writes to it: a test
	// makes one ledger call fail while PostgreSQL stays real.
	Ledger func(*store.Store) intake.Ledger
}

// Stack is what New started. Everything is closed when the test ends.
type Stack struct {
	DatabaseURL string
	// Prefix is the queue's key prefix, unique to the test.
	Prefix string
	Store  *store.Store
	// Redis is the single test server, or the test cluster inside
	// testenv.EachRedis's cluster subtest.
	Redis    redis.UniversalClient
	Queue    *queue.Queue
	Intake   *intake.Intake
	Registry *prometheus.Registry
	// Metrics are the intake's, registered in Registry.
	Metrics *intake.Metrics
}

// New starts a Stack on a fresh database. A server that cannot be reached
// fails the test; it never skips.
func New(t testing.TB, opts Options) *Stack {
	t.Helper()
	ctx := context.Background()
	s := &Stack{DatabaseURL: testenv.Database(t), Registry: prometheus.NewRegistry()}
	st, err := store.Open(ctx, store.Options{URL: s.DatabaseURL})
	if err != nil {
		t.Fatalf("teststack: open store: %v", err)
	}
	t.Cleanup(st.Close)
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatalf("teststack: migrate: %v", err)
	}
	s.Store = st

	// A stopped Redis must fail fast in the outage tests.
	ro := redisconn.Options{MaxRetries: -1}
	if opts.RedisURL == "" {
		s.Redis = testenv.Redis(t, ro)
	} else {
		rdb, err := redisconn.Open(redisconn.Single, opts.RedisURL, ro)
		if err != nil {
			t.Fatalf("teststack: redis url %q: %v", opts.RedisURL, err)
		}
		s.Redis = rdb
		t.Cleanup(func() { rdb.Close() })
	}

	qo := opts.Queue
	if qo.Prefix == "" {
		qo.Prefix = testenv.KeyPrefix(t)
	}
	s.Prefix = qo.Prefix
	if s.Queue, err = queue.New(s.Redis, qo); err != nil {
		t.Fatalf("teststack: queue: %v", err)
	}

	io := opts.Intake
	io.Ledger, io.Queue = st, s.Queue
	if opts.Ledger != nil {
		io.Ledger = opts.Ledger(st)
	}
	if io.Metrics == nil {
		s.Metrics = intake.NewMetrics(s.Registry)
		io.Metrics = s.Metrics
	}
	if io.CommitTimeout == 0 {
		io.CommitTimeout = 3 * time.Second
	}
	if s.Intake, err = intake.New(io); err != nil {
		t.Fatalf("teststack: intake: %v", err)
	}
	return s
}

// QueueFor opens another queue over the same Redis and prefix, as a second
// worker process would (its own Consumer name, its own timings).
func (s *Stack) QueueFor(t testing.TB, opts queue.Options) *queue.Queue {
	t.Helper()
	if opts.Prefix == "" {
		opts.Prefix = s.Prefix
	}
	q, err := queue.New(s.Redis, opts)
	if err != nil {
		t.Fatalf("teststack: queue: %v", err)
	}
	return q
}
