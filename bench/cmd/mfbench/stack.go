package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/internal/devstack"
)

// Names the benchmark publishes in its DNS. Everything resolves to
// 127.0.0.0/8: the benchmark never sends a packet off the machine.
const (
	senderDomain = "sender.bench.test"
	relayHost    = "relay.bench.test"
	sinkHost     = "mx%d.sink.bench.test"
	tarpitHost   = "tarpit.sink.bench.test"
	// oneDomain is S5's single recipient domain: its MX is the first sink
	// address, the one S5's smarthost variant dials too.
	oneDomain = "one.bench.test"
)

func healthyDomain(i int) string { return fmt.Sprintf("d%d.bench.test", i) }
func tarpitDomain(i int) string  { return fmt.Sprintf("t%d.bench.test", i) }

// stack is everything the benchmark runs besides Mailferry: Redis and
// PostgreSQL (internal/devstack), the DNS server and the sink MX.
type stack struct {
	cfg      *config
	dir      string
	redis    *devstack.Process
	pg       *devstack.Process
	rdb      *redis.Client
	redisPID int
	// cluster, once a scenario asked for it (useCluster), is a Redis
	// Cluster of 3 primaries and 3 replicas; while onCluster, runs use it.
	cluster   *devstack.RedisCluster
	crdb      *redis.ClusterClient
	onCluster bool
	pgPID     int
	pgURL     *url.URL
	dns       *dnsServer
	sink      *sink
	bin       string
	secret    string
	seq       int

	mu    sync.Mutex
	procs map[*mfProc]bool
}

func startStack(ctx context.Context, cfg *config, bin string) (*stack, error) {
	dir, err := os.MkdirTemp("", "mfbench-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	secret := make([]byte, 24)
	rand.Read(secret)
	s := &stack{cfg: cfg, dir: dir, bin: bin, secret: hex.EncodeToString(secret), procs: map[*mfProc]bool{}}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return nil, err
	}
	if s.redis, err = devstack.StartRedis(ctx, devstack.RedisOptions{Dir: filepath.Join(dir, "redis")}); err != nil {
		s.close()
		return nil, err
	}
	ropts, err := redis.ParseURL(s.redis.URL)
	if err != nil {
		s.close()
		return nil, err
	}
	s.rdb = redis.NewClient(ropts)
	info, err := s.rdb.Info(ctx, "server").Result()
	if err != nil {
		s.close()
		return nil, fmt.Errorf("redis info: %w", err)
	}
	s.redisPID, _ = strconv.Atoi(infoField(info, "process_id"))

	if s.pg, err = devstack.StartPostgres(ctx, devstack.PostgresOptions{Dir: filepath.Join(dir, "postgres"), Durable: cfg.Durable}); err != nil {
		s.close()
		return nil, err
	}
	if s.pgURL, err = url.Parse(s.pg.URL); err != nil {
		s.close()
		return nil, err
	}
	pidFile, err := os.ReadFile(filepath.Join(dir, "postgres", "data", "postmaster.pid"))
	if err != nil {
		s.close()
		return nil, fmt.Errorf("postgres pid: %w", err)
	}
	first, _, _ := strings.Cut(string(pidFile), "\n")
	s.pgPID, _ = strconv.Atoi(strings.TrimSpace(first))

	if s.dns, err = startDNS(); err != nil {
		s.close()
		return nil, err
	}
	var healthy []netip.Addr
	for i := range cfg.SinkAddrs {
		healthy = append(healthy, netip.AddrFrom4([4]byte{127, 0, 0, byte(2 + i)}))
	}
	tarpit := netip.AddrFrom4([4]byte{127, 0, 0, byte(2 + cfg.SinkAddrs)})
	if s.sink, err = startSink(sinkOptions{Healthy: healthy, Tarpit: tarpit, TarpitDelay: cfg.S4Delay}); err != nil {
		s.close()
		return nil, err
	}
	for i, a := range healthy {
		s.dns.a(fmt.Sprintf(sinkHost, i), a)
	}
	s.dns.a(tarpitHost, tarpit)
	s.dns.mx(oneDomain, fmt.Sprintf(sinkHost, 0))
	for i := range cfg.maxDomains() {
		s.dns.mx(healthyDomain(i), fmt.Sprintf(sinkHost, i%len(healthy)))
		s.dns.mx(tarpitDomain(i), tarpitHost)
	}
	return s, nil
}

func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

