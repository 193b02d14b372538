package reliability

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/internal/devstack"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/wait"
)

// progress samples how many messages the sinks hold, every 10ms, so a test
// can find the longest time no delivery completed.
type progress struct {
	mu     sync.Mutex
	at     []time.Time // when the count last grew
	counts []int
}

func (s *stack) watchProgress() (*progress, func()) {
	p := &progress{}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		last := -1
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			n := 0
			for _, k := range s.sinks {
				n += k.Received()
			}
			if n != last {
				p.mu.Lock()
				p.at, p.counts = append(p.at, time.Now()), append(p.counts, n)
				p.mu.Unlock()
				last = n
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return p, func() { close(done); <-stopped }
}

// stall is the longest time between from and to (zero: no end) in which
// no delivery completed, counted from from itself to the first delivery
// after it.
func (p *progress) stall(from, to time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	longest, prev := time.Duration(0), from
	for _, t := range p.at {
		if t.Before(from) {
			continue
		}
		if !to.IsZero() && t.After(to) {
			break
		}
		longest = max(longest, t.Sub(prev))
		prev = t
	}
	return longest
}

// killPrimary kills with SIGKILL the Redis primary holding key, calls
// atKill, and waits until a replica has taken over its slots and the
// cluster is whole. It returns the node killed and how long the takeover
// took.
func (s *stack) killPrimary(key string, atKill func()) (string, time.Duration) {
	s.t.Helper()
	ctx := context.Background()
	cc, ok := s.rdb.(*redis.ClusterClient)
	if !ok {
		s.t.Fatalf("killPrimary on a stack without a cluster")
	}
	m, err := cc.MasterForKey(ctx, key)
	if err != nil {
		s.t.Fatal(err)
	}
	dead := m.Options().Addr
	node := s.cluster.Node(dead)
	if node == nil {
		s.t.Fatalf("no cluster node listens on %s", dead)
	}
	node.Kill()
	start := time.Now()
	atKill()
	var survivors []*redis.Client
	for _, n := range s.cluster.Nodes {
		if n != node {
			c := redis.NewClient(&redis.Options{Addr: n.Addr(), MaxRetries: -1})
			defer c.Close()
			survivors = append(survivors, c)
		}
	}
	promoted := func() bool {
		for _, c := range survivors {
			info, err := c.ClusterInfo(ctx).Result()
			if err != nil || !strings.Contains(info, "cluster_state:ok") {
				return false
			}
			shards, err := c.ClusterShards(ctx).Result()
			if err != nil {
				return false
			}
			var covered int64
			for _, sh := range shards {
				if len(sh.Slots) == 0 {
					continue
				}
				served := false
				for _, n := range sh.Nodes {
					addr := fmt.Sprintf("%s:%d", n.IP, n.Port)
					served = served || n.Role == "master" && n.Health == "online" && addr != dead
				}
				if !served {
					return false
				}
				for _, r := range sh.Slots {
					covered += r.End - r.Start + 1
				}
			}
			if covered != 16384 {
				return false
			}
		}
		return true
	}
	if err := within(time.Minute, promoted); err != nil {
		s.t.Fatalf("no replica took over from the killed primary %s within a minute", dead)
	}
	return dead, time.Since(start)
}

// TestRedisPrimaryFailover: a Redis Cluster primary holding part of the
// queue is killed with SIGKILL mid-run and its replica promoted. No
// accepted message is lost: jobs whose writes the asynchronous replication
// dropped are found by the reconciler's sweep from PostgreSQL, as after a
// FLUSHALL. The test measures the delivery stall: the longest time after
// the kill in which no message arrived.
func TestRedisPrimaryFailover(tt *testing.T) {
	t := track(tt)
	n := size(600, 6000)
	s := newStackWith(t, stackOptions{DataDelay: 20 * time.Millisecond, Cluster: true})
	srv := s.serve()
	prog, stopProg := s.watchProgress()
	defer stopProg()
	l := s.newLoad()
	posted := make(chan struct{})
	go func() { defer close(posted); l.run(n, 16, time.Time{}, nil) }()

	s.waitReceived(n/3, 2*time.Minute)
	// The primary of the first shard: its stream holds a sixth of the jobs.
	var killedAt time.Time
	inFlight := 0
	dead, takeover := s.killPrimary("mailferry:{q0}:ready", func() { killedAt, inFlight = time.Now(), s.inAttempt() })
	<-posted
	// The API takes mail again once the replica took over and the
	// servers' view of the slots caught up (reloaded every second): a
	// message answered 503 meanwhile is one its client sends again, as
	// this load does until n/3 are accepted (the first load's 503s fell in
	// the takeover).
	after := s.newLoad()
	wait.Within(t, 30*time.Second, "the API to accept mail again after the takeover", func() bool {
		if left := n/3 - after.status[http.StatusAccepted]; left > 0 {
			after.run(left, 8, time.Time{}, nil)
		}
		return after.status[http.StatusAccepted] >= n/3
	})
	accepted := append(l.sent(), after.sent()...)
	healed := s.waitFinal(ids(accepted), size(3*time.Minute, 6*time.Minute))
	stall := prog.stall(killedAt, time.Time{})
	lost, dups := s.tally(accepted)
	_, swept := srv.logLines("requeued jobs missing from redis", "jobs")
	_, restored := srv.logLines(restored, "jobs")
	t.Logf("primary %s killed after %d of %d messages arrived; replica promoted %v later; delivery stall %v; %d transactions in flight; %s; all final %v after the load; jobs requeued by the sweep %d, by a restore %d; lost %d, duplicates %d",
		dead, n/3, len(accepted), takeover.Round(10*time.Millisecond), stall.Round(10*time.Millisecond), inFlight, l.summary(),
		healed.Round(100*time.Millisecond), swept, restored, lost, dups)
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

// fleetPerDestination is MAILFERRY_WORKER_PER_DOMAIN in the fleet test:
// the fleet-wide limit of transactions to one destination.
const fleetPerDestination = 4

// TestFleet runs the deployment the scale-out guide describes: three
// `--roles api` and three `--roles worker` processes (and one scheduler)
// on one Redis Cluster and one PostgreSQL behind PgBouncer. Mid-run one worker is killed
// with SIGKILL and one Redis primary is killed. Every accepted message is
// delivered; the extra copies are at most the transactions in flight at
// the kills; no sink ever sees more transactions at once than the
// fleet-wide per-destination limit.
func TestFleet(tt *testing.T) {
	t := track(tt)
	n := size(900, 20000)
	s := newStackWith(t, stackOptions{DataDelay: 20 * time.Millisecond, Cluster: true})
	// Every serve process below goes through PgBouncer in transaction
	// pooling mode, as users deploy it; migrate and keys create above ran
	// direct, as an operator's would.
	s.appDB = testenv.PgBouncer(t, s.pg.URL)
	limits := fmt.Sprintf("MAILFERRY_WORKER_PER_DOMAIN=%d", fleetPerDestination)
	// The per-key limit stays off here (env()): TestFleetRateLimit checks
	// it across three API processes.
	apiEnv := []string{limits}
	port := func() int {
		p, err := devstack.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	var apis []string
	for range 3 {
		p := port()
		s.serveRoles(p, "api", apiEnv...)
		apis = append(apis, fmt.Sprintf("127.0.0.1:%d", p))
	}
	var workers []*server
	for range 3 {
		workers = append(workers, s.serveRoles(port(), "worker", limits))
	}
	sched := s.serveRoles(port(), "scheduler", limits)

	prog, stopProg := s.watchProgress()
	defer stopProg()
	l := s.newLoad()
	l.addrs = apis
	posted := make(chan struct{})
	go func() { defer close(posted); l.run(n, 24, time.Time{}, nil) }()

	s.waitReceived(n/4, 5*time.Minute)
	workers[0].kill9()
	workerKilledAt := time.Now()
	inFlight := s.inAttempt()
	s.waitReceived(n/2, 5*time.Minute)
	// The limit holds strictly until the primary is killed: the worker's
	// kill -9 leaves its leases in Redis until they lapse. The primary
	// killed is also the one holding the leases of d0 and d2 (slots 1959
	// and 448, with {q0}'s 3387): a lease granted just before the kill may
	// be missing on the replica that takes over, and its transaction runs
	// over the limit until it ends (relay/slots.go, renew). At most the
	// limit's worth of leases can be lost, so the fleet stays within twice
	// the limit while that lasts.
	peaks := func() (tx, conns int) {
		for _, k := range s.sinks {
			tx, conns = max(tx, k.PeakTransactions()), max(conns, k.PeakConnections())
		}
		return tx, conns
	}
	var primaryKilledAt time.Time
	var beforeTx, beforeConns int
	dead, takeover := s.killPrimary("mailferry:{q0}:ready", func() {
		primaryKilledAt, inFlight = time.Now(), inFlight+s.inAttempt()
		beforeTx, beforeConns = peaks()
		for _, k := range s.sinks {
			k.ResetPeaks()
		}
	})
	<-posted
	accepted := l.sent()
	healed := s.waitFinal(ids(accepted), size(4*time.Minute, 15*time.Minute))
	lost, dups := s.tally(accepted)
	_, swept := sched.logLines("requeued jobs missing from redis", "jobs")
	afterTx, afterConns := peaks()
	t.Logf("fleet of 3 api + 3 worker processes: %d accepted (%s); worker killed after %d arrived (stall %v), primary %s killed after %d (promoted in %v, stall %v); %d transactions in flight at the kills; all final %v after the load; sweep requeued %d jobs; lost %d, duplicates %d; peak per destination (limit %d): %d transactions, %d connections before the primary's kill, %d and %d after it",
		len(accepted), l.summary(), n/4, prog.stall(workerKilledAt, primaryKilledAt).Round(10*time.Millisecond), dead, n/2,
		takeover.Round(10*time.Millisecond), prog.stall(primaryKilledAt, time.Time{}).Round(10*time.Millisecond), inFlight,
		healed.Round(100*time.Millisecond), swept, lost, dups, fleetPerDestination, beforeTx, beforeConns, afterTx, afterConns)
	if lost != 0 {
		t.Errorf("%d accepted messages never arrived", lost)
	}
	if dups > inFlight {
		t.Errorf("%d duplicate deliveries, more than the %d transactions in flight at the kills", dups, inFlight)
	}
	// Idle pooled connections count too: the MX sees them (relay/slots.go).
	for _, c := range []struct {
		what        string
		peak, limit int
	}{
		{"transactions before the primary's kill", beforeTx, fleetPerDestination},
		{"connections before the primary's kill", beforeConns, fleetPerDestination},
		{"transactions after the primary's kill", afterTx, 2 * fleetPerDestination},
		{"connections after the primary's kill", afterConns, 2 * fleetPerDestination},
	} {
		if c.peak > c.limit {
			t.Errorf("a sink saw %d %s at once from the fleet, over %d (limit %d)", c.peak, c.what, c.limit, fleetPerDestination)
		}
	}
}

// TestFleetRateLimit: MAILFERRY_RATE_LIMIT holds for one key across three
// `--roles api` processes on the Redis Cluster: hammered for a few
// seconds with no pause for 429s, the fleet accepts the burst (twice the
// rate) plus the rate times the time, within 10%, not three times that.
func TestFleetRateLimit(tt *testing.T) {
	t := track(tt)
	const rate, window = 50, 4 * time.Second
	s := newStackWith(t, stackOptions{Cluster: true})
	var apis []string
	for range 3 {
		p, err := devstack.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		s.serveRoles(p, "api", fmt.Sprintf("MAILFERRY_RATE_LIMIT=%d", rate))
		apis = append(apis, fmt.Sprintf("127.0.0.1:%d", p))
	}
	var mu sync.Mutex
	status := map[int]int{}
	client := &http.Client{Timeout: 10 * time.Second}
	start := time.Now()
	var wg sync.WaitGroup
	for c := range 12 {
		wg.Go(func() {
			for i := 0; time.Since(start) < window; i++ {
				req, _ := http.NewRequest("POST", "http://"+apis[(c+i)%len(apis)]+"/v1/messages",
					strings.NewReader(body(c*100000+i, "", time.Time{})))
				req.Header.Set("Authorization", "Bearer "+s.key)
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				code := 0
				if err == nil {
					code = resp.StatusCode
					resp.Body.Close()
				}
				mu.Lock()
				status[code]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	want := 2*rate + rate*elapsed.Seconds()
	got := status[http.StatusAccepted]
	t.Logf("3 api processes, MAILFERRY_RATE_LIMIT=%d, hammered %v: answers %v; accepted %d, want %.0f ± 10%%", rate, elapsed.Round(10*time.Millisecond), status, got, want)
	if float64(got) < 0.9*want || float64(got) > 1.1*want {
		t.Errorf("the fleet accepted %d, want %.0f ± 10%%: the limit is not fleet-wide", got, want)
	}
	if status[http.StatusTooManyRequests] == 0 {
		t.Errorf("no 429: the load never reached the limit")
	}
}
