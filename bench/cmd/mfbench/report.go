package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// describeMachine reads what the report header shows.
func (b *bench) describeMachine(ctx context.Context) machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), Durable: b.cfg.Durable, Baseline: b.baseCommit}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if v, ok := strings.CutPrefix(s.Text(), "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				m.MemoryMiB = kb / 1024
			}
		}
		f.Close()
	}
	if k, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(k))
	}
	if b.st != nil {
		if info, err := b.st.rdb.Info(ctx, "server").Result(); err == nil {
			m.Redis = infoField(info, "redis_version")
		}
		m.Postgres = b.st.postgresVersion(ctx)
	}
	m.Mailferry = b.commit
	return m
}

// markdown renders the report.
func (r *report) markdown() string {
	var w strings.Builder
	m := r.Machine
	fmt.Fprintf(&w, "# Mailferry benchmark, %s\n\n", r.Started)
	fmt.Fprintf(&w, "- Machine: %d CPUs (%s), %.1f GiB memory, %s\n", m.CPUs, m.CPUModel, float64(m.MemoryMiB)/1024, m.Kernel)
	durability := "fsync and synchronous_commit on, the durability Mailferry promises"
	if !m.Durable {
		durability = "fsync and synchronous_commit OFF (-durable=false): throughput here overstates what a durable deployment gets"
	}
	fmt.Fprintf(&w, "- Software: %s, Redis %s, PostgreSQL %s (%s)\n", m.Go, m.Redis, m.Postgres, durability)
	if m.Baseline != "" {
		fmt.Fprintf(&w, "- Baseline: %s, built from git and measured in S2 (Ed25519) run for run beside this build\n", m.Baseline)
	}
	fmt.Fprintf(&w, "- Mailferry: %s\n", m.Mailferry)
	fmt.Fprintf(&w, "- Everything on this machine over loopback, the load generator, DNS server and sink MX included (one process, `mfbench`).\n")
	fmt.Fprintf(&w, "- Run took %.1f min. Flags: `%s`\n", r.Seconds/60, r.flagLine())
	fmt.Fprintf(&w, "- Each figure: median of the runs, with the range (min–max) and every run.\n\n")

	if len(r.Targets) > 0 {
		w.WriteString("## Targets (issues 7 and 12)\n\n| target | wanted | got (median) | met | by |\n|---|---|---|---|---|\n")
		for _, t := range r.Targets {
			met := "**no**"
			if t.Met {
				met = "yes"
			}
			fmt.Fprintf(&w, "| %s | %s | %s | %s | %s |\n", t.Name, t.Want, t.Got, met, t.By)
		}
		w.WriteString("\n")
	}
	for _, s := range r.Scenarios {
		fmt.Fprintf(&w, "## %s\n\n", s.Title)
		if s.Error != "" {
			fmt.Fprintf(&w, "**Error:** %s\n\n", s.Error)
		}
		if len(s.Runs) > 0 {
			w.WriteString("| figure | median | range | runs |\n|---|---:|---:|---|\n")
			for _, mt := range s.Metrics {
				sm, ok := s.Summary[mt.Key]
				if !ok || len(sm.Runs) == 0 {
					continue
				}
				runs := make([]string, len(sm.Runs))
				for i, v := range sm.Runs {
					runs[i] = num(v, mt.Digits)
				}
				unit := ""
				if mt.Unit != "" {
					unit = " " + mt.Unit
				}
				fmt.Fprintf(&w, "| %s | %s%s | %s–%s | %s |\n", mt.Label, num(sm.Median, mt.Digits), unit,
					num(sm.Min, mt.Digits), num(sm.Max, mt.Digits), strings.Join(runs, ", "))
			}
			w.WriteString("\n")
		}
		for _, n := range s.Notes {
			fmt.Fprintf(&w, "- %s\n", n)
		}
		if len(s.Notes) > 0 {
			w.WriteString("\n")
		}
	}
	if len(r.Profiles) > 0 {
		w.WriteString("## Profiles\n\nShares are of the profiled process's own CPU; a row includes what it calls, so rows overlap.\n\n")
		for _, bd := range r.Breakdowns {
			w.WriteString(bd.markdown())
		}
		for _, p := range r.Profiles {
			fmt.Fprintf(&w, "- [%s](%s)\n", p, p)
		}
		w.WriteString("\n")
	}
	return w.String()
}

func (r *report) flagLine() string { return strings.Join(r.Flags, " ") }

// num formats v with digits decimals and thousands separators.
func num(v float64, digits int) string {
	s := strconv.FormatFloat(v, 'f', digits, 64)
	intPart, frac, _ := strings.Cut(s, ".")
	neg := strings.HasPrefix(intPart, "-")
	intPart = strings.TrimPrefix(intPart, "-")
	var b strings.Builder
	for i, c := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	out := b.String()
	if neg {
		out = "-" + out
	}
	if frac != "" {
		out += "." + frac
	}
	return out
}

