package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/mailferry/mailferry/dkim"
)

// s1 measures accept: the API alone (no workers), 64 keep-alive clients
// posting a 4 KB text message with one recipient, against a trivial chi
// handler driven by the same generator in the same run.
func (b *bench) s1(ctx context.Context) *scenarioResult {
	cfg := b.cfg
	res := newScenario("s1", fmt.Sprintf("S1 accept: 4 KB text, 1 recipient, %d keep-alive clients, %s per run (after %s warm-up), `serve --roles api,scheduler`",
		cfg.Clients, cfg.S1Duration, cfg.S1Warmup),
		metric{"rate", "accepted", "msgs/s", 0},
		metric{"p50", "latency p50", "ms", 2},
		metric{"p95", "latency p95", "ms", 2},
		metric{"p99", "latency p99", "ms", 2},
		metric{"errors", "errors", "", 0},
		metric{"ceiling", "ceiling: trivial chi handler", "msgs/s", 0},
		metric{"ceiling_p99", "ceiling latency p99", "ms", 2},
		metric{"ratio", "share of ceiling", "%", 1},
		metric{"hwm", "mailferry RSS peak (VmHWM)", "MiB", 0},
		metric{"rss", "mailferry RSS at end (VmRSS)", "MiB", 0},
		metric{"batch", "messages per PostgreSQL accept transaction (mean, mailferry_accept_batch_size)", "", 1},
		metric{"cpu_ms", "CPU per accepted message (mailferry+redis+postgres)", "ms", 3},
		metric{"cpu_mf_ms", "… of which mailferry", "ms", 3},
		metric{"cpu_pg_ms", "… of which postgres", "ms", 3},
		metric{"cpu_redis_ms", "… of which redis", "ms", 3},
		metric{"cpu_bench_ms", "bench CPU per message (load generator; not counted above)", "ms", 3},
		metric{"busy", "share of the machine's CPU used by mailferry, redis, postgres and the bench", "%", 0},
		otherMetric,
	)
	bodies := requestBodies(domains(cfg.S2Domains, 0), 4096)
	body := func(i int) []byte { return bodies[i%len(bodies)] }
	trivialURL, stopTrivial, err := startTrivial()
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer stopTrivial()
	for i := range cfg.Runs {
		b.quiet(ctx, res)
		ceil := runLoad(ctx, loadOptions{URL: trivialURL, Clients: cfg.Clients, Warmup: cfg.S1Warmup, Duration: cfg.S1Duration, Body: body})
		run := map[string]float64{"ceiling": ceil.rate(), "ceiling_p99": ms(percentile(ceil.Latencies, 99))}
		err := func() error {
			r, err := b.st.newRun(ctx, "s1", string(dkim.AlgorithmEd25519))
			if err != nil {
				return err
			}
			defer b.st.endRun(r)
			p, err := b.st.startMailferry(ctx, r, "api,scheduler")
			if err != nil {
				return err
			}
			defer b.st.stopMailferry(p, 10*time.Second)
			var prof <-chan string
			if cfg.Pprof && i == 0 {
				prof = b.profile(p, "s1-accept", cfg.S1Warmup)
			}
			c0 := b.st.cpu(p)
			lr := runLoad(ctx, loadOptions{
				URL: "http://" + p.addr + "/v1/messages", Auth: r.apiKey,
				Clients: cfg.Clients, Warmup: cfg.S1Warmup, Duration: cfg.S1Duration, Body: body,
			})
			if prof != nil {
				if path := <-prof; path != "" {
					b.rep.Profiles = append(b.rep.Profiles, path)
				}
			}
			u := since(c0, b.st.cpu(p))
			mem := readMemory(p.pid())
			run["batch"] = p.histogramMean("mailferry_accept_batch_size")
			per := func(sec float64) float64 { return sec / float64(max(lr.All, 1)) * 1000 }
			run["rate"] = lr.rate()
			run["p50"] = ms(percentile(lr.Latencies, 50))
			run["p95"] = ms(percentile(lr.Latencies, 95))
			run["p99"] = ms(percentile(lr.Latencies, 99))
			run["errors"] = float64(lr.Errors)
			run["ratio"] = 100 * ratio(lr.rate(), ceil.rate())
			run["hwm"] = mib(mem.HWM)
			run["rss"] = mib(mem.RSS)
			run["cpu_ms"] = per(u.total())
			run["cpu_mf_ms"] = per(u.Mailferry)
			run["cpu_pg_ms"] = per(u.Postgres)
			run["cpu_redis_ms"] = per(u.Redis)
			run["cpu_bench_ms"] = per(u.Bench)
			run["busy"] = 100 * ratio(u.total()+u.Bench, u.Wall.Seconds()*float64(runtime.NumCPU()))
			run["other"] = u.otherCores()
			for _, e := range lr.ErrSamples {
				res.note("error sample: " + e)
			}
			return nil
		}()
		if err != nil {
			res.Error = err.Error()
			break
		}
		res.add(run)
		b.progress("S1 run %d: %.0f msgs/s (ceiling %.0f), p99 %.1f ms, %v errors", i+1, run["rate"], run["ceiling"], run["p99"], run["errors"])
	}
	res.finish()
	return res
}

