package relay

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/wait"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/smtpclient"
	"github.com/mailferry/mailferry/store"
)

// TestDuplicateJobsDeliverOnce: every job is in Redis three times (as after
// a `mailferry requeue` on top of a live queue) and two workers race for
// the copies over a slow receiver. Each recipient still gets one message,
// greylisted ones are retried on schedule rather than by every copy, and
// the copies drain away instead of circulating.
func TestDuplicateJobsDeliverOnce(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{DataDelay: 30 * time.Millisecond})
		const n = 30
		for i := range 5 {
			s.OnRcpt(fmt.Sprintf("u%d@example.net", i), "451 4.7.1 greylisted")
		}
		ids := make([]uuid.UUID, n)
		for i := range ids {
			ids[i] = p.send(mail.Draft{From: "alice@example.com", To: []string{fmt.Sprintf("u%d@example.net", i)}, Text: "hi"})
			job := queue.Item{Job: queue.Job{MessageID: ids[i].String(), Domain: "example.net"}}
			if err := p.q.Enqueue(context.Background(), job, job); err != nil {
				t.Fatal(err)
			}
		}
		// A lease that lapses is, by design, a worker presumed dead; give it
		// room so a loaded machine's late heartbeat is not mistaken for one.
		wide := func(o *WorkerOptions) { o.PerDestination = 64; o.Heartbeat = time.Second; o.Lease = 5 * time.Second }
		p.start("w1", wide)
		p.start("w2", wide)
		for _, id := range ids {
			if v := p.wait(id, 30*time.Second); v.Status != store.StatusDelivered {
				t.Fatalf("%s: %s", id, v.Status)
			}
		}
		got := map[string]int{}
		for _, m := range s.Messages() {
			for _, to := range m.To {
				got[to]++
			}
		}
		for i := range n {
			if c := got[fmt.Sprintf("u%d@example.net", i)]; c != 1 {
				t.Errorf("u%d@example.net received %d copies, want 1", i, c)
			}
		}
		for i := range 5 {
			v, _ := p.st.GetMessage(context.Background(), p.key.TenantID, ids[i])
			if a := v.Recipients[0].Attempts; a != 2 {
				t.Errorf("greylisted u%d: %d attempts, want 2 (one per scheduled retry, not one per copy)", i, a)
			}
		}
		wait.Within(t, 10*time.Second, "the copies to drain from the queue after delivery", func() bool {
			d, err := p.q.Depth(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			return d == (queue.Depth{})
		})
	})
}

// outageLedger is the real store behind a switch: from the first
// RecordOutcomes on, for a while, every call fails as if PostgreSQL had
// gone away right after an SMTP transaction.
type outageLedger struct {
	Ledger
	length  time.Duration
	mu      sync.Mutex
	until   time.Time // zero: the outage has not begun
	records atomic.Int32
}

var errOutage = errors.New("connection refused (test outage)")

func (l *outageLedger) down() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.until.IsZero() && time.Now().Before(l.until)
}

func (l *outageLedger) RecordOutcomes(ctx context.Context, id uuid.UUID, outs []store.Outcome) (bool, error) {
	l.records.Add(1)
	l.mu.Lock()
	if l.until.IsZero() {
		l.until = time.Now().Add(l.length)
	}
	l.mu.Unlock()
	if l.down() {
		return false, errOutage
	}
	return l.Ledger.RecordOutcomes(ctx, id, outs)
}

func (l *outageLedger) RenewLease(ctx context.Context, id uuid.UUID, idxs []int, owner string, d time.Duration) (int, error) {
	if l.down() {
		return 0, errOutage
	}
	return l.Ledger.RenewLease(ctx, id, idxs, owner, d)
}

func (l *outageLedger) LoadDelivery(ctx context.Context, id uuid.UUID, domain string) (*store.Delivery, error) {
	if l.down() {
		return nil, errOutage
	}
	return l.Ledger.LoadDelivery(ctx, id, domain)
}