// redisUsedMemory is INFO memory's used_memory, in bytes: on the cluster,
// summed over its primaries.
func (s *stack) redisUsedMemory(ctx context.Context) (int64, error) {
	if s.onCluster {
		var mu sync.Mutex
		var sum int64
		err := s.crdb.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			info, err := c.Info(ctx, "memory").Result()
			if err != nil {
				return err
			}
			n, err := strconv.ParseInt(infoField(info, "used_memory"), 10, 64)
			mu.Lock()
			sum += n
			mu.Unlock()
			return err
		})
		return sum, err
	}
	info, err := s.rdb.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(infoField(info, "used_memory"), 10, 64)
}

// clusterShards is MAILFERRY_QUEUE_SHARDS on the cluster: two per primary.
const clusterShards = 6

// useCluster makes the following runs use a Redis Cluster, started on
// first use, or (on false) the single Redis again.
func (s *stack) useCluster(ctx context.Context, on bool) error {
	if on && s.cluster == nil {
		c, err := devstack.StartRedisCluster(ctx, devstack.ClusterOptions{Dir: filepath.Join(s.dir, "cluster")})
		if err != nil {
			return err
		}
		s.cluster = c
		o, err := redis.ParseClusterURL(c.URL)
		if err != nil {
			return err
		}
		s.crdb = redis.NewClusterClient(o)
	}
	s.onCluster = on
	return nil
}

// flush empties the Redis the runs use.
func (s *stack) flush(ctx context.Context) error {
	if s.onCluster {
		return s.crdb.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return c.FlushAll(ctx).Err() })
	}
	return s.rdb.FlushAll(ctx).Err()
}

func (s *stack) close() {
	s.mu.Lock()
	for p := range s.procs {
		p.stop(2 * time.Second)
	}
	s.mu.Unlock()
	if s.sink != nil {
		s.sink.close()
	}
	if s.dns != nil {
		s.dns.close()
	}
	if s.rdb != nil {
		s.rdb.Close()
	}
	if s.crdb != nil {
		s.crdb.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, p := range []*devstack.Process{s.pg, s.redis} {
		if p != nil {
			if err := p.Stop(ctx); err != nil {
				fmt.Fprintln(os.Stderr, "mfbench:", err)
			}
		}
	}
	if err := s.cluster.Stop(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "mfbench:", err)
	}
	if !s.cfg.Keep {
		os.RemoveAll(s.dir)
	} else {
		fmt.Fprintln(os.Stderr, "mfbench: kept", s.dir)
	}
}

// run is one measurement's fresh state: an empty Redis, a new database,
// an API key and a DKIM key published in DNS (none when the algorithm is
// "": mail then goes out unsigned, as the 202 warns).
type run struct {
	name   string
	db     string
	dbURL  string
	apiKey string
}

func (s *stack) newRun(ctx context.Context, name, algorithm string) (*run, error) {
	s.seq++
	r := &run{name: fmt.Sprintf("%02d-%s", s.seq, name), db: fmt.Sprintf("bench_%d", s.seq)}
	u := *s.pgURL
	u.Path = "/" + r.db
	r.dbURL = u.String()
	if err := s.flush(ctx); err != nil {
		return nil, fmt.Errorf("flush redis: %w", err)
	}
	if err := s.admin(ctx, "CREATE DATABASE "+r.db); err != nil {
		return nil, err
	}
	if _, err := s.cli(ctx, r, "migrate"); err != nil {
		return nil, err
	}
	key, err := s.cli(ctx, r, "keys", "create", "--tenant", "bench", "--domain", senderDomain)
	if err != nil {
		return nil, err
	}
	r.apiKey = strings.TrimSpace(string(key))
	if algorithm == "" {
		return r, nil
	}
	out, err := s.cli(ctx, r, "dkim", "keygen", "--domain", senderDomain, "--selector", fmt.Sprintf("s%d", s.seq), "--algorithm", algorithm, "--json")
	if err != nil {
		return nil, err
	}
	var rec struct {
		DNSName  string `json:"dns_name"`
		DNSValue string `json:"dns_value"`
	}
	if err := json.Unmarshal(out, &rec); err != nil {
		return nil, fmt.Errorf("dkim keygen output %q: %w", out, err)
	}
	var parts []string
	for v := rec.DNSValue; v != ""; {
		n := min(len(v), 255) // RFC 1035 3.3.14: at most 255 bytes per string
		parts = append(parts, v[:n])
		v = v[n:]
	}
	s.dns.setTXT(rec.DNSName, parts)
	return r, nil
}

