package reliability

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// restored is the reconciler's log line when it found Redis emptied.
const restored = "redis had lost the queue; requeued every pending job from PostgreSQL"

// TestRedisDataLoss: Redis loses the queue three ways while mail is
// pending (ready, in flight, greylisted and waiting for a retry, or
// scheduled for later with send_at):
//
//   - FLUSHALL mid-run: the reconciler notices and requeues every pending
//     job from PostgreSQL;
//   - Redis restarted without persistence: the same, and while it is down
//     the API refuses with 503;
//   - wiped while mailferry is stopped, then `mailferry requeue`: the
//     command alone restores the queue.
//
// Every accepted message arrives exactly once, and none before its
// send_at.
func TestRedisDataLoss(tt *testing.T) {
	t := track(tt)
	n := size(300, 3000)
	s := newStack(t, 20*time.Millisecond)
	srv := s.serve()
	ctx := context.Background()
	var accepted []sent

	// 1. FLUSHALL mid-run, with some transactions outlasting the first
	// retry delay: the restored copies of their jobs come due while they
	// still run, and must not start a second transaction.
	l := s.newLoad()
	s.greylist(n, 7)
	l.run(n*4/5, 16, time.Time{}, nil)
	l.run(n/5, 4, time.Now().Add(3*time.Second), nil)
	slow := s.newLoad()
	slow.domain = slowDomain
	// Fewer than the 8 connections a domain may have: the copies could get
	// a connection of their own.
	slow.run(4, 4, time.Time{}, nil)
	accepted = append(append(accepted, l.sent()...), slow.sent()...)
	s.waitReceived(n/3, 2*time.Minute)
	slowSink := s.sinks[domains]
	if err := within(time.Minute, func() bool { return len(slowSink.Messages()) == 4 }); err != nil {
		t.Fatalf("the slow MX got %d of 4 messages", len(slowSink.Messages()))
	}
	pendingAtLoss := s.pendingJobs()
	if err := s.rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	healed := s.waitFinal(ids(accepted), size(time.Minute, 5*time.Minute))
	lines, jobs := srv.logLines(restored, "jobs")
	t.Logf("FLUSHALL with %d jobs pending (of %d messages accepted, %s; 4 in a %v transaction): restored by the reconciler (%d restore, %d jobs requeued); all final %v later",
		pendingAtLoss, len(accepted), l.summary(), slowDelay, lines, jobs, healed.Round(100*time.Millisecond))
	if got := len(slowSink.Messages()); got != 4 {
		t.Errorf("the slow MX got %d messages, want 4: restored jobs started second transactions", got)
	}
	if lines == 0 {
		t.Errorf("the reconciler did not log a restore after FLUSHALL")
	}

	// 2. Restart without persistence, with mail scheduled for later.
	l = s.newLoad()
	l.run(n/5, 8, time.Now().Add(2*time.Second), nil)
	batch := l.sent()
	accepted = append(accepted, batch...)
	pendingAtLoss = s.pendingJobs()
	s.stopRedis()
	down := s.newLoad()
	for range 10 {
		status, err := down.post(time.Time{})
		expect(t, "POST with Redis down", status, err, http.StatusServiceUnavailable)
		time.Sleep(50 * time.Millisecond)
	}
	s.startRedis()
	healed = s.waitFinal(ids(batch), size(time.Minute, 5*time.Minute))
	before := lines
	lines, jobs = srv.logLines(restored, "jobs")
	t.Logf("Redis restarted empty with %d jobs pending: POST while down %s; restored (%d restores, %d jobs in all); all final %v after its return",
		pendingAtLoss, down.summary(), lines, jobs, healed.Round(100*time.Millisecond))
	if lines == before {
		t.Errorf("the reconciler did not log a restore after Redis came back empty")
	}
	if down.status[http.StatusAccepted] != 0 {
		t.Errorf("the API accepted %d messages with Redis down", down.status[http.StatusAccepted])
	}

	// 3. Wiped while mailferry is stopped; `mailferry requeue` restores.
	l = s.newLoad()
	l.run(n/5, 8, time.Now().Add(3*time.Second), nil)
	batch = l.sent()
	accepted = append(accepted, batch...)
	if _, err := srv.sigterm(time.Minute); err != nil {
		t.Errorf("serve exit after SIGTERM: %v", err)
	}
	if err := s.rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	want := s.pendingJobs()
	if want == 0 {
		t.Fatalf("nothing pending when Redis was wiped: the test broke nothing")
	}
	out, stderr, err := s.run("requeue")
	if err != nil {
		t.Fatalf("mailferry requeue: %v\n%s", err, stderr)
	}
	if got, _ := strconv.Atoi(strings.TrimSpace(out)); got != want {
		t.Errorf("mailferry requeue printed %q (%s), want %d: the jobs PostgreSQL holds", out, strings.TrimSpace(stderr), want)
	}
	srv = s.serve()
	healed = s.waitFinal(ids(batch), size(time.Minute, 5*time.Minute))
	if lines, _ := srv.logLines(restored, ""); lines != 0 {
		t.Errorf("the reconciler restored the queue again: `mailferry requeue` did not mark it whole")
	}
	t.Logf("wiped while stopped: `mailferry requeue` queued %d jobs (%s); all final %v after the restart",
		want, strings.TrimSpace(stderr), healed.Round(100*time.Millisecond))

	s.waitFinal(ids(accepted), size(time.Minute, 5*time.Minute))
	lost, dups := s.tally(accepted)
	early := s.ledgerCount(`SELECT count(*) FROM attempts a JOIN messages m ON m.id = a.message_id
WHERE m.send_at IS NOT NULL AND a.started_at < m.send_at`)
	greylisted := s.ledgerCount(`SELECT count(*) FROM recipients WHERE attempts > 1`)
	t.Logf("in all: %d accepted messages (%d greylisted once), lost %d, duplicates %d, attempts before send_at %d",
		len(accepted), greylisted, lost, dups, early)
	if lost != 0 || dups != 0 || early != 0 {
		t.Errorf("lost %d, duplicates %d, attempts before send_at %d; want none", lost, dups, early)
	}
	if _, err := srv.sigterm(time.Minute); err != nil {
		t.Errorf("serve after SIGTERM: %v", err)
	}
}