// TestLedgerOutageWhileRecording: the ledger goes away between the SMTP
// transaction and the write of its outcome, for many times the job's
// visibility timeout, while a second worker waits for work. The worker
// keeps the outcome and the job, records it when the ledger is back, and
// the message is not sent twice.
func TestLedgerOutageWhileRecording(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
		const outage = 3 * time.Second
		l := &outageLedger{Ledger: p.st, length: outage}
		short := func(name string) func(o *WorkerOptions) {
			return func(o *WorkerOptions) {
				o.Ledger = l
				o.Queue = p.newQueue(name, 300*time.Millisecond)
			}
		}
		p.start("w1", short("w1"))
		id := p.send(mail.Draft{From: "alice@example.com", To: []string{"bob@example.net"}, Text: "hi"})
		p.start("w2", short("w2"))
		v := p.wait(id, 20*time.Second)
		if v.Status != store.StatusDelivered || v.Recipients[0].Attempts != 1 {
			t.Fatalf("status %s, %+v", v.Status, v.Recipients[0])
		}
		if n := len(s.Messages()); n != 1 {
			t.Errorf("receiver got %d copies through a %v ledger outage, want 1", n, outage)
		}
		if n := l.records.Load(); n < 3 {
			t.Errorf("outcome written after %d tries: the outage did not bite", n)
		}
	})
}

// TestHolderCutOffFromLedgerWhileRecording: only the worker that made the
// SMTP transaction loses the ledger (a partition, or its pool is wedged),
// for many times the job's visibility timeout and the recipients' lease,
// while a second worker reaches it fine. The holder's claim on the job
// must stay alive while it waits to record, or the second worker takes
// the job over and sends the message again.
func TestHolderCutOffFromLedgerWhileRecording(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
		const outage = 2 * time.Second
		l := &outageLedger{Ledger: p.st, length: outage}
		p.start("w1", func(o *WorkerOptions) {
			o.Ledger = l
			o.Queue = p.newQueue("w1", 300*time.Millisecond)
		})
		id := p.send(mail.Draft{From: "alice@example.com", To: []string{"bob@example.net"}, Text: "hi"})
		wait.For(t, "w1's SMTP transaction", func() bool { return l.records.Load() > 0 })
		p.start("w2", func(o *WorkerOptions) { o.Queue = p.newQueue("w2", 300*time.Millisecond) })
		v := p.wait(id, 20*time.Second)
		if v.Status != store.StatusDelivered || v.Recipients[0].Attempts != 1 {
			t.Fatalf("status %s, %+v", v.Status, v.Recipients[0])
		}
		if n := len(s.Messages()); n != 1 {
			t.Errorf("receiver got %d copies while the holder was cut off from the ledger for %v, want 1", n, outage)
		}
		if n := l.records.Load(); n < 3 {
			t.Errorf("outcome written after %d tries: the outage did not bite", n)
		}
	})
}

// TestShutdownWhileLedgerDown: when the shutdown grace ends with an outcome
// still unwritten, Run returns anyway and the job stays in the queue (to be
// reclaimed: the one case where a recipient may get a second copy).
func TestShutdownWhileLedgerDown(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
		l := &outageLedger{Ledger: p.st, length: time.Hour}
		opts := p.opts
		opts.Ledger = l
		opts.Queue = p.newQueue("w", time.Minute)
		opts.ShutdownGrace = 500 * time.Millisecond
		router, err := NewRouter(p.router)
		if err != nil {
			t.Fatal(err)
		}
		opts.Route = router.Route
		opts.Client = newClient(t, p.port, nil)
		w, err := NewWorker(opts)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); w.Run(ctx) }()
		p.send(mail.Draft{From: "alice@example.com", To: []string{"bob@example.net"}, Text: "hi"})
		wait.Within(t, 10*time.Second, "a delivery", func() bool { return l.records.Load() > 0 })
		cancel()
		stopped := time.Now()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return after the shutdown grace")
		}
		if d := time.Since(stopped); d < opts.ShutdownGrace {
			t.Errorf("Run returned after %v, before the %v grace: the outcome was given up early", d, opts.ShutdownGrace)
		}
		if len(s.Messages()) != 1 {
			t.Fatalf("receiver got %d messages", len(s.Messages()))
		}
		d, err := p.q.Depth(context.Background())
		if err != nil || d.Inflight != 1 {
			t.Errorf("queue %+v %v: the unrecorded job must stay held", d, err)
		}
	})
}