// otherMetric is the CPU that processes outside the benchmark used while
// a run was measured: on a shared machine it explains odd runs.
var otherMetric = metric{"other", "other processes' CPU during the measurement (not the benchmark)", "cores", 2}

// quiet waits for the machine to go quiet before a run.
func (b *bench) quiet(ctx context.Context, res *scenarioResult) {
	other, ok := b.st.waitQuiet(ctx)
	if !ok && ctx.Err() == nil {
		res.note(fmt.Sprintf("a run started while other processes used %.1f cores (after waiting %s for quiet)", other, b.cfg.QuietWait))
	}
}

// domains lists n recipient domains of which a share fraction, spread
// evenly (every tenth for 0.1), point at the tarpit.
func domains(n int, fraction float64) []string {
	out := make([]string, n)
	for i := range out {
		if int(float64(i+1)*fraction) > int(float64(i)*fraction) {
			out[i] = tarpitDomain(i)
		} else {
			out[i] = healthyDomain(i)
		}
	}
	return out
}

func isHealthy(domain string) bool { return !strings.HasPrefix(domain, "t") }

// s2 measures end-to-end delivery with one DKIM key type: the API accepts
// every message with no worker running, then one worker process (`serve
// --roles worker,scheduler`) delivers them to the sink. Ceilings in the
// same run: the bench's own SMTP client blasting the sink with the same
// STARTTLS, and the single-core sign rate of the key type.
func (b *bench) s2(ctx context.Context, alg dkim.Algorithm) *scenarioResult {
	return b.s2Builds(ctx, alg, []build{{bin: b.bin, label: b.commit}})[0]
}

// build is one mailferry binary a scenario measures.
type build struct {
	bin, label string
	baseline   bool
}

// s2Compare is S2 for alg and, with -baseline, the same S2 for the
// baseline build, run for run beside it: both meet the same machine, so
// their ratio is the figure to quote.
func (b *bench) s2Compare(ctx context.Context, alg dkim.Algorithm) []*scenarioResult {
	builds := []build{{bin: b.bin, label: b.commit}}
	if b.baseBin != "" {
		builds = append(builds, build{bin: b.baseBin, label: b.baseCommit, baseline: true})
	}
	out := b.s2Builds(ctx, alg, builds)
	if len(out) == 2 {
		out = append(out, compareScenarios(out[0], out[1]))
	}
	return out
}

