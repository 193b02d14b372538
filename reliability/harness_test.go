package reliability

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/internal/devstack"
	"github.com/mailferry/mailferry/internal/redisconn"
	"github.com/mailferry/mailferry/internal/testmx"
)

// bin is the mailferry binary TestMain builds once for every test.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mailferry-reliability-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "mailferry")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/mailferry/mailferry/cmd/mailferry").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build mailferry: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// tracked is a test that keeps its failure messages and says them again
// after every cleanup: the cleanups dump the servers' logs, and a reader
// of the output's end must still see why the test failed.
type tracked struct {
	*testing.T
	mu       sync.Mutex
	failures []string
}

// track wraps t; call it first, so its cleanup runs last.
func track(t *testing.T) *tracked {
	r := &tracked{T: t}
	t.Cleanup(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if t.Failed() && len(r.failures) > 0 {
			t.Logf("%s failed:\n\t%s", t.Name(), strings.Join(r.failures, "\n\t"))
		}
	})
	return r
}

func (r *tracked) note(msg string) {
	r.mu.Lock()
	r.failures = append(r.failures, msg)
	r.mu.Unlock()
}

func (r *tracked) Errorf(format string, args ...any) {
	r.T.Helper()
	r.note(fmt.Sprintf(format, args...))
	r.T.Errorf(format, args...)
}

func (r *tracked) Error(args ...any) {
	r.T.Helper()
	r.note(fmt.Sprint(args...))
	r.T.Error(args...)
}

func (r *tracked) Fatalf(format string, args ...any) {
	r.T.Helper()
	r.note(fmt.Sprintf(format, args...))
	r.T.Fatalf(format, args...)
}

func (r *tracked) Fatal(args ...any) {
	r.T.Helper()
	r.note(fmt.Sprint(args...))
	r.T.Fatal(args...)
}

// full says whether to run the full sizes (MAILFERRY_RELIABILITY=1).
func full() bool { return os.Getenv("MAILFERRY_RELIABILITY") == "1" }

// size is small in a plain `go test`, large under MAILFERRY_RELIABILITY=1.
func size[T any](small, large T) T {
	if full() {
		return large
	}
	return small
}

// Timings of the binary under test, short so faults heal within seconds.
const (
	visibility = 3 * time.Second // MAILFERRY_VISIBILITY_TIMEOUT
	reconcile  = 2 * time.Second // MAILFERRY_RECONCILE_INTERVAL
)

// domains is how many recipient domains, each with its own MX (a sink);
// with 8 transactions per domain they keep the default 32 workers busy.
const domains = 4

// slowDomain's MX holds every message 4s before answering its data: longer
// than the first retry delay (1s), so a second copy of a job comes due
// while the first is still in its SMTP transaction.
const (
	slowDomain = "slow.example"
	slowDelay  = 4 * time.Second
)

// stack is one test's world: Redis and PostgreSQL it can break, DNS and
// SMTP sinks on loopback, and the mailferry binary pointed at them.
type stack struct {
	t                 *tracked
	dir               string
	redis, pg         *devstack.Process
	redisPort, pgPort int
	redisDir, pgDir   string
	rdb               redis.UniversalClient
	// cluster, if set, is the Redis the binary uses (MAILFERRY_REDIS_MODE=
	// cluster) instead of redis, which then stays unused.
	cluster *devstack.RedisCluster
	// appDB, if set, is the database URL the binary gets instead of pg's:
	// the place a connection pooler in front of PostgreSQL plugs in.
	appDB              string
	db                 *pgxpool.Pool // direct SQL, to read the ledger as it is
	dns                *testmx.DNS
	sinks              []*testmx.SMTP // the last is slowDomain's
	smtpPort, httpPort int
	key                string // API key for example.com
	serves             int    // serve processes started so far
	// next numbers messages over every load of the test, so each goes to
	// a recipient of its own (u<i>@d<i%4>.example).
	next atomic.Int64
}

func newStack(t *tracked, dataDelay time.Duration) *stack {
	t.Helper()
	return newStackWith(t, stackOptions{DataDelay: dataDelay})
}

// stackOptions shape a stack beyond newStack's.
type stackOptions struct {
	DataDelay time.Duration // each sink holds its reply to DATA this long
	// Cluster runs the binary on a Redis Cluster of 3 primaries and 3
	// replicas of the test's own (it may kill them), the queue in
	// clusterShards shards.
	Cluster bool
}

