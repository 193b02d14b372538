package main

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/mailferry/mailferry/dkim"
)

// s5TextBytes makes S5's messages about 5 KB as the API builds them
// (issue 12 compares relays on 5 KB messages); Postfix gets the same text.
const s5TextBytes = 4700

// s5Variant is one way S5 runs: straight to the domain's MX or through
// MAILFERRY_SMARTHOST, with a DKIM key of one type or none.
type s5Variant struct {
	Smarthost bool
	Alg       dkim.Algorithm // "" no key: sent unsigned
}

func (v s5Variant) route() string {
	if v.Smarthost {
		return "smarthost"
	}
	return "direct"
}

func (v s5Variant) name() string { return v.route() + "-" + cmp.Or(string(v.Alg), "none") }

func (v s5Variant) key() string { return "s5-" + v.name() }

// s5Variants lists every variant in the order they run.
func s5Variants() []s5Variant {
	var out []s5Variant
	for _, sh := range []bool{false, true} {
		for _, alg := range []dkim.Algorithm{"", dkim.AlgorithmEd25519, dkim.AlgorithmRSA2048} {
			out = append(out, s5Variant{Smarthost: sh, Alg: alg})
		}
	}
	return out
}

// parseS5Variants reads -s5-variants: "all", "none" (only Postfix) or
// names such as "direct-ed25519,smarthost-none".
func parseS5Variants(s string) ([]s5Variant, error) {
	all := s5Variants()
	switch strings.TrimSpace(s) {
	case "all":
		return all, nil
	case "", "none":
		return nil, nil // Postfix alone, with -postfix
	}
	var out []s5Variant
	for _, w := range strings.Split(s, ",") {
		w = strings.TrimSpace(w)
		i := slices.IndexFunc(all, func(v s5Variant) bool { return v.name() == w })
		if i < 0 {
			var names []string
			for _, v := range all {
				names = append(names, v.name())
			}
			return nil, fmt.Errorf("-s5-variants: unknown variant %q (want all or some of %s)", w, strings.Join(names, ", "))
		}
		if !slices.Contains(out, all[i]) {
			out = append(out, all[i])
		}
	}
	return out, nil
}

func s5Metrics() []metric {
	return []metric{
		{"drain", "e2e rate: drain, first → last arrival", "msgs/s", 0},
		{"drain_start", "drain rate (worker start → last arrival)", "msgs/s", 0},
		{"delivered", "delivered", "msgs", 0},
		{"accept_rate", "accept rate while filling", "msgs/s", 0},
		{"accept_errors", "accept errors", "", 0},
		{"e2e_p50", "accept→delivered p50 (includes the wait while no worker ran)", "s", 2},
		{"e2e_p99", "accept→delivered p99 (same)", "s", 2},
		{"conns_per_msg", "SMTP connections per message (at the sink)", "", 3},
		{"conns_peak", "concurrent SMTP connections at the sink, peak", "", 0},
		{"turns_per_msg", "SMTP round trips per message (at the sink)", "", 2},
		{"smtp_ms", "SMTP transaction time, mean (mailferry_delivery_duration_seconds)", "ms", 1},
		{"pg_tx_drain", "PostgreSQL transactions per delivered message", "", 2},
		{"cpu_ms", "CPU per message, accept + delivery (api + worker + redis + postgres)", "ms", 3},
		{"cpu_mf", "… of which mailferry (api + worker processes)", "ms", 3},
		{"cpu_accept_ms", "… accept (api+redis+postgres, per accepted message)", "ms", 3},
		{"cpu_drain_ms", "… delivery (worker+redis+postgres, per delivered message)", "ms", 3},
		{"cpu_redis", "… of which redis", "ms", 3},
		{"cpu_pg", "… of which postgres", "ms", 3},
		{"cpu_bench", "bench CPU per message (generator, DNS, sink; not counted above)", "ms", 3},
		{"busy", "share of the machine's CPU used by mailferry, redis, postgres and the bench during the drain", "%", 0},
		{"worker_hwm", "worker RSS peak (VmHWM)", "MiB", 0},
		{"sink_ceiling", "ceiling: sink intake, 1 message per connection (same run)", "msgs/s", 0},
		{"sink_ceiling_reuse", "ceiling: sink intake, 100 messages per connection (same run)", "msgs/s", 0},
		{"ratio_sink", "share of sink ceiling (1/conn)", "%", 1},
		{"ratio_sink_reuse", "share of sink ceiling (100/conn)", "%", 1},
		{"dkim_signed", "messages with a DKIM-Signature", "%", 1},
		{"dkim_verified", "kept messages whose signature verified", "", 0},
		otherMetric,
	}
}

