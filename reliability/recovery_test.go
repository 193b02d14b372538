package reliability

import (
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/devstack"
)

// defaultLeases runs serve with the lease timings an operator gets: the
// default MAILFERRY_VISIBILITY_TIMEOUT (30s) rather than the tests' 3s.
const defaultLeases = "MAILFERRY_VISIBILITY_TIMEOUT="

// recoveryGoal is issue 11's bound: a dead worker's in-flight mail is
// delivered within a minute of the restart (or of the crash, when another
// worker lives).
const recoveryGoal = time.Minute

// TestCrashRecoveryAfterRestart: with the default lease timings, serve is
// killed with SIGKILL after about a quarter of the load arrived and started
// again at once. Every accepted message is final within a minute of the
// restart: the dead process's jobs are reclaimed once its leases lapse,
// not after a five-minute silence and a reconciler pass.
func TestCrashRecoveryAfterRestart(tt *testing.T) {
	t := track(tt)
	n := size(400, 2000)
	s := newStack(t, 20*time.Millisecond)
	srv := s.serveOn(s.httpPort, defaultLeases)
	l := s.newLoad()
	posted := make(chan struct{})
	go func() { defer close(posted); l.run(n, 16, time.Time{}, nil) }()
	s.waitReceived(n/4, 2*time.Minute)
	srv.kill9()
	killedAt := time.Now()
	inFlight := s.inAttempt()
	<-posted
	accepted := l.sent()
	pending, err := s.pending(ids(accepted))
	if err != nil {
		t.Fatal(err)
	}
	if pending == 0 {
		t.Fatal("nothing was pending at the kill: the test broke nothing")
	}
	srv = s.serveOn(s.httpPort, defaultLeases)
	restartedAt := time.Now()
	healed := s.waitFinal(ids(accepted), 3*recoveryGoal)
	lost, dups := s.tally(accepted)
	t.Logf("default leases, kill -9 then restart: %d accepted, %d pending and %d transactions in flight at the kill; "+
		"all final %v after the restart (%v after the kill); lost %d, duplicates %d",
		len(accepted), pending, inFlight, healed.Round(100*time.Millisecond),
		time.Since(killedAt).Round(100*time.Millisecond), lost, dups)
	if healed > recoveryGoal {
		t.Errorf("recovery took %v after the restart (at %v), want at most %v", healed, restartedAt.Sub(killedAt), recoveryGoal)
	}
	if lost != 0 || dups > inFlight {
		t.Errorf("lost %d, duplicates %d (bound %d)", lost, dups, inFlight)
	}
	if _, err := srv.sigterm(time.Minute); err != nil {
		t.Errorf("serve after SIGTERM: %v", err)
	}
}

// TestCrashRecoveryOtherWorkerAlive: two serve processes share the queue;
// one is killed with SIGKILL mid-load and not restarted. The survivor
// finishes every message the dead one accepted or held within a minute of
// the crash.
func TestCrashRecoveryOtherWorkerAlive(tt *testing.T) {
	t := track(tt)
	n := size(400, 2000)
	s := newStack(t, 20*time.Millisecond)
	port, err := devstack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	survivor := s.serveOn(port, defaultLeases)
	victim := s.serveOn(s.httpPort, defaultLeases)
	l := s.newLoad() // posts to the victim
	posted := make(chan struct{})
	go func() { defer close(posted); l.run(n, 16, time.Time{}, nil) }()
	s.waitReceived(n/4, 2*time.Minute)
	victim.kill9()
	killedAt := time.Now()
	inFlight := s.inAttempt()
	<-posted
	accepted := l.sent()
	pending, err := s.pending(ids(accepted))
	if err != nil {
		t.Fatal(err)
	}
	if pending == 0 {
		t.Fatal("nothing was pending at the kill: the test broke nothing")
	}
	s.waitFinal(ids(accepted), 3*recoveryGoal)
	healed := time.Since(killedAt)
	lost, dups := s.tally(accepted)
	t.Logf("default leases, one of two processes killed: %d accepted, %d pending and %d transactions in flight at the kill; "+
		"all final %v after the kill; lost %d, duplicates %d",
		len(accepted), pending, inFlight, healed.Round(100*time.Millisecond), lost, dups)
	if healed > recoveryGoal {
		t.Errorf("recovery took %v after the crash, want at most %v", healed, recoveryGoal)
	}
	if lost != 0 || dups > inFlight {
		t.Errorf("lost %d, duplicates %d (bound %d)", lost, dups, inFlight)
	}
	if _, err := survivor.sigterm(time.Minute); err != nil {
		t.Errorf("survivor after SIGTERM: %v", err)
	}
}
