// Command mfbench is Mailferry's benchmark (issue 7). It starts the whole
// stack on loopback — throwaway Redis and PostgreSQL, a DNS server, a sink
// MX with STARTTLS — runs the real `mailferry serve` binary as separate
// processes, drives it over HTTP with its own load generator, and writes a
// Markdown report and a JSON file. Every figure is the median of several
// runs with its range, next to a ceiling measured in the same run.
//
//	go run ./bench/cmd/mfbench            # the full run (about 15 minutes)
//	go run ./bench/cmd/mfbench -quick     # a CI-sized run (about 4 minutes)
//
// See bench/README.md for the scenarios and the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mailferry/mailferry/dkim"
)

// config is every knob of a run.
type config struct {
	Quick     bool
	Runs      int
	Scenarios string
	Clients   int

	S1Duration, S1Warmup time.Duration

	S2Messages, S2Domains int
	// Webhooks: recipients (one message each) whose events go through
	// a webhook endpoint.
	WebhookRecipients int
	S2Timeout         time.Duration

	S3Messages, S3Runs int
	S3Timeout          time.Duration

	// Scale: drains by 1, 2 and 4 worker processes on one Redis and on a
	// Redis Cluster.
	ScaleMessages int
	ScaleWorkers  string
	ScaleTimeout  time.Duration

	S4Fraction float64
	S4Delay    time.Duration
	S4Timeout  time.Duration

	LightRate     float64
	LightDuration time.Duration

	// S5: one destination, direct and through a smarthost.
	S5Messages, S5Runs int
	S5Timeout          time.Duration
	S5Variants         string
	// Postfix runs a private Postfix (and OpenDKIM) as the relay in S5.
	Postfix        bool
	PostfixClients int

	CeilDuration time.Duration
	BlastClients int
	SinkAddrs    int

	QuietWait  time.Duration
	QuietCores float64

	Pprof         bool
	PprofDuration time.Duration

	// Big: concurrent large messages against the bytes-in-flight cap.
	BigSize, BigClients int
	BigCap              int64

	Src, Bin, Out, Label, LogLevel string
	Keep                           bool

	// Durable runs PostgreSQL with fsync and synchronous_commit on.
	Durable bool
	// Baseline is a git revision of Src built and measured beside it in
	// S2, run for run, so the report can give ratios from one run.
	Baseline string
}

// maxDomains is how many recipient domains the zone needs.
func (c *config) maxDomains() int { return c.S2Domains }

func (c *config) want(s string) bool {
	for _, w := range strings.Split(c.Scenarios, ",") {
		if strings.TrimSpace(w) == s || strings.TrimSpace(w) == "all" {
			return true
		}
	}
	return false
}

// quickDefaults are the -quick values of the flags the caller did not set.
var quickDefaults = map[string]string{
	"s1-duration":        "5s",
	"s1-warmup":          "1s",
	"s2-messages":        "3000",
	"s2-domains":         "300",
	"s2-timeout":         "90s",
	"s3-messages":        "5000",
	"s3-runs":            "1",
	"s3-timeout":         "120s",
	"s4-timeout":         "15s",
	"light-duration":     "5s",
	"webhook-recipients": "2000",
	"s5-messages":        "3000",
	"scale-messages":     "2000",
	"scale-timeout":      "2m",
	"s5-timeout":         "3m",
	"ceil-duration":      "2s",
	"pprof-duration":     "5s",
}