func (b *bench) s2Builds(ctx context.Context, alg dkim.Algorithm, builds []build) []*scenarioResult {
	cfg := b.cfg
	results := make([]*scenarioResult, len(builds))
	for j, bd := range builds {
		key := "s2-" + string(alg)
		title := fmt.Sprintf("S2 end-to-end, DKIM %s: %d messages (4 KB) over %d domains, all MX → the sink (STARTTLS); accepted first with no worker, then drained by one worker process",
			alg, cfg.S2Messages, cfg.S2Domains)
		if bd.baseline {
			key += "-baseline"
			title = "Baseline " + bd.label + ": " + title
		}
		results[j] = newScenario(key, title, s2Metrics()...)
		if cfg.S2Messages < 50000 {
			results[j].note(fmt.Sprintf("%d messages per run instead of issue 7's 50,000 (-s2-messages), to fit the run time", cfg.S2Messages))
		}
		if len(builds) > 1 {
			results[j].note(fmt.Sprintf("build %s; runs alternate with the other build of this report", bd.label))
		}
	}
	defer func() { b.st.bin = b.bin }()
runs:
	for i := range cfg.Runs {
		for j, bd := range builds {
			res := results[j]
			if res.Error != "" {
				break runs
			}
			b.st.bin = bd.bin
			b.quiet(ctx, res)
			run := map[string]float64{}
			if err := b.s2Ceilings(ctx, alg, run); err != nil {
				res.Error = err.Error()
				break runs
			}
			profile := ""
			if cfg.Pprof && i == 0 {
				profile = res.Key + "-drain"
			}
			d, err := b.drain(ctx, drainOptions{
				Name: res.Key, Algorithm: string(alg), Domains: domains(cfg.S2Domains, 0),
				Count: cfg.S2Messages, TextBytes: 4096, Timeout: cfg.S2Timeout, Profile: profile, Keep: 3,
			})
			if err != nil {
				res.Error = err.Error()
				break runs
			}
			b.fillS2(res, run, d)
			signTarget := 2 * run["sign_rate"]
			run["ratio_sign"] = 100 * ratio(run["drain"], signTarget)
			res.add(run)
			b.progress("%s run %d: drain %.0f msgs/s (sink ceiling %.0f, sign %.0f/s/core), CPU %.2f ms/msg, %.2f round trips/msg, %d/%d delivered",
				res.Key, i+1, run["drain"], run["sink_ceiling"], run["sign_rate"], run["cpu_ms"], run["turns_per_msg"], d.delivered(), d.want)
		}
	}
	for _, res := range results {
		res.finish()
	}
	return results
}

// compareScenarios gives, run for run, cur's figure over base's, and the
// median of those ratios.
func compareScenarios(cur, base *scenarioResult) *scenarioResult {
	keys := []string{"drain", "cpu_ms", "cpu_drain_ms", "turns_per_msg", "conns_per_msg", "pg_tx_drain", "worker_hwm"}
	var ms []metric
	for _, m := range s2Metrics() {
		if slices.Contains(keys, m.Key) {
			ms = append(ms, metric{m.Key, m.Label + ": this build ÷ baseline", "×", 3})
		}
	}
	res := newScenario(cur.Key+"-vs-baseline", "S2 ratios, this build ÷ the baseline, run for run (below 1 is less; for drain, above 1 is faster)", ms...)
	for i := range min(len(cur.Runs), len(base.Runs)) {
		run := map[string]float64{}
		for _, k := range keys {
			if b := base.Runs[i][k]; b != 0 {
				run[k] = cur.Runs[i][k] / b
			}
		}
		res.add(run)
	}
	res.finish()
	return res
}

func s2Metrics() []metric {
	return []metric{
		{"drain", "drain rate (first → last arrival)", "msgs/s", 0},
		{"drain_start", "drain rate (worker start → last arrival)", "msgs/s", 0},
		{"delivered", "delivered", "msgs", 0},
		{"accept_rate", "accept rate while filling", "msgs/s", 0},
		{"accept_errors", "accept errors", "", 0},
		{"e2e_p50", "accept→delivered p50 (includes the wait while no worker ran)", "s", 2},
		{"e2e_p99", "accept→delivered p99 (same)", "s", 2},
		{"conns_per_msg", "SMTP connections per message (at the sink)", "", 2},
		{"turns_per_msg", "SMTP round trips per message (at the sink: reads that followed a reply)", "", 2},
		{"smtp_ms", "SMTP transaction time, mean (mailferry_delivery_duration_seconds)", "ms", 1},
		{"batch", "messages per PostgreSQL accept transaction (mean)", "", 1},
		{"pg_tx_accept", "PostgreSQL transactions per accepted message (pg_stat_database)", "", 2},
		{"pg_tx_drain", "PostgreSQL transactions per delivered message", "", 2},
		{"pg_upd_drain", "PostgreSQL rows updated per delivered message", "", 2},
		{"pg_ins_drain", "PostgreSQL rows inserted per delivered message", "", 2},
		{"cpu_ms", "CPU per message, accept + delivery (mailferry+redis+postgres)", "ms", 3},
		{"cpu_accept_ms", "… accept (api+redis+postgres, per accepted message)", "ms", 3},
		{"cpu_drain_ms", "… delivery (worker+redis+postgres, per delivered message)", "ms", 3},
		{"cpu_mf", "CPU-s per 1,000 messages: mailferry (api + worker)", "s", 3},
		{"cpu_redis", "CPU-s per 1,000 messages: redis", "s", 3},
		{"cpu_pg", "CPU-s per 1,000 messages: postgres", "s", 3},
		{"cpu_bench", "CPU-s per 1,000 messages: bench (generator, DNS, sink; not counted above)", "s", 3},
		{"busy", "share of the machine's CPU used by mailferry, redis, postgres and the bench during the drain", "%", 0},
		{"worker_hwm", "worker RSS peak (VmHWM)", "MiB", 0},
		{"api_hwm", "api RSS peak (VmHWM)", "MiB", 0},
		{"sink_ceiling", "ceiling: sink intake, 1 message per connection", "msgs/s", 0},
		{"sink_ceiling_reuse", "sink intake, 100 messages per connection", "msgs/s", 0},
		{"ratio_sink", "share of sink ceiling (1/conn)", "%", 1},
		{"sign_rate", "ceiling: single-core sign rate", "signs/s", 0},
		{"ratio_sign", "share of 2 × single-core sign rate", "%", 1},
		{"dkim_signed", "messages with a DKIM-Signature", "%", 1},
		{"dkim_verified", "kept messages whose signature verified", "", 0},
		otherMetric,
	}
}