// clusterShards spreads the queue over the cluster's primaries, two
// shards each.
const clusterShards = 6

func newStackWith(t *tracked, opts stackOptions) *stack {
	t.Helper()
	dataDelay := opts.DataDelay
	s := &stack{t: t, dir: t.TempDir()}
	s.redisDir, s.pgDir = filepath.Join(s.dir, "redis"), filepath.Join(s.dir, "postgres")
	var err error
	for _, p := range []*int{&s.redisPort, &s.pgPort, &s.httpPort} {
		if *p, err = devstack.FreePort(); err != nil {
			t.Fatal(err)
		}
	}
	if opts.Cluster {
		c, err := devstack.StartRedisCluster(context.Background(), devstack.ClusterOptions{Dir: filepath.Join(s.dir, "cluster")})
		if err != nil {
			t.Fatalf("start redis cluster: %v", err)
		}
		s.cluster = c
	} else {
		s.startRedis()
	}
	s.startPostgres()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = s.redis.Stop(ctx)
		_ = s.cluster.Stop(ctx)
		_ = s.pg.Stop(ctx)
	})
	mode, url := redisconn.Single, ""
	if s.cluster != nil {
		mode, url = redisconn.Cluster, s.cluster.URL
	} else {
		url = s.redis.URL
	}
	if s.rdb, err = redisconn.Open(mode, url, redisconn.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.rdb.Close() })
	s.db, err = pgxpool.New(context.Background(), s.pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.db.Close)

	s.dns = testmx.StartDNS(t)
	ips := make([]string, domains+1)
	for i := range ips {
		ips[i] = fmt.Sprintf("127.0.0.%d", i+2)
	}
	port, lns := testmx.Listen(t, ips...)
	s.smtpPort = port
	for i, ln := range lns {
		d, delay := fmt.Sprintf("d%d.example", i), dataDelay
		if i == domains {
			d, delay = slowDomain, slowDelay
		}
		s.dns.MX(d, 10, "mx."+d)
		s.dns.A("mx."+d, ips[i])
		s.sinks = append(s.sinks, testmx.StartSMTP(t, ln, testmx.SMTPOptions{DataDelay: delay}))
	}

	if _, stderr, err := s.run("migrate"); err != nil {
		t.Fatalf("migrate: %v\n%s", err, stderr)
	}
	out, stderr, err := s.run("keys", "create", "--tenant", "acme", "--domain", "example.com")
	if err != nil {
		t.Fatalf("keys create: %v\n%s", err, stderr)
	}
	s.key = strings.TrimSpace(out)
	return s
}

func (s *stack) startRedis() {
	s.t.Helper()
	p, err := devstack.StartRedis(context.Background(), devstack.RedisOptions{Dir: s.redisDir, Port: s.redisPort})
	if err != nil {
		s.t.Fatalf("start redis: %v", err)
	}
	s.redis = p
}

// stopRedis stops Redis; it keeps no data (no persistence), so starting it
// again is a Redis that lost everything.
func (s *stack) stopRedis() {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.redis.Stop(ctx); err != nil {
		s.t.Fatalf("stop redis: %v", err)
	}
}

func (s *stack) startPostgres() {
	s.t.Helper()
	p, err := devstack.StartPostgres(context.Background(), devstack.PostgresOptions{Dir: s.pgDir, Port: s.pgPort})
	if err != nil {
		s.t.Fatalf("start postgres: %v", err)
	}
	s.pg = p
}

// stopPostgres is a fast shutdown: sessions are cut, committed data kept.
func (s *stack) stopPostgres() {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.pg.Stop(ctx); err != nil {
		s.t.Fatalf("stop postgres: %v", err)
	}
}