func (s *stack) endRun(r *run) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.admin(ctx, "DROP DATABASE IF EXISTS "+r.db+" WITH (FORCE)"); err != nil {
		fmt.Fprintln(os.Stderr, "mfbench:", err)
	}
}

// postgresVersion is SHOW server_version, or "" on error.
func (s *stack) postgresVersion(ctx context.Context) string {
	u := *s.pgURL
	u.Path = "/postgres"
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		return ""
	}
	defer conn.Close(ctx)
	var v string
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&v); err != nil {
		return ""
	}
	return v
}

// pgStats are a database's counters from pg_stat_database.
type pgStats struct {
	Commits, Inserted, Updated, Deleted float64
}

// dbStats reads the run database's counters. PostgreSQL publishes a
// backend's counts at the end of its transactions (at most once a second)
// and when it exits, so read them after the processes that did the work
// have stopped.
func (s *stack) dbStats(ctx context.Context, r *run) (pgStats, error) {
	u := *s.pgURL
	u.Path = "/postgres"
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		return pgStats{}, err
	}
	defer conn.Close(ctx)
	var st pgStats
	var c, i, up, d int64
	err = conn.QueryRow(ctx, `SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database WHERE datname = $1`, r.db).Scan(&c, &i, &up, &d)
	st = pgStats{float64(c), float64(i), float64(up), float64(d)}
	return st, err
}

func (a pgStats) sub(b pgStats) pgStats {
	return pgStats{a.Commits - b.Commits, a.Inserted - b.Inserted, a.Updated - b.Updated, a.Deleted - b.Deleted}
}

// admin runs one statement on the maintenance database.
func (s *stack) admin(ctx context.Context, sql string) error {
	u := *s.pgURL
	u.Path = "/postgres"
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// env is the whole environment of a mailferry process: nothing is
// inherited but PATH and HOME, so no MAILFERRY_ variable of the caller
// changes what is measured.
func (s *stack) env(r *run, httpAddr string) []string {
	redisEnv := []string{"MAILFERRY_REDIS_URL=" + s.redis.URL}
	if s.onCluster {
		redisEnv = []string{"MAILFERRY_REDIS_MODE=cluster", "MAILFERRY_REDIS_URL=" + s.cluster.URL,
			"MAILFERRY_QUEUE_SHARDS=" + strconv.Itoa(clusterShards)}
	}
	return append(redisEnv,
		"PATH="+os.Getenv("PATH"),
		"HOME="+os.Getenv("HOME"),
		"MAILFERRY_HTTP_ADDR="+httpAddr,
		"MAILFERRY_DATABASE_URL="+r.dbURL,
		"MAILFERRY_HOSTNAME="+relayHost,
		"MAILFERRY_DNS_SERVER="+s.dns.addr,
		"MAILFERRY_SMTP_PORT="+strconv.Itoa(s.sink.port),
		"MAILFERRY_ALLOW_PRIVATE_DESTINATIONS=true",
		"MAILFERRY_SUBMISSION_ADDR=",
		"MAILFERRY_SUBMISSIONS_ADDR=",
		"MAILFERRY_SECRET_KEY="+s.secret,
		"MAILFERRY_LOG_LEVEL="+s.cfg.LogLevel,
		// The load generator is one API key sending as fast as it can;
		// the per-key limit would measure itself.
		"MAILFERRY_RATE_LIMIT=0",
	)
}

// cli runs a mailferry command against the run's database and returns its
// standard output.
func (s *stack) cli(ctx context.Context, r *run, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, s.bin, args...)
	cmd.Env = s.env(r, "127.0.0.1:0")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("mailferry %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// mfProc is one running `mailferry serve`.
type mfProc struct {
	roles   string
	cmd     *exec.Cmd
	addr    string // HTTP
	pprof   string // pprof listener, when the binary has one
	logPath string
	done    chan struct{}
	once    sync.Once
}

func (p *mfProc) pid() int { return p.cmd.Process.Pid }

// startMailferry starts `mailferry serve --roles roles`; extra
// environment entries override the run's.
func (s *stack) startMailferry(ctx context.Context, r *run, roles string, extra ...string) (*mfProc, error) {
	port, err := devstack.FreePort()
	if err != nil {
		return nil, err
	}
	p := &mfProc{
		roles:   roles,
		addr:    fmt.Sprintf("127.0.0.1:%d", port),
		logPath: filepath.Join(s.dir, "logs", r.name+"-"+strings.ReplaceAll(roles, ",", "+")+".log"),
		done:    make(chan struct{}),
	}
	p.cmd = exec.Command(s.bin, "serve", "--roles", roles)
	p.cmd.Env = append(s.env(r, p.addr), extra...)
	if s.cfg.Pprof {
		pp, err := devstack.FreePort()
		if err != nil {
			return nil, err
		}
		p.pprof = fmt.Sprintf("127.0.0.1:%d", pp)
		p.cmd.Env = append(p.cmd.Env, pprofEnv+"="+p.pprof)
	}
	logf, err := os.Create(p.logPath)
	if err != nil {
		return nil, err
	}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start mailferry serve --roles %s: %w", roles, err)
	}
	logf.Close()
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	s.mu.Lock()
	s.procs[p] = true
	s.mu.Unlock()
	if err := p.waitReady(ctx); err != nil {
		s.stopMailferry(p, time.Second)
		return nil, err
	}
	return p, nil
}

func (p *mfProc) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	c := &http.Client{Timeout: time.Second}
	for {
		resp, err := c.Get("http://" + p.addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.done:
			return fmt.Errorf("mailferry serve --roles %s exited at start: %s", p.roles, tailFile(p.logPath, 5))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("mailferry serve --roles %s not ready in 30s: %s", p.roles, tailFile(p.logPath, 5))
		}
	}
}

