package relay

import (
	"context"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/wait"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/store"
)

// waitDepth waits until the queue's depth satisfies cond.
func (p *pipeline) waitDepth(what string, timeout time.Duration, cond func(queue.Depth) bool) {
	p.t.Helper()
	wait.Within(p.t, timeout, "the queue to hold "+what, func() bool {
		d, err := p.q.Depth(context.Background())
		if err != nil {
			p.t.Fatal(err)
		}
		return cond(d)
	})
}

// newMessage is what intake would record for a draft to one recipient.
func (p *pipeline) newMessage(id uuid.UUID, to string) store.NewMessage {
	p.t.Helper()
	m, err := mail.Build(mail.Draft{From: "alice@example.com", To: []string{to}, Subject: "hi", Text: "hello"}, mail.BuildOptions{Hostname: "relay.test"})
	if err != nil {
		p.t.Fatal(err)
	}
	return store.NewMessage{ID: id, TenantID: p.key.TenantID, APIKeyID: p.key.ID, Ingress: "api",
		MessageID: m.MessageID, MailFrom: m.Sender, From: "alice@example.com", Subject: "hi", Body: m.Body,
		CreatedAt: time.Now(), Recipients: []store.NewRecipient{{Email: to}}}
}

// TestJobBeforeItsRows (issue 11, 6b): intake queues before it records, so
// a worker can claim a job whose rows are still committing. It must come
// back for it, not drop it: the message is delivered once its rows land.
// Before, the worker acked a job without rows at once (it took it for an
// undone accept), and the mail waited for the reconciler.
func TestJobBeforeItsRows(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		p := newPipeline(t)
		mx := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
		id := uuid.Must(uuid.NewV7())
		if err := p.q.Enqueue(context.Background(), queue.Item{Job: queue.Job{MessageID: id.String(), Domain: "example.net"}}); err != nil {
			t.Fatal(err)
		}
		p.start("w1", func(o *WorkerOptions) { o.AcceptWindow = time.Minute })
		// The worker has looked and found nothing when the job is neither ready
		// nor claimed any more.
		p.waitDepth("the job looked at", 10*time.Second, func(d queue.Depth) bool { return d.Ready == 0 && d.Inflight == 0 })
		if err := p.st.AcceptBatch(context.Background(), []store.NewMessage{p.newMessage(id, "bob@example.net")}); err != nil {
			t.Fatal(err)
		}
		if v := p.wait(id, 20*time.Second); v.Status != store.StatusDelivered {
			t.Fatalf("status %s, want delivered", v.Status)
		}
		if n := len(mx.Messages()); n != 1 {
			t.Errorf("example.net received %d messages, want 1", n)
		}
	})
}

// TestJobWithoutRowsIsDropped: the rows of a job never committed (the
// client heard 503). Once the id is AcceptWindow old the job is dropped,
// and nothing is sent.
func TestJobWithoutRowsIsDropped(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		p := newPipeline(t)
		mx := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
		id := uuid.Must(uuid.NewV7())
		if err := p.q.Enqueue(context.Background(), queue.Item{Job: queue.Job{MessageID: id.String(), Domain: "example.net"}}); err != nil {
			t.Fatal(err)
		}
		p.start("w1", func(o *WorkerOptions) { o.AcceptWindow = 500 * time.Millisecond })
		p.waitDepth("empty", 10*time.Second, func(d queue.Depth) bool { return d == queue.Depth{} })
		if n := len(mx.Messages()); n != 0 {
			t.Errorf("example.net received %d messages for a job without rows", n)
		}
	})
}

func TestUnrecordedRetry(t *testing.T) {
	w := &Worker{opts: WorkerOptions{AcceptWindow: time.Minute}}
	now := time.Now()
	for _, tc := range []struct {
		name  string
		age   time.Duration
		v4    bool
		after time.Duration // 0: drop
	}{
		{"just made", 100 * time.Millisecond, false, time.Second},
		{"waited 10s", 10 * time.Second, false, 10 * time.Second},
		{"near the window", 50 * time.Second, false, 10 * time.Second},
		{"past the window", 61 * time.Second, false, 0},
		{"not a v7 id", 0, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := v7At(t, now.Add(-tc.age))
			if tc.v4 {
				id = uuid.New()
			}
			at, retry := w.unrecordedRetry(id, now)
			if retry != (tc.after > 0) {
				t.Fatalf("retry %v, want %v", retry, tc.after > 0)
			}
			if got := at.Sub(now); retry && (got < tc.after-time.Millisecond || got > tc.after+time.Millisecond) {
				t.Errorf("retry after %v, want %v", got, tc.after)
			}
		})
	}
}

// v7At makes a version 7 UUID carrying time at.
func v7At(t *testing.T, at time.Time) uuid.UUID {
	t.Helper()
	id := uuid.Must(uuid.NewV7())
	ms := at.UnixMilli()
	for i := 5; i >= 0; i-- {
		id[i] = byte(ms)
		ms >>= 8
	}
	if got := uuidV7Time(id); !got.Equal(time.UnixMilli(at.UnixMilli())) {
		t.Fatalf("uuidV7Time %v, want %v", got, at)
	}
	return id
}