func (s *stack) env() []string {
	db := s.pg.URL
	var poolerEnv []string
	if s.appDB != "" {
		// Behind PgBouncer in transaction pooling mode; LISTEN goes direct.
		db = s.appDB
		poolerEnv = []string{"MAILFERRY_DATABASE_POOLER=pgbouncer", "MAILFERRY_DATABASE_DIRECT_URL=" + s.pg.URL}
	}
	var redisEnv []string
	if s.cluster == nil {
		redisEnv = []string{"MAILFERRY_REDIS_URL=" + s.redis.URL}
	} else {
		redisEnv = []string{"MAILFERRY_REDIS_MODE=cluster", "MAILFERRY_REDIS_URL=" + s.cluster.URL,
			"MAILFERRY_QUEUE_SHARDS=" + strconv.Itoa(clusterShards)}
	}
	redisEnv = append(redisEnv, poolerEnv...)
	return append(redisEnv,
		"PATH="+os.Getenv("PATH"),
		"MAILFERRY_DATABASE_URL="+db,
		"MAILFERRY_HOSTNAME=relay.test",
		"MAILFERRY_DNS_SERVER="+s.dns.Addr(),
		"MAILFERRY_SMTP_PORT="+strconv.Itoa(s.smtpPort),
		"MAILFERRY_ALLOW_PRIVATE_DESTINATIONS=true",
		"MAILFERRY_SUBMISSION_ADDR=",
		"MAILFERRY_SUBMISSIONS_ADDR=",
		"MAILFERRY_HTTP_ADDR="+s.addr(),
		"MAILFERRY_RETRY_SCHEDULE=1s",
		"MAILFERRY_VISIBILITY_TIMEOUT="+visibility.String(),
		"MAILFERRY_RECONCILE_INTERVAL="+reconcile.String(),
		// The per-key rate limit is not the fault under test, and would
		// make the loads take minutes.
		"MAILFERRY_RATE_LIMIT=0",
	)
}

func (s *stack) addr() string { return fmt.Sprintf("127.0.0.1:%d", s.httpPort) }

// run runs a mailferry command to its end.
func (s *stack) run(args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = s.env()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// server is one `mailferry serve` process.
type server struct {
	t       *tracked
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // valid once done is closed
}

// serve starts `mailferry serve` with every role and waits until it is
// ready. Its log goes to a file, shown if the test fails.
func (s *stack) serve() *server {
	s.t.Helper()
	return s.serveOn(s.httpPort)
}

// serveOn is serve with the HTTP listener on port (a second process needs
// its own) and extra environment, which overrides env()'s.
func (s *stack) serveOn(port int, extraEnv ...string) *server {
	s.t.Helper()
	return s.serveRoles(port, "", extraEnv...)
}

// serveRoles is serveOn running only roles ("": the default, every role).
func (s *stack) serveRoles(port int, roles string, extraEnv ...string) *server {
	s.t.Helper()
	s.serves++
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	logPath := filepath.Join(s.dir, fmt.Sprintf("serve-%d.log", s.serves))
	logFile, err := os.Create(logPath)
	if err != nil {
		s.t.Fatal(err)
	}
	args := []string{"serve"}
	if roles != "" {
		args = append(args, "--roles", roles)
	}
	cmd := exec.Command(bin, args...)
	// exec keeps the last of duplicate variables.
	cmd.Env = append(append(s.env(), "MAILFERRY_HTTP_ADDR="+addr), extraEnv...)
	cmd.Stdout, cmd.Stderr = io.Discard, logFile
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	logFile.Close()
	srv := &server{t: s.t, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() { srv.err = cmd.Wait(); close(srv.done) }()
	s.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-srv.done
		if s.t.Failed() {
			s.t.Logf("%s (last warnings and errors):\n%s", filepath.Base(logPath), srv.notable(15))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return srv
			}
		}
		select {
		case <-srv.done:
			s.t.Fatalf("serve exited at start: %v\n%s", srv.err, srv.tail(30))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("serve not ready after 30s: %v\n%s", err, srv.tail(30))
		}
	}
}

// kill9 kills the process with SIGKILL: no shutdown code runs.
func (srv *server) kill9() {
	srv.t.Helper()
	if err := srv.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		srv.t.Fatal(err)
	}
	<-srv.done
}

// sigterm asks for a graceful stop and returns how long it took and how
// the process exited.
func (srv *server) sigterm(limit time.Duration) (time.Duration, error) {
	srv.t.Helper()
	start := time.Now()
	if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		srv.t.Fatal(err)
	}
	select {
	case <-srv.done:
		return time.Since(start), srv.err
	case <-time.After(limit):
		srv.t.Fatalf("serve still running %v after SIGTERM\n%s", limit, srv.tail(30))
		return 0, nil
	}
}

// logLines counts the log lines whose "msg" is msg, and sums their
// integer attribute attr ("" for none).
func (srv *server) logLines(msg, attr string) (lines, sum int) {
	f, err := os.Open(srv.logPath)
	if err != nil {
		srv.t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec["msg"] != msg {
			continue
		}
		lines++
		if v, ok := rec[attr].(float64); ok {
			sum += int(v)
		}
	}
	return lines, sum
}

