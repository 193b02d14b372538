package reliability

import (
	"testing"
	"time"
)

// TestKill9: mailferry serve is killed with SIGKILL while it accepts and
// delivers, then started again. Every accepted message reaches a final
// state and arrives; the only extra copies are of transactions in flight
// at the kill, whose outcome the dead process could not record.
func TestKill9(tt *testing.T) {
	t := track(tt)
	n := size(450, 5000)
	s := newStack(t, 20*time.Millisecond)
	srv := s.serve()
	l := s.newLoad()
	posted := make(chan struct{})
	go func() { defer close(posted); l.run(n, 16, time.Time{}, nil) }()

	// Kill once a third has arrived: the API is still taking mail and
	// every worker is mid-transaction.
	s.waitReceived(n/3, 2*time.Minute)
	openAtKill := 0
	for _, k := range s.sinks {
		_, open := k.Connections()
		openAtKill += open
	}
	srv.kill9()
	killedAt := time.Now()
	inFlight := s.inAttempt()
	receivedAtKill := s.received()
	<-posted
	accepted := l.sent()
	pendingAtKill, err := s.pending(ids(accepted))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kill -9 after %d of %d accepted messages arrived: %d recipients pending, %d transactions in flight (%d SMTP connections open); %s",
		receivedAtKill, len(accepted), pendingAtKill, inFlight, openAtKill, l.summary())
	if pendingAtKill == 0 {
		t.Fatalf("nothing was pending at the kill: the test broke nothing")
	}

	srv = s.serve()
	healed := s.waitFinal(ids(accepted), size(time.Minute, 5*time.Minute))
	lost, dups := s.tally(accepted)
	t.Logf("after restart: all %d accepted messages final %v after the kill (%v after the restart); lost %d, duplicates %d (bound: %d in flight)",
		len(accepted), time.Since(killedAt).Round(100*time.Millisecond), healed.Round(100*time.Millisecond), lost, dups, inFlight)
	if lost != 0 {
		t.Errorf("%d accepted messages never arrived", lost)
	}
	if dups > inFlight {
		t.Errorf("%d duplicate deliveries, more than the %d transactions in flight at the kill", dups, inFlight)
	}
	if _, err := srv.sigterm(time.Minute); err != nil {
		t.Errorf("serve after SIGTERM: %v", err)
	}
}

// TestSIGTERM: a graceful stop under load exits 0 within the shutdown
// grace, finishes and records every transaction it started, and after a
// restart every accepted message arrives exactly once.
func TestSIGTERM(tt *testing.T) {
	t := track(tt)
	n := size(450, 5000)
	s := newStack(t, 50*time.Millisecond)
	srv := s.serve()
	l := s.newLoad()
	posted := make(chan struct{})
	go func() { defer close(posted); l.run(n, 16, time.Time{}, nil) }()

	s.waitReceived(n/3, 2*time.Minute)
	inFlight := s.inAttempt()
	took, err := srv.sigterm(time.Minute)
	<-posted
	accepted := l.sent()
	t.Logf("SIGTERM with %d transactions in flight: exit %v after %v; %d of %d accepted messages arrived; %s",
		inFlight, err, took.Round(10*time.Millisecond), s.received(), len(accepted), l.summary())
	if err != nil {
		t.Errorf("serve exit after SIGTERM: %v, want status 0", err)
	}
	if left := s.inAttempt(); left != 0 {
		t.Errorf("%d transactions left unrecorded by a graceful stop", left)
	}

	srv = s.serve()
	healed := s.waitFinal(ids(accepted), size(time.Minute, 5*time.Minute))
	lost, dups := s.tally(accepted)
	t.Logf("after restart: all %d accepted messages final in %v; lost %d, duplicates %d",
		len(accepted), healed.Round(100*time.Millisecond), lost, dups)
	if lost != 0 || dups != 0 {
		t.Errorf("lost %d, duplicates %d; want none of either", lost, dups)
	}
	if _, err := srv.sigterm(time.Minute); err != nil {
		t.Errorf("serve after SIGTERM: %v", err)
	}
}
