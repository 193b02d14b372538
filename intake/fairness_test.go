package intake_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/internal/devstack"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/teststack"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/scheduler"
	"github.com/mailferry/mailferry/store"
)

// TestCommitterReturnsUnderSustainedArrivals (issue 11, 6a): one committer
// slot and callers that resubmit the moment they are answered, so the
// queue never empties. Every caller, including whoever holds the slot,
// must be answered within a bound, with its message accepted. Before the
// fix the slot holder committed for the newcomers until they stopped.
func TestCommitterReturnsUnderSustainedArrivals(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, teststack.Options{Intake: intake.Options{Committers: 1, MaxBatch: 2, MaxWait: time.Minute}})
		const (
			callers = 12
			each    = 20              // submissions per caller once the load runs
			load    = 5 * time.Second // arrivals stop after this at the latest
			bound   = 2 * time.Second // a wait of 6 batches of 2 takes milliseconds
		)
		// Each caller keeps submitting until every caller has had `each`
		// answers (or the load time is up): arrivals never pause for a
		// caller still waiting.
		stop := time.Now().Add(load)
		var (
			mu      sync.Mutex
			longest time.Duration
			ids     []uuid.UUID
			short   = callers // callers with fewer than `each` answers
			wg      sync.WaitGroup
		)
		more := func() bool {
			mu.Lock()
			defer mu.Unlock()
			return short > 0 && time.Now().Before(stop)
		}
		for c := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := f.submission(t, fmt.Sprintf("r%d@one.example", c))
				for i := 0; more(); i++ {
					r, err := f.in.NewReceipt(s)
					if err != nil {
						t.Error(err)
						return
					}
					start := time.Now()
					err = f.in.Submit(context.Background(), r, s)
					took := time.Since(start)
					mu.Lock()
					longest = max(longest, took)
					if err == nil {
						ids = append(ids, r.ID)
					}
					if i+1 == each {
						short--
					}
					mu.Unlock()
					if err != nil {
						t.Errorf("caller %d, submission %d: %v", c, i, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if longest > bound {
			t.Errorf("a caller waited %v under sustained arrivals, want at most %v", longest.Round(time.Millisecond), bound)
		}
		if short > 0 {
			t.Errorf("%d callers had fewer than %d answers in %v", short, each, load)
		}
		for _, id := range ids {
			if !f.stored(t, id) {
				t.Fatalf("message %s answered as accepted is not in the ledger", id)
			}
		}
	})
}

// stored reports whether the ledger holds message id, as GET would see it.
func (f *fixture) stored(t *testing.T, id uuid.UUID) bool {
	t.Helper()
	_, err := f.st.GetMessage(context.Background(), f.key.TenantID, id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get message %s: %v", id, err)
	}
	return err == nil
}

// gatedLedger holds the first AcceptBatch until open is closed, so a test
// can have a batch in flight for as long as it likes.
type gatedLedger struct {
	*store.Store
	once    sync.Once
	entered chan struct{}
	open    chan struct{}
}

func (g *gatedLedger) AcceptBatch(ctx context.Context, msgs []store.NewMessage) error {
	first := false
	g.once.Do(func() { first = true })
	if first {
		close(g.entered)
		<-g.open
	}
	return g.Store.AcceptBatch(ctx, msgs)
}