func parseFlags(args []string) (*config, []string, error) {
	c := &config{}
	fs := flag.NewFlagSet("mfbench", flag.ContinueOnError)
	fs.BoolVar(&c.Quick, "quick", false, "CI-sized run: shorter loads, fewer messages (explicit flags still win)")
	fs.IntVar(&c.Runs, "runs", 3, "runs per scenario; each figure is their median")
	fs.StringVar(&c.Scenarios, "scenarios", "all", "comma-separated: s1, s2, s4, light, webhooks, s3, big, s5, scale (s4 compares with s2), or all")
	fs.IntVar(&c.Clients, "clients", 64, "keep-alive HTTP clients of the load generator")
	fs.DurationVar(&c.S1Duration, "s1-duration", 20*time.Second, "S1: measured load per run")
	fs.DurationVar(&c.S1Warmup, "s1-warmup", 2*time.Second, "S1: unmeasured load before it")
	fs.IntVar(&c.S2Messages, "s2-messages", 20000, "S2/S4: messages per run (issue 7 says 50,000)")
	fs.IntVar(&c.S2Domains, "s2-domains", 1000, "S2/S3/S4: recipient domains (all MX → the sink)")
	fs.DurationVar(&c.S2Timeout, "s2-timeout", 5*time.Minute, "S2: give up a drain after this")
	fs.IntVar(&c.S3Messages, "s3-messages", 15000, "S3: queued messages (issue 7 says 1,000,000)")
	fs.IntVar(&c.S3Runs, "s3-runs", 3, "S3: runs")
	fs.IntVar(&c.ScaleMessages, "scale-messages", 20000, "scale: messages each drain delivers")
	fs.StringVar(&c.ScaleWorkers, "scale-workers", "1,2,4", "scale: worker process counts, comma-separated")
	fs.DurationVar(&c.ScaleTimeout, "scale-timeout", 10*time.Minute, "scale: give up a drain after this")
	fs.DurationVar(&c.S3Timeout, "s3-timeout", 10*time.Minute, "S3: give up a drain after this")
	fs.Float64Var(&c.S4Fraction, "s4-fraction", 0.1, "S4: share of domains whose MX is the tarpit")
	fs.DurationVar(&c.S4Delay, "s4-delay", 5*time.Second, "S4: tarpit wait before every reply")
	fs.DurationVar(&c.S4Timeout, "s4-timeout", 45*time.Second, "S4: stop waiting for the healthy domains after this")
	fs.Float64Var(&c.LightRate, "light-rate", 100, "light load: messages per second")
	fs.DurationVar(&c.LightDuration, "light-duration", 10*time.Second, "light load: duration per run")
	fs.IntVar(&c.WebhookRecipients, "webhook-recipients", 10000, "webhooks: recipients (one message each) whose events are sent to the bench's receiver")
	fs.IntVar(&c.S5Messages, "s5-messages", 50000, "S5: messages per run and variant, all to one recipient domain")
	fs.IntVar(&c.S5Runs, "s5-runs", 1, "S5: runs per variant (six variants at 50,000 messages each take a while)")
	fs.DurationVar(&c.S5Timeout, "s5-timeout", 15*time.Minute, "S5: give up a drain after this")
	fs.StringVar(&c.S5Variants, "s5-variants", "all", "S5: all, none (Postfix alone, with -postfix), or some of direct-none, direct-ed25519, direct-rsa2048, smarthost-none, smarthost-ed25519, smarthost-rsa2048")
	fs.BoolVar(&c.Postfix, "postfix", false, "S5: also run a private Postfix (with and without OpenDKIM) as the relay of the same messages, for the ratios (needs /usr/sbin/postfix; /usr/sbin/opendkim for the DKIM run)")
	fs.IntVar(&c.PostfixClients, "postfix-clients", 64, "S5 with -postfix: concurrent SMTP clients submitting to Postfix")
	fs.DurationVar(&c.CeilDuration, "ceil-duration", 3*time.Second, "S2 ceilings: duration of each sink blast and sign-rate measurement")
	fs.IntVar(&c.BigSize, "big-size", 20<<20, "big: bytes of each message")
	fs.IntVar(&c.BigClients, "big-clients", 32, "big: concurrent POSTs, and as many concurrent SMTP submissions")
	fs.Int64Var(&c.BigCap, "big-cap", 128<<20, "big: MAILFERRY_MAX_BYTES_IN_FLIGHT of the measured process")
	fs.IntVar(&c.BlastClients, "blast-clients", 32, "S2 ceiling: concurrent SMTP clients")
	fs.IntVar(&c.SinkAddrs, "sink-addrs", 4, "sink MX addresses (127.0.0.2 on); the tarpit takes the next one")
	fs.DurationVar(&c.QuietWait, "quiet-wait", 20*time.Second, "before each run, wait up to this long for the rest of the machine to go quiet")
	fs.Float64Var(&c.QuietCores, "quiet-cores", 0.2, "quiet: other processes use fewer cores than this")
	fs.BoolVar(&c.Pprof, "pprof", false, "build mailferry with a pprof listener (go build -overlay; the repository is not changed) and profile the first run of S1 and S2")
	fs.DurationVar(&c.PprofDuration, "pprof-duration", 10*time.Second, "length of each CPU profile")
	fs.StringVar(&c.Src, "src", "", "Mailferry source tree to build (default: the module around the working directory)")
	fs.StringVar(&c.Bin, "bin", "", "use this mailferry binary instead of building one (not with -pprof)")
	fs.StringVar(&c.Out, "out", "", "results folder (default: <src>/bench/results)")
	fs.StringVar(&c.Label, "label", "", "names the measured source in the report (default: git describe of -src)")
	fs.StringVar(&c.LogLevel, "log-level", "info", "MAILFERRY_LOG_LEVEL of the measured processes")
	fs.BoolVar(&c.Keep, "keep", false, "keep the temporary folder (mailferry logs, server data)")
	fs.BoolVar(&c.Durable, "durable", true, "PostgreSQL with fsync and synchronous_commit on, the durability Mailferry promises (false: off, as the tests run it)")
	fs.StringVar(&c.Baseline, "baseline", "", "git revision of -src to build and measure beside it in S2 (Ed25519), alternating run for run; the report gives the ratios")
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	if fs.NArg() > 0 {
		return nil, nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if c.Quick {
		for name, v := range quickDefaults {
			if !set[name] {
				if err := fs.Set(name, v); err != nil {
					return nil, nil, err
				}
			}
		}
	}
	var errs []error
	if c.Runs < 1 || c.S3Runs < 1 || c.S5Runs < 1 {
		errs = append(errs, errors.New("-runs, -s3-runs and -s5-runs must be at least 1"))
	}
	if c.S2Messages < 1 || c.S2Domains < 10 || c.S3Messages < 100 {
		errs = append(errs, errors.New("-s2-messages ≥ 1, -s2-domains ≥ 10, -s3-messages ≥ 100"))
	}
	if c.S5Messages < 2 || c.PostfixClients < 1 {
		errs = append(errs, errors.New("-s5-messages ≥ 2, -postfix-clients ≥ 1"))
	}
	if _, err := parseS5Variants(c.S5Variants); err != nil {
		errs = append(errs, err)
	}
	if c.SinkAddrs < 1 || c.SinkAddrs > 200 {
		errs = append(errs, errors.New("-sink-addrs must be 1 to 200"))
	}
	if c.S4Fraction <= 0 || c.S4Fraction >= 1 {
		errs = append(errs, errors.New("-s4-fraction must be between 0 and 1"))
	}
	if c.Pprof && c.Bin != "" {
		errs = append(errs, errors.New("-pprof builds its own binary: drop -bin"))
	}
	if c.Baseline != "" && c.Pprof {
		errs = append(errs, errors.New("-baseline with -pprof: profile one build at a time"))
	}
	var line []string
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || (c.Quick && quickDefaults[f.Name] != "") {
			line = append(line, "-"+f.Name+"="+f.Value.String())
		}
	})
	return c, line, errors.Join(errs...)
}