// TestReclaimedLiveClaimNoSecondTransaction: worker A is in a slow SMTP
// transaction and alive; its PostgreSQL lease holds, but another worker's
// queue reclaims A's Redis entry (A's heartbeat is slower than B's
// visibility timeout). B must not start a transaction for the same
// recipients: the receiver sees exactly one.
func TestReclaimedLiveClaimNoSecondTransaction(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{DataDelay: 4 * time.Second})
		p.start("a", func(o *WorkerOptions) {
			// A beats every 3s: between beats B's queue (200ms visibility)
			// takes the entry. A's client waits out the slow 250.
			o.Heartbeat, o.Lease = 3*time.Second, 10*time.Second
			o.Client = newClient(t, p.port, func(co *smtpclient.Options) { co.Timeouts.DataEnd = 10 * time.Second })
		})
		id := p.send(mail.Draft{From: "alice@example.com", To: []string{"bob@example.net"}, Text: "hi"})
		wait.For(t, "worker a to reach DATA", func() bool { return len(s.Messages()) > 0 })
		// B takes A's entry over in Redis while A waits for the 250.
		b := &claimWatch{Queue: p.newQueue("b", 200*time.Millisecond), claimed: make(chan struct{})}
		p.start("b", func(o *WorkerOptions) { o.Queue = b })
		select {
		case <-b.claimed:
		case <-time.After(10 * time.Second):
			t.Fatal("worker b never reclaimed a's entry: the test broke nothing")
		}
		if v := p.wait(id, 20*time.Second); v.Status != store.StatusDelivered || v.Recipients[0].Attempts != 1 {
			t.Fatalf("status %s, %+v", v.Status, v.Recipients[0])
		}
		if n := len(s.Messages()); n != 1 {
			t.Errorf("receiver saw %d transactions for one recipient, want 1: two workers held it at once", n)
		}
	})
}

// claimWatch is a worker's queue that signals its first claimed job.
type claimWatch struct {
	Queue
	once    sync.Once
	claimed chan struct{}
}

func (q *claimWatch) Claim(ctx context.Context, limit int, block time.Duration) ([]queue.Claimed, error) {
	cs, err := q.Queue.Claim(ctx, limit, block)
	if len(cs) > 0 {
		q.once.Do(func() { close(q.claimed) })
	}
	return cs, err
}

// lostLeaseLedger is the real store, but every renewal of a lease reports
// it lost, as when another owner took the recipients over; and saving the
// signature (the first step of the delivery, before any dial) is slow,
// so several heartbeats happen first. signed says whether the delivery's
// context was cancelled by then.
type lostLeaseLedger struct {
	Ledger
	signed chan bool
}

func (l lostLeaseLedger) RenewLease(context.Context, uuid.UUID, []int, string, time.Duration) (int, error) {
	return 0, nil
}

func (l lostLeaseLedger) SaveSignature(ctx context.Context, id uuid.UUID, header string) (string, error) {
	select {
	case <-ctx.Done():
	case <-time.After(3 * time.Second):
	}
	select {
	case l.signed <- ctx.Err() != nil:
	default:
	}
	return l.Ledger.SaveSignature(ctx, id, header)
}

// TestLostLeaseStopsBeforeData: a worker whose heartbeat finds its lease
// lost cancels the delivery before DATA instead of going on with it.
func TestLostLeaseStopsBeforeData(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		s := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
		routed := make(chan bool, 1) // whether the delivery context was cancelled
		p.start("w", func(o *WorkerOptions) { o.Ledger = lostLeaseLedger{Ledger: p.st, signed: routed} })
		p.send(mail.Draft{From: "alice@example.com", To: []string{"bob@example.net"}, Text: "hi"})
		select {
		case cancelled := <-routed:
			if !cancelled {
				t.Errorf("the heartbeat reported the lease lost, yet the delivery went on")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no delivery began")
		}
		if n := len(s.Messages()); n != 0 {
			t.Errorf("receiver got %d messages from a worker that had lost its lease", n)
		}
	})
}