// targets checks the goals of issue 7 against the medians.
func (r *report) targets() []target {
	var ts []target
	atLeast := func(name string, s *scenarioResult, key string, want float64, unit string, digits int) {
		if s == nil || !s.has(key) {
			return
		}
		v := s.median(key)
		ts = append(ts, target{Name: name, Want: "≥ " + num(want, digits) + unit, Got: num(v, digits) + unit,
			Value: v, Met: v >= want, By: fmt.Sprintf("%+.0f%%", 100*(v-want)/want)})
	}
	atMost := func(name string, s *scenarioResult, key string, want float64, unit string, digits int) {
		if s == nil || !s.has(key) {
			return
		}
		v := s.median(key)
		by := "—"
		if want > 0 {
			by = fmt.Sprintf("%+.0f%%", 100*(v-want)/want)
		} else if v > want {
			by = fmt.Sprintf("+%s", num(v, digits))
		}
		ts = append(ts, target{Name: name, Want: "≤ " + num(want, digits) + unit, Got: num(v, digits) + unit,
			Value: v, Met: v <= want, By: by})
	}
	s1 := r.scenario("s1")
	atLeast("S1 accept rate", s1, "rate", 5000, " msgs/s", 0)
	atLeast("S1 share of trivial-handler ceiling", s1, "ratio", 35, "%", 1)
	atMost("S1 p99 latency", s1, "p99", 25, " ms", 1)
	if s1 != nil && s1.has("errors") {
		total := 0.0
		for _, v := range s1.Summary["errors"].Runs {
			total += v
		}
		ts = append(ts, target{Name: "S1 errors (all runs)", Want: "0", Got: num(total, 0), Value: total, Met: total == 0, By: "—"})
	}
	ed, rsa := r.scenario("s2-ed25519"), r.scenario("s2-rsa2048")
	atLeast("S2 Ed25519 drain rate", ed, "drain", 2000, " msgs/s", 0)
	atLeast("S2 Ed25519 share of sink ceiling", ed, "ratio_sink", 40, "%", 1)
	atLeast("S2 RSA-2048 drain rate", rsa, "drain", 900, " msgs/s", 0)
	atLeast("S2 RSA-2048 share of 2 × single-core sign rate", rsa, "ratio_sign", 40, "%", 1)
	atMost("S2 Ed25519 CPU per delivered message", ed, "cpu_ms", 1, " ms", 2)
	atMost("S2 RSA-2048 CPU per delivered message", rsa, "cpu_ms", 1, " ms", 2)
	atMost("Light-load accept→delivered p50 (100 msgs/s)", r.scenario("light"), "p50", 50, " ms", 1)
	s3 := r.scenario("s3")
	atLeast("S3 end rate vs start (last 10% / first 10%)", s3, "end_vs_start", 90, "%", 1)
	const mb300 = 300e6 / (1 << 20) // 300 MB in MiB
	atMost("S3 worker RSS", s3, "worker_hwm", mb300, " MiB", 0)
	atMost("S3 api RSS", s3, "api_hwm", mb300, " MiB", 0)
	atLeast("S4 healthy domains vs S2", r.scenario("s4"), "ratio", 90, "%", 1)
	for _, v := range s5Variants() {
		s := r.scenario(v.key())
		atLeast("S5 "+v.name()+" share of sink ceiling (100/conn, same run)", s, "ratio_sink_reuse", 40, "%", 1)
		atLeast("S5 "+v.name()+" share of sink ceiling (1/conn, same run)", s, "ratio_sink", 40, "%", 1)
	}
	cmpS5 := r.scenario("s5-vs-postfix")
	for _, c := range []struct {
		key, name string
		want      float64
	}{
		{"rate_s5-smarthost-none", "S5 no DKIM e2e rate ÷ Postfix", 3},
		{"rate_s5-smarthost-rsa2048", "S5 RSA-2048 e2e rate ÷ Postfix + OpenDKIM", 3},
		{"rate_s5-smarthost-ed25519", "S5 Ed25519 e2e rate ÷ Postfix + OpenDKIM", 4},
	} {
		atLeast(c.name, cmpS5, c.key, c.want, "×", 2)
	}
	atMost("S5 no DKIM CPU per message ÷ Postfix", cmpS5, "cpu_s5-smarthost-none", 1.0/3, "×", 2)
	atMost("S5 RSA-2048 CPU per message ÷ Postfix + OpenDKIM", cmpS5, "cpu_s5-smarthost-rsa2048", 1.0/3, "×", 2)
	return ts
}
