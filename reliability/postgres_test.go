package reliability

import (
	"net/http"
	"testing"
	"time"
)

// TestPostgresRestart: PostgreSQL stops (a fast shutdown, as in a restart
// or a failover) while transactions are in flight, and comes back after a
// while. Meanwhile the API refuses with 503 what it cannot record, never a
// 202; the workers finish their SMTP transactions and keep the outcomes
// until the ledger answers. Nothing is lost and nothing sent twice.
func TestPostgresRestart(tt *testing.T) {
	t := track(tt)
	n := size(300, 3000)
	outage := size(5*time.Second, 60*time.Second)
	s := newStack(t, 200*time.Millisecond)
	srv := s.serve()
	l := s.newLoad()
	l.run(n, 16, time.Time{}, nil)
	accepted := l.sent()
	if len(accepted) != n {
		t.Fatalf("%d of %d messages accepted before the outage: %s", len(accepted), n, l.summary())
	}
	s.waitReceived(n/4, 2*time.Minute)

	inFlight := s.inAttempt()
	s.stopPostgres()
	downAt := time.Now()
	during := s.newLoad()
	gets := map[int]int{}
	ready := map[int]int{}
	for time.Since(downAt) < outage {
		status, err := during.post(time.Time{})
		expect(t, "POST with PostgreSQL down", status, err, http.StatusServiceUnavailable)
		status, err = s.get("/v1/messages/" + accepted[0].ID)
		expect(t, "GET with PostgreSQL down", status, err, http.StatusServiceUnavailable)
		gets[status]++
		status, _ = s.get("/readyz")
		ready[status]++
		time.Sleep(100 * time.Millisecond)
	}
	refused := during.summary()
	s.startPostgres()
	upAt := time.Now()
	if err := within(time.Minute, func() bool { st, _ := during.post(time.Time{}); return st == http.StatusAccepted }); err != nil {
		t.Fatalf("the API did not accept mail again within a minute of PostgreSQL's return: %s", during.summary())
	}
	t.Logf("PostgreSQL stopped with %d transactions in flight, down %v: POST %s; GET %v; readyz %v; API accepting again %v after its return",
		inFlight, outage, refused, gets, ready, time.Since(upAt).Round(100*time.Millisecond))

	accepted = append(accepted, during.sent()...)
	healed := s.waitFinal(ids(accepted), size(time.Minute, 5*time.Minute))
	lost, dups := s.tally(accepted)
	held, _ := srv.logLines("recorded outcomes once the ledger answered", "")
	t.Logf("after PostgreSQL's return: all %d accepted messages final in %v; %d outcomes held in memory and recorded late; lost %d, duplicates %d",
		len(accepted), healed.Round(100*time.Millisecond), held, lost, dups)
	if lost != 0 || dups != 0 {
		t.Errorf("lost %d, duplicates %d; want none of either", lost, dups)
	}
	if held == 0 {
		t.Errorf("no outcome waited for the ledger: the outage missed the transactions in flight")
	}
	if _, err := srv.sigterm(time.Minute); err != nil {
		t.Errorf("serve after SIGTERM: %v", err)
	}
}
