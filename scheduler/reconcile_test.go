package scheduler_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/teststack"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/scheduler"
	"github.com/mailferry/mailferry/store"
)

type reconcileEnv struct {
	t      *testing.T
	st     *store.Store
	rdb    redis.UniversalClient
	prefix string
	q      *queue.Queue
	key    store.APIKey
}

func newReconcileEnv(t *testing.T) *reconcileEnv {
	t.Helper()
	ctx := t.Context()
	ts := teststack.New(t, teststack.Options{Queue: queue.Options{Shards: 2, Consumer: "c"}})
	st := ts.Store
	e := &reconcileEnv{t: t, st: st, rdb: ts.Redis, prefix: ts.Prefix, q: ts.Queue}
	var err error
	e.key, _, err = st.CreateAPIKey(ctx, "acme", []string{"example.com"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.lose)
	return e
}

// accept records n messages, each to a.example and b.example, created at.
func (e *reconcileEnv) accept(n int, at time.Time) []uuid.UUID {
	e.t.Helper()
	var msgs []store.NewMessage
	var ids []uuid.UUID
	for range n {
		id := uuid.Must(uuid.NewV7())
		ids = append(ids, id)
		msgs = append(msgs, store.NewMessage{
			ID: id, TenantID: e.key.TenantID, APIKeyID: e.key.ID, Ingress: "api",
			MessageID: id.String() + "@test", MailFrom: "a@example.com", From: "a@example.com",
			Body: []byte("Subject: x\r\n\r\nx\r\n"), CreatedAt: at,
			Recipients: []store.NewRecipient{{Email: "x@a.example"}, {Email: "y@b.example"}},
		})
	}
	if err := e.st.AcceptBatch(e.t.Context(), msgs); err != nil {
		e.t.Fatal(err)
	}
	return ids
}

// queued lists the queue's jobs as "message domain".
func (e *reconcileEnv) queued() []string {
	e.t.Helper()
	var out []string
	if err := e.q.Jobs(e.t.Context(), func(j queue.Job) error {
		out = append(out, j.MessageID+" "+j.Domain)
		return nil
	}); err != nil {
		e.t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// lose deletes the test's Redis keys, as FLUSHALL would.
func (e *reconcileEnv) lose() {
	ctx := context.Background()
	if err := testenv.DeleteKeys(ctx, e.rdb, e.prefix); err != nil {
		e.t.Errorf("delete test keys: %v", err)
	}
}

func jobsOf(ids []uuid.UUID, domains ...string) []string {
	var out []string
	for _, id := range ids {
		for _, d := range domains {
			out = append(out, id.String()+" "+d)
		}
	}
	slices.Sort(out)
	return out
}

// TestReconcile walks the reconciler through its cases on real Redis and
// PostgreSQL: a queue never marked (or wiped) is rebuilt from every pending
// job; a marked queue holding its jobs is left alone; a job lost alone is
// found and requeued; one a worker holds, or a recent one, is not.
func TestReconcile(t *testing.T) {
	e := newReconcileEnv(t)
	ctx := t.Context()
	old := time.Now().Add(-time.Hour)
	ids := e.accept(3, old)
	// Message 0 is finished for b.example: only its a.example job is pending.
	if _, err := e.st.RecordOutcomes(ctx, ids[0], []store.Outcome{{Attempt: store.Attempt{Recipient: 1, Attempt: 1, StartedAt: old, Outcome: store.RecipientDelivered}}}); err != nil {
		t.Fatal(err)
	}
	want := append(jobsOf(ids[:1], "a.example"), jobsOf(ids[1:], "a.example", "b.example")...)
	slices.Sort(want)
	r, err := scheduler.NewReconciler(scheduler.ReconcileOptions{Ledger: e.st, Queue: e.q, Marker: e.q, StaleAfter: time.Minute, Batch: 2})
	if err != nil {
		t.Fatal(err)
	}

	res, err := r.Reconcile(ctx)
	if err != nil || !res.Restored || res.Requeued != 5 {
		t.Fatalf("first pass: %+v %v; want a restore of 5 jobs", res, err)
	}
	if got := e.queued(); !slices.Equal(got, want) {
		t.Fatalf("queue after restore:\n%v\nwant\n%v", got, want)
	}
	t.Logf("restore: %d jobs requeued", res.Requeued)

	res, err = r.Reconcile(ctx)
	if err != nil || res.Restored || res.Stale != 5 || res.Requeued != 0 {
		t.Fatalf("second pass: %+v %v; want 5 stale jobs examined, all found queued", res, err)
	}

	// A job lost alone (say, in an asynchronous failover): the sweep finds
	// it. Another lost job whose recipient a worker holds is left alone.
	cs, err := e.q.Claim(ctx, 10, 0)
	if err != nil || len(cs) != 5 {
		t.Fatalf("claim: %d %v", len(cs), err)
	}
	lost := []queue.Claimed{}
	for _, c := range cs {
		if c.Job.MessageID == ids[1].String() {
			lost = append(lost, c) // both of message 1's jobs
		}
	}
	if err := e.q.Ack(ctx, lost...); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.TakeLease(ctx, ids[1], []int{1}, store.Lease{Owner: "w-1", For: time.Minute, Next: old, DueBy: time.Now()}); err != nil {
		t.Fatal(err)
	}
	res, err = r.Reconcile(ctx)
	if err != nil || res.Requeued != 1 {
		t.Fatalf("sweep: %+v %v; want message 1's a.example job requeued", res, err)
	}
	if got := e.queued(); !slices.Contains(got, ids[1].String()+" a.example") || slices.Contains(got, ids[1].String()+" b.example") {
		t.Errorf("queue after sweep: %v", got)
	}

	// Recent jobs are not the sweep's business (their accept may still be
	// on its way to Redis).
	fresh := e.accept(1, time.Now())
	res, err = r.Reconcile(ctx)
	if err != nil || res.Requeued != 0 {
		t.Errorf("fresh message: %+v %v", res, err)
	}

	// Redis loses everything: the next pass restores every pending job,
	// the fresh message's included.
	e.lose()
	res, err = r.Reconcile(ctx)
	if err != nil || !res.Restored || res.Requeued != 7 {
		t.Fatalf("after the wipe: %+v %v; want a restore of 7 jobs", res, err)
	}
	want = append(want, jobsOf(fresh, "a.example", "b.example")...)
	slices.Sort(want)
	if got := e.queued(); !slices.Equal(got, want) {
		t.Errorf("queue after the wipe:\n%v\nwant\n%v", got, want)
	}
}

// TestReconcilerRun: a running reconciler notices within CheckEvery that
// Redis lost its data, and requeues due jobs as ready and scheduled ones
// for their time.
func TestReconcilerRun(t *testing.T) {
	e := newReconcileEnv(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	now := time.Now()
	e.accept(2, now.Add(-time.Minute))
	later := e.accept(1, now.Add(time.Hour)) // created "in an hour": due then
	r, err := scheduler.NewReconciler(scheduler.ReconcileOptions{Ledger: e.st, Queue: e.q, Marker: e.q, CheckEvery: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	waitDepth := func(want queue.Depth) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			d, err := e.q.Depth(ctx)
			if err == nil && d == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("queue depth %+v %v, want %+v", d, err, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitDepth(queue.Depth{Ready: 4, Scheduled: 2})
	for i := range 3 {
		e.lose()
		waitDepth(queue.Depth{Ready: 4, Scheduled: 2})
		t.Logf("wipe %d: restored", i+1)
	}
	if got := e.queued(); !slices.Contains(got, fmt.Sprintf("%s a.example", later[0])) {
		t.Errorf("scheduled job missing: %v", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}