type bench struct {
	mu     sync.Mutex // guards rep.Breakdowns
	cfg    *config
	st     *stack
	rep    *report
	stamp  string
	bin    string
	commit string
	// baseBin and baseCommit: the -baseline build, when there is one.
	baseBin, baseCommit string
}

func (b *bench) progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "mfbench %s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func main() {
	if err := mainErr(); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "mfbench:", err)
		os.Exit(1)
	}
}

func mainErr() error {
	cfg, flags, err := parseFlags(os.Args[1:])
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	started := time.Now()
	b := &bench{cfg: cfg, stamp: started.Format("20060102-150405")}
	b.rep = &report{Started: started.Format("2006-01-02 15:04 MST"), Flags: flags}

	if cfg.Src == "" {
		if cfg.Src, err = findModuleRoot(); err != nil {
			return err
		}
	}
	if cfg.Out == "" {
		cfg.Out = filepath.Join(cfg.Src, "bench", "results")
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return err
	}
	b.commit = cfg.Label
	if b.commit == "" {
		b.commit = describe(cfg.Src)
	}
	b.bin = cfg.Bin
	if b.bin == "" {
		dir, err := os.MkdirTemp("", "mfbench-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		b.progress("building mailferry from %s", cfg.Src)
		if b.bin, err = buildMailferry(ctx, cfg.Src, dir, cfg.Pprof); err != nil {
			return err
		}
	}
	if cfg.Baseline != "" {
		dir, err := os.MkdirTemp("", "mfbench-baseline-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		b.progress("building the baseline %s", cfg.Baseline)
		if b.baseBin, b.baseCommit, err = buildRevision(ctx, cfg.Src, cfg.Baseline, dir); err != nil {
			return err
		}
	}
	b.progress("starting Redis, PostgreSQL, DNS and the sink")
	if b.st, err = startStack(ctx, cfg, b.bin); err != nil {
		return err
	}
	defer b.st.close()
	ru, err := url.Parse(b.st.redis.URL)
	if err != nil {
		return err
	}
	for _, addr := range []string{b.st.dns.addr, ru.Host, b.st.pgURL.Host} {
		if err := loopbackOnly(addr); err != nil {
			return err
		}
	}
	b.rep.Machine = b.describeMachine(ctx)

	save := func() error {
		b.rep.Seconds = time.Since(started).Seconds()
		b.rep.Targets = b.rep.targets()
		js, err := b.rep.json()
		if err != nil {
			return err
		}
		base := filepath.Join(cfg.Out, b.stamp)
		if cfg.Quick {
			base += "-quick"
		}
		if err := os.WriteFile(base+".json", append(js, '\n'), 0o644); err != nil {
			return err
		}
		return os.WriteFile(base+".md", []byte(b.rep.markdown()), 0o644)
	}
	one := func(r *scenarioResult) []*scenarioResult { return []*scenarioResult{r} }
	steps := []struct {
		name string
		fn   func() []*scenarioResult
	}{
		{"s1", func() []*scenarioResult { return one(b.s1(ctx)) }},
		{"s2", func() []*scenarioResult { return b.s2Compare(ctx, dkim.AlgorithmEd25519) }},
		{"s2", func() []*scenarioResult { return one(b.s2(ctx, dkim.AlgorithmRSA2048)) }},
		{"s4", func() []*scenarioResult { return one(b.s4(ctx, b.rep.scenario("s2-ed25519"))) }},
		{"light", func() []*scenarioResult { return one(b.light(ctx)) }},
		{"webhooks", func() []*scenarioResult { return one(b.webhooks(ctx)) }},
		{"s3", func() []*scenarioResult { return one(b.s3(ctx)) }},
		{"big", func() []*scenarioResult { return one(b.big(ctx)) }},
		{"s5", func() []*scenarioResult { return b.s5(ctx) }},
		{"scale", func() []*scenarioResult { return one(b.scale(ctx)) }},
	}
	for _, s := range steps {
		if !cfg.want(s.name) || ctx.Err() != nil {
			continue
		}
		for _, res := range s.fn() {
			b.rep.Scenarios = append(b.rep.Scenarios, res)
			if res.Error != "" {
				b.progress("%s: %s", res.Key, res.Error)
			}
		}
		if err := save(); err != nil {
			return err
		}
	}
	if err := save(); err != nil {
		return err
	}
	fmt.Print(b.rep.markdown())
	base := filepath.Join(cfg.Out, b.stamp)
	if cfg.Quick {
		base += "-quick"
	}
	b.progress("report: %s.md and %s.json", base, base)
	return ctx.Err()
}
