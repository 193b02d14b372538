package intake_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/teststack"
	"github.com/mailferry/mailferry/store"
)

// batchLog is the real store, noting which messages each AcceptBatch call
// held, so the test can tell a batch mixed good and poisoned messages.
type batchLog struct {
	*store.Store
	mu      sync.Mutex
	batches [][]uuid.UUID
}

func (b *batchLog) AcceptBatch(ctx context.Context, msgs []store.NewMessage) error {
	ids := make([]uuid.UUID, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
	}
	b.mu.Lock()
	b.batches = append(b.batches, ids)
	b.mu.Unlock()
	return b.Store.AcceptBatch(ctx, msgs)
}

// TestPoisonFailsAlone (issue 18, item 2b): messages whose rows PostgreSQL
// refuses, submitted among many good ones, fail alone with a
// *RefusedError; every good message of the same batches commits. Before
// the fix the whole batch failed with ErrUnavailable (a 503 to retry for
// ever), for every tenant in it.
func TestPoisonFailsAlone(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			name, sqlstate string
			poison         func(*intake.Submission)
		}{
			// Descriptive text (Message-ID, Subject) the store makes storable;
			// an address it must use as written it refuses before PostgreSQL.
			{"NUL in the envelope sender", "", func(s *intake.Submission) { s.Message.Sender = "a\x00b@example.com" }},
			// A tenant deleted between its key's check and the commit.
			{"unknown tenant", "23503", func(s *intake.Submission) { s.TenantID = "no-such-tenant" }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				var log *batchLog
				f := newFixture(t, teststack.Options{
					Intake: intake.Options{MaxBatch: 16, Committers: 2},
					Ledger: func(st *store.Store) intake.Ledger { log = &batchLog{Store: st}; return log },
				})
				const n, every = 240, 8 // one in eight is poisoned
				var (
					wg            sync.WaitGroup
					mu            sync.Mutex
					good, poisons []uuid.UUID
				)
				for i := range n {
					wg.Add(1)
					go func() {
						defer wg.Done()
						s := f.submission(t, fmt.Sprintf("r%d@one.example", i))
						bad := i%every == 0
						if bad {
							tc.poison(&s)
						}
						r, err := f.in.NewReceipt(s)
						if err != nil {
							t.Error(err)
							return
						}
						err = f.in.Submit(context.Background(), r, s)
						var re *intake.RefusedError
						switch {
						case bad && !errors.As(err, &re):
							t.Errorf("poisoned message %d: %v; want a *RefusedError", i, err)
						case bad && (re.SQLState != tc.sqlstate || re.MessageID != r.ID || errors.Is(err, intake.ErrUnavailable)):
							t.Errorf("poisoned message %d: %#v", i, re)
						case !bad && err != nil:
							t.Errorf("good message %d failed beside poison: %v", i, err)
						}
						mu.Lock()
						defer mu.Unlock()
						if bad {
							poisons = append(poisons, r.ID)
						} else {
							good = append(good, r.ID)
						}
					}()
				}
				wg.Wait()
				ctx := context.Background()
				for _, id := range good {
					if ok, err := f.st.MessageExists(ctx, id); err != nil || !ok {
						t.Errorf("good message %s not in the ledger: %v", id, err)
					}
				}
				for _, id := range poisons {
					if ok, err := f.st.MessageExists(ctx, id); err != nil || ok {
						t.Errorf("poisoned message %s in the ledger (%v)", id, err)
					}
				}
				// The test proves something only if poison shared a batch with good mail.
				mixed := 0
				for _, b := range log.batches {
					if len(b) > 1 && slices.ContainsFunc(b, func(id uuid.UUID) bool { return slices.Contains(poisons, id) }) {
						mixed++
					}
				}
				if mixed == 0 {
					t.Fatalf("no batch held a poisoned message beside another: %d batches", len(log.batches))
				}
				t.Logf("%d batches, %d with poison beside good mail", len(log.batches), mixed)
			})
		}
	})
}