// stopMailferry sends SIGTERM, and SIGKILL after grace.
func (s *stack) stopMailferry(p *mfProc, grace time.Duration) {
	p.stop(grace)
	s.mu.Lock()
	delete(s.procs, p)
	s.mu.Unlock()
}

func (p *mfProc) stop(grace time.Duration) {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// histogramMean scrapes p's /metrics and returns sum/count of an
// unlabelled histogram; 0 when it is missing or empty.
func (p *mfProc) histogramMean(name string) float64 {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + p.addr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var sum, count float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		switch k {
		case name + "_sum":
			sum, _ = strconv.ParseFloat(v, 64)
		case name + "_count":
			count, _ = strconv.ParseFloat(v, 64)
		}
	}
	return ratio(sum, count)
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// cpuSnapshot is the CPU seconds used so far by each party.
type cpuSnapshot struct {
	at        time.Time
	mailferry map[int]float64
	redis     float64
	postgres  float64
	bench     float64
	machine   float64 // every process on the machine
}

func (s *stack) cpu(procs ...*mfProc) cpuSnapshot {
	c := cpuSnapshot{at: time.Now(), mailferry: map[int]float64{}}
	for _, p := range procs {
		if p != nil {
			c.mailferry[p.pid()] = cpuSeconds(p.pid())
		}
	}
	c.redis = cpuSeconds(s.redisPID)
	c.postgres = treeCPUSeconds(s.pgPID)
	c.bench = cpuSeconds(os.Getpid())
	c.machine = machineBusy()
	return c
}

// cpuUse is CPU seconds spent between two snapshots.
type cpuUse struct {
	Mailferry, Redis, Postgres, Bench float64
	// Other is what the rest of the machine used: other people's work on
	// a shared machine, which the numbers do not account for.
	Other float64
	Wall  time.Duration
}

// otherCores is Other as a number of busy cores.
func (u cpuUse) otherCores() float64 { return ratio(u.Other, u.Wall.Seconds()) }

// total is the relay's CPU: Mailferry, Redis and PostgreSQL. The bench
// process (load generator, DNS, sink) stands for the rest of the world.
func (u cpuUse) total() float64 { return u.Mailferry + u.Redis + u.Postgres }

func since(a, b cpuSnapshot) cpuUse {
	u := cpuUse{Redis: b.redis - a.redis, Postgres: b.postgres - a.postgres, Bench: b.bench - a.bench, Wall: b.at.Sub(a.at)}
	for pid, v := range b.mailferry {
		u.Mailferry += v - a.mailferry[pid] // a process started after a counts from 0
	}
	u.Other = max(b.machine-a.machine-u.total()-u.Bench, 0)
	return u
}

// waitQuiet waits, up to cfg.QuietWait, until the rest of the machine uses
// less than cfg.QuietCores for a second: on a shared machine other work
// takes cores the benchmark means to measure. It reports the foreign load
// it last saw.
func (s *stack) waitQuiet(ctx context.Context) (float64, bool) {
	deadline := time.Now().Add(s.cfg.QuietWait)
	for {
		a := s.cpu()
		select {
		case <-ctx.Done():
			return 0, false
		case <-time.After(time.Second):
		}
		other := since(a, s.cpu()).otherCores()
		if other < s.cfg.QuietCores {
			return other, true
		}
		if time.Now().After(deadline) {
			return other, false
		}
	}
}
