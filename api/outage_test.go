package api_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/internal/devstack"
	"github.com/mailferry/mailferry/store"
)

// TestRedisDown: with the queue gone, the API answers 503 and the ledger
// keeps nothing, so a client's retry cannot make a duplicate.
func TestRedisDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rds, err := devstack.StartRedis(ctx, devstack.RedisOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("start redis: %v", err)
	}
	t.Cleanup(func() { _ = rds.Stop(context.Background()) })
	h := newHarness(t, harnessOptions{redisURL: rds.URL})
	if r := h.post(basic(), nil); r.status != http.StatusAccepted {
		t.Fatalf("before the outage: %d %s", r.status, r.body)
	}
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := rds.Stop(stopCtx); err != nil {
		t.Fatalf("stop redis: %v", err)
	}
	for _, hdr := range []map[string]string{nil, {"Idempotency-Key": "k1"}} {
		r := h.post(basic(), hdr)
		if r.status != http.StatusServiceUnavailable {
			t.Fatalf("with Redis down (header %v): %d %s", hdr, r.status, r.body)
		}
		r.problem(t)
		if r.header.Get("Retry-After") == "" {
			t.Errorf("503 without Retry-After")
		}
	}
	if n := h.messageCount(); n != 1 {
		t.Errorf("%d messages in the ledger, want only the one accepted before the outage", n)
	}
	var keys int
	if err := h.db.QueryRow(ctx, "SELECT count(*) FROM idempotency_keys").Scan(&keys); err != nil {
		t.Fatal(err)
	}
	if keys != 0 {
		t.Errorf("%d idempotency keys left by refused requests", keys)
	}
	if r := h.do(http.MethodGet, "/readyz", "", nil, nil); r.status != http.StatusServiceUnavailable {
		t.Errorf("readyz with Redis down: %d", r.status)
	}
}

// TestLedgerRefusesWrites: when PostgreSQL cannot record, the client gets
// 503 and nothing is recorded. Intake queues before it records, so the
// job may be in Redis; it points at no message and the workers drop it
// (relay TestJobWithoutRowsIsDropped).
func TestLedgerRefusesWrites(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHarness(t, harnessOptions{})
	var name string
	if err := h.db.QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	if _, err := h.db.Exec(ctx, "ALTER DATABASE "+name+" SET default_transaction_read_only = on"); err != nil {
		t.Fatal(err)
	}
	// New sessions pick the setting up; end the old ones.
	if _, err := h.db.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name); err != nil {
		t.Fatal(err)
	}
	h.db.Reset()
	r := h.post(basic(), nil)
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("read-only ledger: %d %s", r.status, r.body)
	}
	r.problem(t)
	if n := h.messageCount(); n != 0 {
		t.Errorf("%d messages recorded", n)
	}
}

// undoFails is a store whose DeleteMessages fails, as a PostgreSQL lost
// between an accept and its undo would.
type undoFails struct{ *store.Store }

func (undoFails) DeleteMessages(context.Context, []uuid.UUID) error {
	return errors.New("delete messages: connection refused")
}

// TestRedisDownUndoFails (issue 11, 6b): Redis refuses and no undo could
// succeed; the 503 must still mean nothing was accepted, so the ledger
// holds no message a reconciler could send.
func TestRedisDownUndoFails(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rds, err := devstack.StartRedis(ctx, devstack.RedisOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("start redis: %v", err)
	}
	h := newHarness(t, harnessOptions{redisURL: rds.URL, ledger: func(st *store.Store) intake.Ledger { return undoFails{st} }})
	if err := rds.Stop(ctx); err != nil {
		t.Fatalf("stop redis: %v", err)
	}
	for _, hdr := range []map[string]string{nil, {"Idempotency-Key": "k1"}} {
		if r := h.post(basic(), hdr); r.status != http.StatusServiceUnavailable {
			t.Fatalf("with Redis down (header %v): %d %s", hdr, r.status, r.body)
		}
	}
	if n := h.messageCount(); n != 0 {
		t.Errorf("%d messages in the ledger after 503s", n)
	}
}