// notable is the last n lines of the log that are not INFO: after a
// failure, a fleet's accept and delivery lines would bury the test's own
// message under hundreds of lines.
func (srv *server) notable(n int) string {
	b, _ := os.ReadFile(srv.logPath)
	var keep []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if !strings.Contains(line, `"level":"INFO"`) && !strings.Contains(line, `"level":"DEBUG"`) {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep[max(0, len(keep)-n):], "\n")
}

func (srv *server) tail(n int) string {
	b, _ := os.ReadFile(srv.logPath)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// sent is a message the API accepted (202).
type sent struct {
	ID        string // API id
	MessageID string // RFC 5322 Message-ID, as the sinks see it
}

// load is a client population posting messages: each POST is one message
// to one recipient, the domains taken in turn.
type load struct {
	s        *stack
	domain   string // "": the domains d0…d3 in turn
	client   *http.Client
	mu       sync.Mutex
	accepted []sent
	status   map[int]int // HTTP status → count, 202 included
	errors   int         // requests with no answer (connection refused, reset)
	// addrs, if set, are API processes taken in turn instead of the
	// stack's one.
	addrs []string
}

func (s *stack) newLoad() *load {
	return &load{s: s, status: map[int]int{}, client: &http.Client{Timeout: 15 * time.Second}}
}

// body gives message i: to u<i>@d<i%4>.example (or u<i>@domain), sent
// at once or at sendAt.
func body(i int, domain string, sendAt time.Time) string {
	if domain == "" {
		domain = fmt.Sprintf("d%d.example", i%domains)
	}
	b := fmt.Sprintf(`{"from":"Alice <alice@example.com>","to":["u%d@%s"],"subject":"m%d","text":"message %d"`, i, domain, i, i)
	if !sendAt.IsZero() {
		b += `,"send_at":"` + sendAt.UTC().Format(time.RFC3339Nano) + `"`
	}
	return b + "}"
}

// post sends one message and records the answer. A 429 is waited out and
// retried: a rate limit is not the fault under test.
func (l *load) post(sendAt time.Time) (int, error) {
	i := int(l.s.next.Add(1))
	addr := l.s.addr()
	if len(l.addrs) > 0 {
		addr = l.addrs[i%len(l.addrs)]
	}
	for {
		req, _ := http.NewRequest("POST", "http://"+addr+"/v1/messages", strings.NewReader(body(i, l.domain, sendAt)))
		req.Header.Set("Authorization", "Bearer "+l.s.key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := l.client.Do(req)
		if err != nil {
			l.mu.Lock()
			l.errors++
			l.mu.Unlock()
			return 0, err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusTooManyRequests {
			wait, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
			time.Sleep(time.Duration(max(wait, 1)) * time.Second)
			continue
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		l.status[resp.StatusCode]++
		if resp.StatusCode == http.StatusAccepted {
			var a struct {
				ID        string `json:"id"`
				MessageID string `json:"message_id"`
			}
			if err := json.Unmarshal(b, &a); err != nil || a.ID == "" || a.MessageID == "" {
				l.s.t.Errorf("202 answer %s: %v", b, err)
			}
			l.accepted = append(l.accepted, sent{a.ID, a.MessageID})
		}
		return resp.StatusCode, nil
	}
}

// run posts n messages from workers clients at once and returns when all
// are answered, or when every client has met a connection error (the
// server went away) or stop is closed.
func (l *load) run(n, workers int, sendAt time.Time, stop <-chan struct{}) {
	var wg sync.WaitGroup
	var left atomic.Int64
	left.Store(int64(n))
	for range workers {
		wg.Go(func() {
			for left.Add(-1) >= 0 {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := l.post(sendAt); err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
}

func (l *load) sent() []sent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]sent(nil), l.accepted...)
}

func (l *load) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprintf("answers %v, %d without answer", l.status, l.errors)
}

func ids(ms []sent) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

// greylist makes the sinks answer 451 to the first RCPT of every
// every-th message among the next n.
func (s *stack) greylist(n, every int) {
	first := int(s.next.Load()) + 1
	for i := first; i < first+n; i++ {
		if i%every == 0 {
			s.sinks[i%domains].OnRcpt(fmt.Sprintf("u%d@d%d.example", i, i%domains), "451 4.7.1 greylisted, try again later")
		}
	}
}

// received counts the messages all sinks have accepted.
func (s *stack) received() int {
	n := 0
	for _, k := range s.sinks {
		n += len(k.Messages())
	}
	return n
}

var messageIDHeader = regexp.MustCompile(`(?im)^Message-ID:[ \t]*<([^>\r\n]+)>`)

// copies counts, per Message-ID, the messages the sinks accepted.
func (s *stack) copies() map[string]int {
	s.t.Helper()
	out := map[string]int{}
	for _, k := range s.sinks {
		for _, m := range k.Messages() {
			match := messageIDHeader.FindSubmatch(m.Data)
			if match == nil {
				s.t.Errorf("a sink received a message without a Message-ID:\n%.300s", m.Data)
				continue
			}
			out[string(match[1])]++
		}
	}
	return out
}

// waitReceived waits until the sinks hold at least n messages.
func (s *stack) waitReceived(n int, timeout time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for s.received() < n {
		if time.Now().After(deadline) {
			s.t.Fatalf("sinks hold %d messages after %v, want %d", s.received(), timeout, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pending counts the recipients of these messages not yet final.
func (s *stack) pending(ids []string) (int, error) {
	var n int
	err := s.db.QueryRow(context.Background(),
		`SELECT count(*) FROM recipients WHERE message_id = ANY($1::uuid[]) AND status IN ('queued', 'deferred')`, ids).Scan(&n)
	return n, err
}

// waitFinal waits until every recipient of these messages is final and
// returns how long that took.
func (s *stack) waitFinal(ids []string, timeout time.Duration) time.Duration {
	s.t.Helper()
	start := time.Now()
	for {
		n, err := s.pending(ids)
		if err == nil && n == 0 {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			s.t.Fatalf("%d recipients of %d accepted messages still pending after %v (last error %v)", n, len(ids), timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ledgerCount runs a count query.
func (s *stack) ledgerCount(sql string, args ...any) int {
	s.t.Helper()
	var n int
	if err := s.db.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		s.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// pendingJobs counts (message, domain) pairs with recipients to deliver:
// the jobs the queue must hold.
func (s *stack) pendingJobs() int {
	return s.ledgerCount(`SELECT count(*) FROM (SELECT DISTINCT message_id, domain FROM recipients WHERE status IN ('queued', 'deferred')) j`)
}

// inAttempt counts (message, domain) pairs with an attempt begun (the
// recipients leased before dialling) and its outcome not recorded: the SMTP
// transactions in flight, if counted right after their process died.
func (s *stack) inAttempt() int {
	return s.ledgerCount(`SELECT count(*) FROM (SELECT DISTINCT message_id, domain FROM recipients
WHERE lease_owner IS NOT NULL AND status IN ('queued', 'deferred')) j`)
}

// tally checks the sinks against the accepted messages: it returns how many
// accepted messages never arrived and how many extra copies arrived (of
// any message), and fails the test unless every accepted message is
// delivered in the ledger.
func (s *stack) tally(accepted []sent) (lost, duplicates int) {
	s.t.Helper()
	got := s.copies()
	for _, m := range accepted {
		if got[m.MessageID] == 0 {
			lost++
		}
	}
	for _, c := range got {
		duplicates += c - 1
	}
	if n := s.ledgerCount(`SELECT count(*) FROM recipients WHERE message_id = ANY($1::uuid[]) AND status = 'delivered'`, ids(accepted)); n != len(accepted) {
		s.t.Errorf("%d of %d accepted messages delivered in the ledger", n, len(accepted))
	}
	return lost, duplicates
}

// expect fails the test unless the status (0: no answer) is one of want.
func expect(t *tracked, what string, status int, err error, want ...int) {
	t.Helper()
	for _, w := range want {
		if status == w {
			return
		}
	}
	t.Errorf("%s: status %d (%v), want one of %v", what, status, err, want)
}

// get fetches a path and returns the status, 0 with the error if none.
func (s *stack) get(path string) (int, error) {
	req, _ := http.NewRequest("GET", "http://"+s.addr()+path, nil)
	req.Header.Set("Authorization", "Bearer "+s.key)
	resp, err := (&http.Client{Timeout: 15 * time.Second}).Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

var errTimeout = errors.New("timed out")

// within polls cond every 50ms until it holds or limit passes.
func within(limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return errTimeout
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}