// s2Ceilings measures the sink's intake and the sign rate into run.
func (b *bench) s2Ceilings(ctx context.Context, alg dkim.Algorithm, run map[string]float64) error {
	cfg := b.cfg
	sign, err := signRate(ctx, alg, cfg.CeilDuration)
	if err != nil {
		return fmt.Errorf("sign rate: %w", err)
	}
	run["sign_rate"] = sign
	hdr, err := sampleSignature(ctx, alg)
	if err != nil {
		return err
	}
	return b.blastCeilings(ctx, hdr, b.st.sink.healthy, 0, run)
}

// blastCeilings measures the sink's intake at addrs from the bench's own
// client, one message per connection and 100 (as a reused connection
// carries), with messages of textBytes (0: 4 KB) under the header hdr.
func (b *bench) blastCeilings(ctx context.Context, hdr string, addrs []netip.Addr, textBytes int, run map[string]float64) error {
	for _, perConn := range []int{1, 100} {
		b.st.sink.reset(0, 0)
		r, errs, err := blast(ctx, blastOptions{
			Addrs: addrs, Port: b.st.sink.port, Clients: b.cfg.BlastClients,
			Duration: b.cfg.CeilDuration, PerConn: perConn, Header: hdr, TextBytes: textBytes,
		})
		if err != nil {
			return fmt.Errorf("sink blast: %w", err)
		}
		if errs > 0 {
			b.progress("sink blast (%d per connection): %d errors", perConn, errs)
		}
		if perConn == 1 {
			run["sink_ceiling"] = r
		} else {
			run["sink_ceiling_reuse"] = r
		}
	}
	return nil
}

// sampleSignature signs the sample message once, so blasted messages carry
// a DKIM-Signature field of the right size.
func sampleSignature(ctx context.Context, alg dkim.Algorithm) (string, error) {
	key, err := dkim.Generate(nil, senderDomain, "blast", alg)
	if err != nil {
		return "", err
	}
	return dkim.NewSigner(dkim.SignOptions{}).Sign(ctx, []dkim.Key{key}, sampleMessage("x@"+relayHost))
}