// s5Title describes a variant for the report.
func (b *bench) s5Title(v s5Variant) string {
	dk := "no DKIM key (sent unsigned)"
	if v.Alg != "" {
		dk = "DKIM " + string(v.Alg)
	}
	route := "direct to the domain's MX (the sink, one address)"
	if v.Smarthost {
		route = "through MAILFERRY_SMARTHOST=smtp://<sink>:<port> (STARTTLS, no AUTH)"
	}
	return fmt.Sprintf("S5 one destination, %s, %s: %d messages (about 5 KB) all to %s; accepted first with no worker, then drained by one worker process",
		route, dk, b.cfg.S5Messages, oneDomain)
}

// s5 runs every chosen S5 variant and, with -postfix, Postfix as the relay
// of the same messages to the same sink, run for run, then the ratios.
func (b *bench) s5(ctx context.Context) []*scenarioResult {
	cfg := b.cfg
	variants, _ := parseS5Variants(cfg.S5Variants) // checked in parseFlags
	var results []*scenarioResult
	byKey := map[string]*scenarioResult{}
	add := func(key, title string, ms []metric) *scenarioResult {
		r := newScenario(key, title, ms...)
		results = append(results, r)
		byKey[key] = r
		return r
	}
	for _, v := range variants {
		r := add(v.key(), b.s5Title(v), s5Metrics())
		if cfg.S5Messages < 50000 {
			r.note(fmt.Sprintf("%d messages per run instead of issue 12's 50,000 (-s5-messages)", cfg.S5Messages))
		}
		r.note("the worker runs with today's defaults (MAILFERRY_WORKER_CONCURRENCY, MAILFERRY_WORKER_PER_DOMAIN unset)")
	}
	var pf []postfixVariant
	if cfg.Postfix {
		var err error
		if pf, err = b.postfixVariants(); err != nil {
			r := add("s5-postfix", "S5 with Postfix as the relay", nil)
			r.Error = err.Error()
		}
		for _, p := range pf {
			add(p.key(), b.postfixTitle(p), postfixMetrics())
		}
	}
	for i := range cfg.S5Runs {
		if ctx.Err() != nil {
			break
		}
		for _, v := range variants {
			res := byKey[v.key()]
			if res.Error != "" {
				continue
			}
			b.quiet(ctx, res)
			run, err := b.s5Run(ctx, res, v)
			if err != nil {
				res.Error = err.Error()
				continue
			}
			res.add(run)
			b.progress("%s run %d: %.0f msgs/s (%.1f%% of the sink's %.0f/s reusing connections), CPU %.3f ms/msg (mailferry %.3f), %.3f conns/msg, peak %v conns",
				res.Key, i+1, run["drain"], run["ratio_sink_reuse"], run["sink_ceiling_reuse"], run["cpu_ms"], run["cpu_mf"], run["conns_per_msg"], run["conns_peak"])
		}
		for _, p := range pf {
			res := byKey[p.key()]
			if res.Error != "" {
				continue
			}
			b.quiet(ctx, res)
			run, err := b.postfixRun(ctx, res, p, i)
			if err != nil {
				res.Error = err.Error()
				continue
			}
			res.add(run)
			b.progress("%s run %d: e2e %.0f msgs/s, accept %.0f msgs/s, CPU %.3f ms/msg, %.3f conns/msg, peak %v conns, %v/%v delivered",
				res.Key, i+1, run["e2e"], run["accept_rate"], run["cpu_ms"], run["conns_per_msg"], run["conns_peak"], run["delivered"], run["accepted"])
		}
	}
	for _, r := range results {
		r.finish()
	}
	if len(pf) > 0 {
		results = append(results, s5CompareRelays(byKey))
	}
	return results
}

