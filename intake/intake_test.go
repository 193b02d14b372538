package intake_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/internal/devstack"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/teststack"
	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/store"
)

// TestMain starts a Redis Cluster too: the suite runs on both kinds of Redis
// (testenv.EachRedis).
func TestMain(m *testing.M) { testenv.Main(m, testenv.WithCluster()) }

type fixture struct {
	in  *intake.Intake
	st  *store.Store
	q   *queue.Queue
	key store.APIKey
	reg *prometheus.Registry
}

func newFixture(t *testing.T, opts teststack.Options) *fixture {
	t.Helper()
	if opts.Intake.MaxBatch == 0 {
		opts.Intake.MaxBatch = 16
	}
	if opts.Intake.Committers == 0 {
		opts.Intake.Committers = 2
	}
	ts := teststack.New(t, opts)
	key, _, err := ts.Store.CreateAPIKey(context.Background(), "acme", []string{"example.com"})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{in: ts.Intake, st: ts.Store, q: ts.Queue, key: key, reg: ts.Registry}
}

func (f *fixture) submission(t *testing.T, to ...string) intake.Submission {
	t.Helper()
	msg, err := mail.Build(mail.Draft{From: "alice@example.com", To: to, Subject: "hi", Text: "hello"}, mail.BuildOptions{Hostname: "relay.test"})
	if err != nil {
		t.Fatal(err)
	}
	return intake.Submission{TenantID: f.key.TenantID, APIKeyID: f.key.ID, Ingress: "api", Message: msg}
}

func TestNewRefusesMissingParts(t *testing.T) {
	if _, err := intake.New(intake.Options{}); err == nil {
		t.Fatal("New without Ledger and Queue succeeded")
	}
}

// TestGroupCommit: many concurrent submissions are all recorded and queued
// exactly once, one job per recipient domain, with fewer transactions than
// messages once they pile up.
func TestGroupCommit(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, teststack.Options{})
		const n = 300
		var wg sync.WaitGroup
		ids := make(chan string, n)
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := f.submission(t, fmt.Sprintf("a%d@one.example", i), fmt.Sprintf("b%d@two.example", i), fmt.Sprintf("c%d@ONE.example", i))
				r, err := f.in.NewReceipt(s)
				if err != nil {
					t.Error(err)
					return
				}
				if err := f.in.Submit(context.Background(), r, s); err != nil {
					t.Errorf("submit %d: %v", i, err)
					return
				}
				ids <- r.ID.String()
			}()
		}
		wg.Wait()
		close(ids)
		seen := map[string]bool{}
		for id := range ids {
			if seen[id] {
				t.Errorf("id %s twice", id)
			}
			seen[id] = true
		}
		if len(seen) != n {
			t.Fatalf("%d accepted, want %d", len(seen), n)
		}
		d, err := f.q.Depth(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if d.Ready != 2*n {
			t.Errorf("ready jobs %d, want %d (one per message and domain)", d.Ready, 2*n)
		}
		want := fmt.Sprintf(`# HELP mailferry_messages_accepted_total Messages recorded and queued, by ingress.
# TYPE mailferry_messages_accepted_total counter
mailferry_messages_accepted_total{ingress="api"} %d
mailferry_messages_accepted_total{ingress="smtp"} 0
`, n)
		if err := testutil.GatherAndCompare(f.reg, strings.NewReader(want), "mailferry_messages_accepted_total"); err != nil {
			t.Error(err)
		}
	})
}

// TestQueueDownUndoes: when Redis refuses, the caller hears ErrUnavailable
// and the ledger holds nothing of the batch.
func TestQueueDownUndoes(t *testing.T) {
	t.Parallel()
	rds, err := devstack.StartRedis(context.Background(), devstack.RedisOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, teststack.Options{RedisURL: rds.URL})
	if err := rds.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var ids []string
	var mu sync.Mutex
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := f.submission(t, fmt.Sprintf("u%d@one.example", i))
			r, _ := f.in.NewReceipt(s)
			err := f.in.Submit(context.Background(), r, s)
			if !errors.Is(err, intake.ErrUnavailable) {
				t.Errorf("submit with Redis down: %v", err)
			}
			mu.Lock()
			ids = append(ids, r.ID.String())
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if _, err := f.st.GetMessage(context.Background(), f.key.TenantID, uuid.MustParse(id)); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("message %s left in the ledger after a refused accept: %v", id, err)
		}
	}
}