func (b *bench) fillS2(res *scenarioResult, run map[string]float64, d *drainResult) {
	n := d.delivered()
	run["drain"] = d.drainRate()
	run["drain_start"] = d.rateFromStart()
	run["delivered"] = float64(n)
	run["accept_rate"] = d.load.rate()
	run["accept_errors"] = float64(d.load.Errors)
	run["e2e_p50"] = percentile(d.latencies, 50).Seconds()
	run["e2e_p99"] = percentile(d.latencies, 99).Seconds()
	run["conns_per_msg"] = ratio(float64(d.tally.conns.Load()), float64(n))
	run["turns_per_msg"] = ratio(float64(d.tally.turns.Load()), float64(n))
	acc := d.perAccepted
	del := d.perDelivered
	a, dr := d.acceptCPU, d.drainCPU
	run["cpu_accept_ms"] = acc(a.total())
	run["cpu_drain_ms"] = del(dr.total())
	run["cpu_ms"] = run["cpu_accept_ms"] + run["cpu_drain_ms"]
	run["cpu_mf"] = acc(a.Mailferry) + del(dr.Mailferry)
	run["cpu_redis"] = acc(a.Redis) + del(dr.Redis)
	run["cpu_pg"] = acc(a.Postgres) + del(dr.Postgres)
	run["cpu_bench"] = acc(a.Bench) + del(dr.Bench)
	run["busy"] = d.busy()
	run["smtp_ms"] = 1000 * d.smtpMean
	run["pg_tx_accept"] = ratio(d.acceptPG.Commits, float64(d.load.OK))
	run["pg_tx_drain"] = ratio(d.drainPG.Commits, float64(n))
	run["pg_upd_drain"] = ratio(d.drainPG.Updated, float64(n))
	run["pg_ins_drain"] = ratio(d.drainPG.Inserted, float64(n))
	run["batch"] = d.acceptBatch
	run["other"] = d.drainCPU.otherCores()
	run["worker_hwm"] = mib(d.workerMem.HWM)
	run["api_hwm"] = mib(d.apiMem.HWM)
	if _, ok := run["sink_ceiling"]; ok {
		run["ratio_sink"] = 100 * ratio(run["drain"], run["sink_ceiling"])
	}
	d.tally.mu.Lock()
	signed := 0
	for alg, c := range d.tally.signed {
		signed += c
		res.note(fmt.Sprintf("DKIM a=%s on %d messages", alg, c))
	}
	dups, noID := d.tally.dups, d.tally.noID
	d.tally.mu.Unlock()
	run["dkim_signed"] = 100 * ratio(float64(signed), float64(n+d.tally.tarpit))
	run["dkim_verified"] = float64(d.verified)
	if d.verifyErr != "" {
		res.note("DKIM verification failed: " + d.verifyErr)
	}
	if dups > 0 || noID > 0 {
		res.note(fmt.Sprintf("sink saw %d duplicate Message-IDs and %d messages without one", dups, noID))
	}
	if d.timedOut {
		res.note(fmt.Sprintf("a run timed out: %d of %d delivered; rates count what arrived", n, d.want))
	}
	for _, e := range d.load.ErrSamples {
		res.note("accept error sample: " + e)
	}
}

// s3 measures a backlog: Count small messages queued with no worker, then
// one worker drains them. A queue with O(n) work per message slows down
// as it drains; Redis memory per queued message and RSS are reported.
func (b *bench) s3(ctx context.Context) *scenarioResult {
	cfg := b.cfg
	res := newScenario("s3", fmt.Sprintf("S3 backlog: %d queued small messages (200 B text) over %d domains, then drained by one worker",
		cfg.S3Messages, cfg.S2Domains),
		metric{"first10", "delivery rate, first 10%", "msgs/s", 0},
		metric{"last10", "delivery rate, last 10%", "msgs/s", 0},
		metric{"end_vs_start", "last 10% / first 10%", "%", 1},
		metric{"drain", "drain rate overall", "msgs/s", 0},
		metric{"delivered", "delivered", "msgs", 0},
		metric{"fill_rate", "accept rate while filling", "msgs/s", 0},
		metric{"redis_bytes", "Redis used_memory per queued message", "B", 0},
		metric{"worker_hwm", "worker RSS peak (VmHWM)", "MiB", 0},
		metric{"api_hwm", "api RSS peak (VmHWM)", "MiB", 0},
		metric{"cpu_ms", "CPU per delivered message (mailferry+redis+postgres)", "ms", 3},
		otherMetric,
	)
	if cfg.S3Messages < 1_000_000 {
		res.note(fmt.Sprintf("scaled down from issue 7's 1,000,000 messages to %d (-s3-messages) to fit the run time", cfg.S3Messages))
	}
	for i := range cfg.S3Runs {
		b.quiet(ctx, res)
		d, err := b.drain(ctx, drainOptions{
			Name: "s3", Algorithm: string(dkim.AlgorithmEd25519), Domains: domains(cfg.S2Domains, 0),
			Count: cfg.S3Messages, TextBytes: 200, Timeout: cfg.S3Timeout,
		})
		if err != nil {
			res.Error = err.Error()
			break
		}
		times := d.tally.times()
		first, last := tenths(times)
		run := map[string]float64{
			"first10": first, "last10": last, "end_vs_start": 100 * ratio(last, first),
			"drain": d.drainRate(), "delivered": float64(len(times)), "fill_rate": d.load.rate(),
			"redis_bytes": ratio(float64(d.redisBytes), float64(d.load.OK)),
			"worker_hwm":  mib(d.workerMem.HWM), "api_hwm": mib(d.apiMem.HWM),
			"cpu_ms": d.perAccepted(d.acceptCPU.total()) + d.perDelivered(d.drainCPU.total()),
			"other":  d.drainCPU.otherCores(),
		}
		res.note(fmt.Sprintf("run %d, delivery rate by tenth of the backlog (msgs/s): %s", i+1, decileRates(times)))
		if d.timedOut {
			res.note(fmt.Sprintf("a run timed out after %s: %d of %d delivered; \"last 10%%\" is of what arrived", cfg.S3Timeout, len(times), d.want))
		}
		res.add(run)
		b.progress("S3 run %d: first 10%% %.0f msgs/s, last 10%% %.0f msgs/s, %.0f B/msg in Redis, worker RSS %.0f MiB",
			i+1, first, last, run["redis_bytes"], run["worker_hwm"])
	}
	res.finish()
	return res
}