// s5Run is one run of one variant: the sink's ceilings, then the drain.
func (b *bench) s5Run(ctx context.Context, res *scenarioResult, v s5Variant) (map[string]float64, error) {
	cfg := b.cfg
	run := map[string]float64{}
	one := b.st.sink.healthy[:1]
	if err := b.sinkCeilings(ctx, v.Alg, one, run); err != nil {
		return nil, err
	}
	o := drainOptions{
		Name: res.Key, Algorithm: string(v.Alg), Domains: []string{oneDomain},
		Count: cfg.S5Messages, TextBytes: s5TextBytes, Timeout: cfg.S5Timeout,
	}
	if v.Alg != "" {
		o.Keep = 3
	}
	if v.Smarthost {
		o.WorkerEnv = []string{"MAILFERRY_SMARTHOST=" + smarthostURL(netip.AddrPortFrom(one[0], uint16(b.st.sink.port)))}
	}
	d, err := b.drain(ctx, o)
	if err != nil {
		return nil, err
	}
	b.fillS2(res, run, d)
	run["conns_peak"] = float64(d.tally.open.max())
	run["ratio_sink_reuse"] = 100 * ratio(run["drain"], run["sink_ceiling_reuse"])
	if v.Alg == "" {
		delete(run, "dkim_verified")
	}
	return run, nil
}

// smarthostURL is MAILFERRY_SMARTHOST for a relay at addr: smtp:// is
// STARTTLS. Without a user in the URL the worker sends no AUTH, so the
// sink's self-signed certificate need not verify (smtpclient demands a
// verified certificate only before AUTH; SSL_CERT_FILE would make it).
func smarthostURL(addr netip.AddrPort) string { return "smtp://" + addr.String() }

// sinkCeilings measures the sink's intake from the bench's own client at
// addrs with messages like S5's, signed with alg (none when "").
func (b *bench) sinkCeilings(ctx context.Context, alg dkim.Algorithm, addrs []netip.Addr, run map[string]float64) error {
	hdr := ""
	if alg != "" {
		var err error
		if hdr, err = sampleSignature(ctx, alg); err != nil {
			return err
		}
	}
	return b.blastCeilings(ctx, hdr, addrs, s5TextBytes, run)
}

// relayPair names a Mailferry variant measured against a Postfix one.
type relayPair struct {
	mailferry, postfix string
	label              string
}

// s5Pairs are issue 12's comparisons: Mailferry through a smarthost
// against Postfix with a relayhost (the same next hop), DKIM against
// OpenDKIM's RSA-2048.
var s5Pairs = []relayPair{
	{"s5-smarthost-none", "s5-postfix", "no DKIM ÷ Postfix"},
	{"s5-smarthost-rsa2048", "s5-postfix-opendkim", "RSA-2048 ÷ Postfix + OpenDKIM RSA-2048"},
	{"s5-smarthost-ed25519", "s5-postfix-opendkim", "Ed25519 ÷ Postfix + OpenDKIM RSA-2048"},
}

// s5CompareRelays gives, run for run, Mailferry's figures over Postfix's.
func s5CompareRelays(by map[string]*scenarioResult) *scenarioResult {
	var ms []metric
	for _, p := range s5Pairs {
		ms = append(ms,
			metric{"rate_" + p.mailferry, "e2e rate, Mailferry " + p.label, "×", 2},
			metric{"cpu_" + p.mailferry, "CPU per message (accept included), Mailferry " + p.label, "×", 2})
	}
	res := newScenario("s5-vs-postfix", "S5 ratios, Mailferry through MAILFERRY_SMARTHOST ÷ Postfix with the same relayhost, run for run (rate: above 1 is faster; CPU: below 1 is less)", ms...)
	res.note("Mailferry's rate is its drain (first → last arrival) after accepting everything; Postfix's is delivered ÷ (first submission → last arrival) while it accepts and delivers at once, as a relay runs. Mailferry accepts far faster than it delivers, so its drain is also what it sustains live.")
	res.note("CPU: Mailferry counts api + worker + Redis + PostgreSQL; Postfix counts every process under its master (smtpd, cleanup, qmgr, smtp, trivial-rewrite, tlsmgr, postlogd, …) and OpenDKIM.")
	n := 0
	for _, r := range by {
		n = max(n, len(r.Runs))
	}
	for i := range n {
		run := map[string]float64{}
		for _, p := range s5Pairs {
			m, pf := by[p.mailferry], by[p.postfix]
			if m == nil || pf == nil || i >= len(m.Runs) || i >= len(pf.Runs) {
				continue
			}
			if v := pf.Runs[i]["e2e"]; v > 0 {
				run["rate_"+p.mailferry] = m.Runs[i]["drain"] / v
			}
			if v := pf.Runs[i]["cpu_ms"]; v > 0 {
				run["cpu_"+p.mailferry] = m.Runs[i]["cpu_ms"] / v
			}
		}
		res.add(run)
	}
	res.finish()
	return res
}
