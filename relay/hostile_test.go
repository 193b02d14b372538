package relay

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/store"
)

// scriptedMX is a receiving server for domain that answers the end of each
// message's data with the next of replies, raw bytes and all ("250 ok" once
// they run out), and counts the messages it read.
type scriptedMX struct {
	mu       sync.Mutex
	replies  []string
	messages int
}

func (p *pipeline) scriptedMX(domain, ip string, replies ...string) *scriptedMX {
	p.t.Helper()
	port, lns := testmx.Listen(p.t, ip)
	if p.port != 0 && port != p.port {
		p.t.Fatalf("scripted MX on port %d, the test's MX share port %d", port, p.port)
	}
	p.port = port
	p.dns.MX(domain, 10, "mx."+domain)
	p.dns.A("mx."+domain, ip)
	s := &scriptedMX{replies: replies}
	testmx.RunPeer(p.t, lns[0], s.serve)
	return s
}

func (s *scriptedMX) serve(c *testmx.PeerConn) {
	c.Send("220 mx.test ESMTP")
	for {
		line, err := c.ReadLine()
		if err != nil {
			return
		}
		verb, _, _ := strings.Cut(strings.ToUpper(line), " ")
		switch verb {
		case "EHLO", "HELO":
			c.Send("250 mx.test")
		case "MAIL", "RCPT", "RSET", "NOOP":
			c.Send("250 2.0.0 ok")
		case "DATA":
			c.Send("354 go ahead")
			for {
				l, err := c.ReadLine()
				if err != nil {
					return
				}
				if l == "." {
					break
				}
			}
			c.Send(s.next())
		case "QUIT":
			c.Send("221 2.0.0 bye")
			return
		default:
			c.Send("502 5.5.2 not here")
		}
	}
}

func (s *scriptedMX) next() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages++
	if len(s.replies) == 0 {
		return "250 ok"
	}
	r := s.replies[0]
	s.replies = s.replies[1:]
	return r
}

func (s *scriptedMX) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.messages
}

// TestHostileDataReply (issue 18, 1): a next hop answers the end of DATA
// with invalid UTF-8 or a NUL. The outcome is recorded (cleaned), the
// message ends delivered or bounced with its attempt, the receiver gets one
// copy, and the next message to the domain goes through. Before, PostgreSQL
// refused the attempt row (SQLSTATE 22021), record retried for ever, the
// message stayed queued with 0 attempts and the domain stalled.
func TestHostileDataReply(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			name, reply        string
			status, rcptStatus string
			response, enhanced string
		}{
			{"invalid UTF-8", "250 2.0.0 queued N \xff\xfe", store.StatusDelivered, store.RecipientDelivered, "queued N \uFFFD\uFFFD", "2.0.0"},
			{"NUL", "250 ok \x00", store.StatusDelivered, store.RecipientDelivered, "ok \uFFFD", ""},
			{"bounce with an invalid byte", "550 5.7.1 rejected \xff", store.StatusBounced, store.RecipientBounced, "rejected \uFFFD", "5.7.1"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				p := newPipeline(t)
				mx := p.scriptedMX("example.net", "127.0.0.2", tc.reply)
				p.start("w", nil)
				id := p.send(mail.Draft{From: "alice@example.com", To: []string{"bob@example.net"}, Text: "hi"})
				v := p.wait(id, 20*time.Second)
				r := rcpt(t, v, "bob@example.net")
				if v.Status != tc.status || r.Status != tc.rcptStatus || r.Attempts != 1 ||
					deref(r.Response) != tc.response || deref(r.EnhancedCode) != tc.enhanced {
					t.Errorf("message %s, recipient %s after %d attempts, %q %q; want %s, %s after 1, %q %q",
						v.Status, r.Status, r.Attempts, deref(r.EnhancedCode), deref(r.Response),
						tc.status, tc.rcptStatus, tc.enhanced, tc.response)
				}
				next := p.send(mail.Draft{From: "alice@example.com", To: []string{"carol@example.net"}, Text: "next"})
				if v := p.wait(next, 20*time.Second); v.Status != store.StatusDelivered {
					t.Errorf("the next message to the domain: %s", v.Status)
				}
				if n := mx.count(); n != 2 {
					t.Errorf("the receiver read %d messages, want 2 (one each)", n)
				}
			})
		}
	})
}

// countingLedger counts RecordOutcomes calls.
type countingLedger struct {
	Ledger
	records atomic.Int32
}

func (l *countingLedger) RecordOutcomes(ctx context.Context, id uuid.UUID, outs []store.Outcome) (bool, error) {
	l.records.Add(1)
	return l.Ledger.RecordOutcomes(ctx, id, outs)
}

// TestRefusedRecordParks (issue 18, 1): when the ledger refuses a job's
// outcomes (here a real CHECK constraint that refuses the receiver's
// reply, SQLSTATE 23514), record tries recordRejects times and then parks
// the job with a reason that says what the attempt ended in, counts it in
// mailferry_outcomes_unrecorded_total, and lets the domain go on: it never
// loops. Before, record retried for ever, holding the worker and the
// domain.
func TestRefusedRecordParks(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		p := newPipeline(t)
		conn, err := pgx.Connect(t.Context(), p.dbURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(t.Context(), `ALTER TABLE attempts ADD CONSTRAINT test_refuse_poison CHECK (response IS DISTINCT FROM 'poison')`); err != nil {
			t.Fatal(err)
		}
		mx := p.scriptedMX("example.net", "127.0.0.2", "250 poison")
		l := &countingLedger{Ledger: p.st}
		m := NewMetrics(prometheus.NewRegistry())
		p.start("w", func(o *WorkerOptions) {
			o.Ledger = l
			o.Metrics = m
		})
		id := p.send(mail.Draft{From: "alice@example.com", To: []string{"bob@example.net"}, Text: "poison"})
		var parked []store.ParkedJob
		wait.Within(t, 30*time.Second, "the job parked", func() bool {
			parked, err = p.st.ParkedJobs(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			return len(parked) > 0
		})
		if j := parked[0]; j.MessageID != id || j.Domain != "example.net" ||
			!strings.Contains(j.Reason, "delivered 1") || !strings.Contains(j.Reason, "23514") {
			t.Errorf("parked %+v", j)
		}
		p.waitDepth("nothing (the job parked and acked)", 10*time.Second, func(d queue.Depth) bool { return d == queue.Depth{} })
		if n := l.records.Load(); n != recordRejects {
			t.Errorf("record tried %d times, want %d", n, recordRejects)
		}
		if n := testutil.ToFloat64(m.unrecords); n != 1 {
			t.Errorf("mailferry_outcomes_unrecorded_total %v, want 1", n)
		}
		if n := testutil.ToFloat64(m.parks); n != 1 {
			t.Errorf("mailferry_jobs_parked_total %v, want 1", n)
		}
		next := p.send(mail.Draft{From: "alice@example.com", To: []string{"carol@example.net"}, Text: "next"})
		if v := p.wait(next, 20*time.Second); v.Status != store.StatusDelivered {
			t.Errorf("the next message to the domain: %s", v.Status)
		}
		if n := mx.count(); n != 2 {
			t.Errorf("the receiver read %d messages, want 2 (one each)", n)
		}
	})
}