// tenths returns the arrival rate over the first and the last tenth.
func tenths(times []time.Time) (first, last float64) {
	n := len(times)
	k := n / 10
	if k < 2 {
		return 0, 0
	}
	first = rate(k-1, times[k-1].Sub(times[0]))
	last = rate(k-1, times[n-1].Sub(times[n-k]))
	return first, last
}

// decileRates lists the arrival rate over each tenth of times.
func decileRates(times []time.Time) string {
	n := len(times)
	if n < 20 {
		return "too few"
	}
	var parts []string
	for d := range 10 {
		lo, hi := d*n/10, (d+1)*n/10-1
		parts = append(parts, fmt.Sprintf("%.0f", rate(hi-lo, times[hi].Sub(times[lo]))))
	}
	return strings.Join(parts, ", ")
}

// s4 is S2 (Ed25519) with a tenth of the domains pointing at a tarpit MX
// that waits before every reply: the healthy domains' drain rate against
// S2's.
func (b *bench) s4(ctx context.Context, s2 *scenarioResult) *scenarioResult {
	cfg := b.cfg
	doms := domains(cfg.S2Domains, cfg.S4Fraction)
	tarpit := 0
	for _, d := range doms {
		if !isHealthy(d) {
			tarpit++
		}
	}
	res := newScenario("s4", fmt.Sprintf("S4 isolation: S2 (Ed25519, %d messages) with %d of %d domains tarpitting (%s before every reply)",
		cfg.S2Messages, tarpit, cfg.S2Domains, cfg.S4Delay),
		metric{"healthy_rate", "healthy domains' drain rate", "msgs/s", 0},
		metric{"s2_rate", "S2 Ed25519 drain rate (median, this report)", "msgs/s", 0},
		metric{"ratio", "healthy rate / S2 rate", "%", 1},
		metric{"healthy_delivered", "healthy messages delivered", "msgs", 0},
		metric{"healthy_wanted", "healthy messages accepted", "msgs", 0},
		metric{"tarpit_delivered", "tarpit messages delivered", "msgs", 0},
		metric{"healthy_p99", "healthy accept→delivered p99 (includes the wait while no worker ran)", "s", 1},
		otherMetric,
	)
	s2rate := 0.0
	if s2 != nil && s2.has("drain") {
		s2rate = s2.median("drain")
	} else {
		res.note("S2 Ed25519 did not run in this report: no ratio")
	}
	for i := range cfg.Runs {
		b.quiet(ctx, res)
		d, err := b.drain(ctx, drainOptions{
			Name: "s4", Algorithm: string(dkim.AlgorithmEd25519), Domains: doms,
			Healthy: isHealthy, Count: cfg.S2Messages, TextBytes: 4096, Timeout: cfg.S4Timeout,
		})
		if err != nil {
			res.Error = err.Error()
			break
		}
		n := d.delivered()
		hr := d.drainRate()
		if d.timedOut {
			// Unfinished: the rate over the whole window, not just between
			// the arrivals that happened.
			d.tally.mu.Lock()
			first := d.tally.first
			d.tally.mu.Unlock()
			if first.IsZero() {
				first = d.workerStart
			}
			hr = rate(n, d.workerStart.Add(cfg.S4Timeout).Sub(first))
			res.note(fmt.Sprintf("healthy domains did not finish within %s (-s4-timeout): the rate is delivered / (timeout − first arrival)", cfg.S4Timeout))
		}
		run := map[string]float64{
			"healthy_rate": hr, "s2_rate": s2rate, "ratio": 100 * ratio(hr, s2rate),
			"healthy_delivered": float64(n), "healthy_wanted": float64(d.want),
			"tarpit_delivered": float64(d.tally.tarpit), "healthy_p99": percentile(d.latencies, 99).Seconds(),
			"other": d.drainCPU.otherCores(),
		}
		res.add(run)
		b.progress("S4 run %d: healthy %.0f msgs/s (%d/%d), tarpit delivered %d", i+1, hr, n, d.want, d.tally.tarpit)
	}
	res.finish()
	return res
}