// TestWaitIsBounded (issue 11, 6a): while the only committer's batch is in
// flight, a caller whose context ends, or whose MaxWait passes, before
// its message was taken into a batch is answered at once with
// ErrUnavailable and nothing of it is stored or queued; a caller whose
// message is already in the batch gets that batch's outcome, never a 503
// for a message that was committed.
func TestWaitIsBounded(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			name    string
			maxWait time.Duration
			ctx     func() context.Context
		}{
			{"context ended", time.Minute, func() context.Context {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				return ctx
			}},
			{"max wait passed", 100 * time.Millisecond, context.Background},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				g := &gatedLedger{entered: make(chan struct{}), open: make(chan struct{})}
				f := newFixture(t, teststack.Options{
					Intake: intake.Options{Committers: 1, MaxWait: tc.maxWait, CommitTimeout: time.Minute},
					Ledger: func(st *store.Store) intake.Ledger { g.Store = st; return g },
				})
				opened := false
				defer func() {
					if !opened {
						close(g.open)
					}
				}()

				// A leads a batch and is held in it; its own context ends.
				actx, cancelA := context.WithCancel(context.Background())
				defer cancelA()
				sa := f.submission(t, "a@one.example")
				ra, _ := f.in.NewReceipt(sa)
				aDone := make(chan error, 1)
				go func() { aDone <- f.in.Submit(actx, ra, sa) }()
				<-g.entered
				cancelA()

				// B arrives behind it.
				sb := f.submission(t, "b@one.example")
				rb, _ := f.in.NewReceipt(sb)
				bDone := make(chan error, 1)
				go func() { bDone <- f.in.Submit(tc.ctx(), rb, sb) }()
				select {
				case err := <-bDone:
					if !errors.Is(err, intake.ErrUnavailable) {
						t.Errorf("B: %v, want ErrUnavailable", err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("B was not answered while the batch ahead of it was in flight")
				}
				close(g.open)
				opened = true
				if err := <-aDone; err != nil {
					t.Errorf("A, whose message was in the batch: %v, want accepted", err)
				}
				ctx := context.Background()
				if !f.stored(t, ra.ID) {
					t.Error("A's message is not in the ledger")
				}
				if f.stored(t, rb.ID) {
					t.Error("B's withdrawn message is in the ledger")
				}
				var jobs []string
				if err := f.q.Jobs(ctx, func(j queue.Job) error { jobs = append(jobs, j.MessageID); return nil }); err != nil {
					t.Fatal(err)
				}
				if len(jobs) != 1 || jobs[0] != ra.ID.String() {
					t.Errorf("queued jobs %v, want only A's %s", jobs, ra.ID)
				}
			})
		}
	})
}

// undoFails is a ledger whose DeleteMessages fails, as a PostgreSQL that
// went away between the accept and the undo would.
type undoFails struct{ *store.Store }

func (undoFails) DeleteMessages(context.Context, []uuid.UUID) error {
	return errors.New("delete messages: connection refused")
}

// TestRefusedEvenWhenUndoFails (issue 11, 6b): Redis refuses the jobs and
// the ledger could not undo rows. The caller hears ErrUnavailable, so
// nothing may be accepted: the ledger holds no message (GET is a 404), and
// the reconciler's requeue finds nothing to send. Before the fix the rows
// stayed and the requeue sent the mail the client was told was refused.
func TestRefusedEvenWhenUndoFails(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rds, err := devstack.StartRedis(ctx, devstack.RedisOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, teststack.Options{
		RedisURL: rds.URL,
		Ledger:   func(st *store.Store) intake.Ledger { return undoFails{st} },
	})
	if err := rds.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	s := f.submission(t, "u@one.example", "v@two.example")
	r, _ := f.in.NewReceipt(s)
	if err := f.in.Submit(ctx, r, s); !errors.Is(err, intake.ErrUnavailable) {
		t.Fatalf("submit with Redis down: %v, want ErrUnavailable", err)
	}
	if _, err := f.st.GetMessage(ctx, f.key.TenantID, r.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GET of the refused message: %v, want not found", err)
	}
	// Redis is back (another server: the reconciler requeues into whatever
	// queue it is given).
	live := teststack.New(t, teststack.Options{RedisURL: testenv.RedisURL(t)})
	n, err := scheduler.Requeue(ctx, f.st, live.Queue, 100)
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("requeue put %d jobs of the refused message back in the queue, want 0", n)
	}
}

// lostReply is a ledger whose AcceptBatch commits and then reports an
// error, as when the reply to COMMIT is lost.
type lostReply struct{ *store.Store }

func (l lostReply) AcceptBatch(ctx context.Context, msgs []store.NewMessage) error {
	if err := l.Store.AcceptBatch(ctx, msgs); err != nil {
		return err
	}
	return errors.New("accept batch: unexpected EOF")
}

// TestLostCommitReplyIsAccepted (issue 11, 6b): the rows committed but the
// reply was lost. Answering 503 would be false (the mail goes out), so the
// caller is told it was accepted, and its jobs are queued.
func TestLostCommitReplyIsAccepted(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		ctx := context.Background()
		f := newFixture(t, teststack.Options{Ledger: func(st *store.Store) intake.Ledger { return lostReply{st} }})
		s := f.submission(t, "u@one.example")
		r, _ := f.in.NewReceipt(s)
		if err := f.in.Submit(ctx, r, s); err != nil {
			t.Fatalf("submit whose commit landed: %v, want accepted", err)
		}
		d, err := f.q.Depth(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d.Ready != 1 {
			t.Errorf("ready jobs %d, want 1", d.Ready)
		}
	})
}
