package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/mailferry/mailferry/config"
	"github.com/mailferry/mailferry/internal/redisconn"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/scheduler"
	"github.com/mailferry/mailferry/store"
)

// runRequeue is `mailferry requeue`: after Redis lost its data, put every
// recipient still to deliver back into the queue from PostgreSQL. serve's
// reconciler does the same on its own within MAILFERRY_RECONCILE_INTERVAL;
// this is the operator's way to do it now. Running it on a healthy queue
// is safe: workers drop the extra copies.
func runRequeue(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "requeue", "requeue\n\nPuts every queued or deferred recipient back into the Redis queue from PostgreSQL,\none job per message and recipient domain, due at its next attempt. Prints how many.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, st, err := openStore(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	q, closeQueue, err := openQueue(cfg)
	if err != nil {
		return err
	}
	defer closeQueue()
	if err := q.Ping(ctx); err != nil {
		return fmt.Errorf("MAILFERRY_REDIS_URL %s: %w", cfg.RedisURL.Redacted(), err)
	}
	start := time.Now()
	rb, err := q.StartRebuild(ctx)
	if err != nil {
		return err
	}
	n, err := scheduler.Requeue(ctx, st, q, 1000)
	if err != nil {
		return fmt.Errorf("requeue (%d jobs queued before the error; run it again): %w", n, err)
	}
	if err := q.MarkIntact(ctx, rb); err != nil {
		return err
	}
	fmt.Fprintf(env.stderr, "requeued %d jobs (message × recipient domain) in %s\n", n, time.Since(start).Round(time.Millisecond))
	fmt.Fprintln(env.stdout, n)
	return nil
}

// openQueue connects to MAILFERRY_REDIS_URL the way serve does.
func openQueue(cfg config.Config) (*queue.Queue, func(), error) {
	rdb, err := redisconn.Open(cfg.RedisMode, cfg.RedisURL.String(), redisconn.Options{})
	if err != nil {
		return nil, nil, fmt.Errorf("MAILFERRY_REDIS_URL: %w", err)
	}
	q, err := queue.New(rdb, queue.Options{Shards: cfg.QueueShards, VisibilityTimeout: cfg.Leases.Visibility})
	if err != nil {
		rdb.Close()
		return nil, nil, fmt.Errorf("queue: %w", err)
	}
	return q, func() { rdb.Close() }, nil
}

// newReconciler is the scheduler role's guard against Redis losing jobs:
// run it next to the scheduler (serve.go).
func newReconciler(cfg config.Config, st *store.Store, q *queue.Queue, log *slog.Logger) (*scheduler.Reconciler, error) {
	return scheduler.NewReconciler(scheduler.ReconcileOptions{
		Ledger: st, Queue: q, Marker: q, Logger: log,
		Every: cfg.ReconcileInterval,
		// A job due this long ago is claimed unless lost, or held back (a
		// backlog, a busy domain): the sweep then checks Redis for it.
		StaleAfter: cfg.Leases.StaleAfter,
	})
}