// light measures accept→delivered at a light, steady load with every role
// in one `mailferry serve` (the default deployment).
func (b *bench) light(ctx context.Context) *scenarioResult {
	cfg := b.cfg
	count := int(cfg.LightRate * cfg.LightDuration.Seconds())
	res := newScenario("light", fmt.Sprintf("Light load: %.0f msgs/s for %s (%d messages, 4 KB, Ed25519), one `mailferry serve` with all roles",
		cfg.LightRate, cfg.LightDuration, count),
		metric{"p50", "accept→delivered p50", "ms", 1},
		metric{"p95", "accept→delivered p95", "ms", 1},
		metric{"p99", "accept→delivered p99", "ms", 1},
		metric{"accept_p50", "accept latency p50", "ms", 2},
		metric{"accept_p99", "accept latency p99", "ms", 2},
		metric{"delivered", "delivered", "msgs", 0},
		metric{"errors", "accept errors", "", 0},
		otherMetric,
	)
	bodies := requestBodies(domains(cfg.S2Domains, 0), 4096)
	for i := range cfg.Runs {
		b.quiet(ctx, res)
		run, err := func() (map[string]float64, error) {
			r, err := b.st.newRun(ctx, "light", string(dkim.AlgorithmEd25519))
			if err != nil {
				return nil, err
			}
			defer b.st.endRun(r)
			p, err := b.st.startMailferry(ctx, r, "api,worker,scheduler")
			if err != nil {
				return nil, err
			}
			defer b.st.stopMailferry(p, 10*time.Second)
			acc := make([]accepted, count)
			t := b.st.sink.reset(count, 0)
			c0 := b.st.cpu(p)
			lr := runLoad(ctx, loadOptions{
				URL: "http://" + p.addr + "/v1/messages", Auth: r.apiKey,
				Clients: cfg.Clients, Count: count, Rate: cfg.LightRate,
				Body:     func(i int) []byte { return bodies[i%len(bodies)] },
				Accepted: func(i int, id string, at time.Time) { acc[i] = accepted{id, at} },
			})
			select {
			case <-t.done:
			case <-time.After(30 * time.Second):
				res.note("a run did not deliver everything within 30 s of the last accept")
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			u := since(c0, b.st.cpu(p))
			var lats []time.Duration
			for _, a := range acc {
				if at, ok := t.arrival(a.id); ok && a.id != "" {
					lats = append(lats, at.Sub(a.at))
				}
			}
			slices.Sort(lats)
			return map[string]float64{
				"p50": ms(percentile(lats, 50)), "p95": ms(percentile(lats, 95)), "p99": ms(percentile(lats, 99)),
				"accept_p50": ms(percentile(lr.Latencies, 50)), "accept_p99": ms(percentile(lr.Latencies, 99)),
				"delivered": float64(len(lats)), "errors": float64(lr.Errors),
				"other": u.otherCores(),
			}, nil
		}()
		if err != nil {
			res.Error = err.Error()
			break
		}
		res.add(run)
		b.progress("light run %d: accept→delivered p50 %.1f ms, p99 %.1f ms", i+1, run["p50"], run["p99"])
	}
	res.finish()
	return res
}

// loopbackOnly refuses an address outside 127.0.0.0/8: the benchmark must
// never reach beyond the machine.
func loopbackOnly(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.Is4() || !ip.IsLoopback() {
		return fmt.Errorf("%s is not in 127.0.0.0/8", addr)
	}
	return nil
}
