package deploycheck

import (
	"encoding/json"
	"fmt"
	"path"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// checkRules checks alert rules: each has a unique CamelCase name, an
// expression over defined metrics and labels, a for, a severity and a
// summary and description; and the alerts the brief asks for exist.
func checkRules(file string, rf ruleFile, defs metricSet) []string {
	var ps problems
	seen := map[string]bool{}
	if len(rf.Groups) == 0 {
		ps.add("%s: no rule groups", file)
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			name := r.Alert
			if name == "" {
				name = r.Record
			}
			where := fmt.Sprintf("%s: group %s, rule %s", file, g.Name, name)
			switch {
			case r.Alert == "" && r.Record == "":
				ps.add("%s: a rule has neither alert nor record", where)
			case seen[name]:
				ps.add("%s: defined twice", where)
			}
			seen[name] = true
			if strings.TrimSpace(r.Expr) == "" {
				ps.add("%s: no expr", where)
				continue
			}
			ps = append(ps, checkPromQL(where, r.Expr, defs)...)
			if r.Alert == "" {
				continue
			}
			if !regexp.MustCompile(`^Mailferry[A-Z][A-Za-z0-9]*$`).MatchString(r.Alert) {
				ps.add("%s: alert names are CamelCase and start with Mailferry", where)
			}
			if r.For == "" {
				ps.add("%s: no for; a single bad scrape would page", where)
			}
			if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
				ps.add("%s: severity label %q is not critical, warning or info", where, r.Labels["severity"])
			}
			for _, a := range []string{"summary", "description"} {
				if r.Annotations[a] == "" {
					ps.add("%s: no %s annotation", where, a)
				}
			}
		}
	}
	for _, want := range []string{"MailferryQueueGrowing", "MailferryBounceRateHigh", "MailferryNoDeliveries", "MailferryRedisUnreachable", "MailferryPostgresUnreachable"} {
		if !seen[want] {
			ps.add("%s: no alert %s", file, want)
		}
	}
	return ps
}

// grafanaDashboard is the part of a dashboard the checks read.
type grafanaDashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []grafanaVar `json:"list"`
	} `json:"templating"`
	Panels []grafanaPanel `json:"panels"`
}

type grafanaVar struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Query string `json:"query"`
}

type grafanaPanel struct {
	ID         int                `json:"id"`
	Type       string             `json:"type"`
	Title      string             `json:"title"`
	Datasource *grafanaDS         `json:"datasource"`
	GridPos    struct{ X, W int } `json:"gridPos"`
	Targets    []struct {
		RefID      string     `json:"refId"`
		Expr       string     `json:"expr"`
		Datasource *grafanaDS `json:"datasource"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"` // in collapsed rows
}

type grafanaDS struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// checkDashboard checks the dashboard: unique panel ids, panels inside the
// 24-column grid, a Prometheus data source through the ${datasource}
// variable, every query over defined metrics and labels, and a panel for
// each thing the brief names.
func checkDashboard(file string, d grafanaDashboard, defs metricSet) []string {
	var ps problems
	if d.UID == "" || d.Title == "" {
		ps.add("%s: uid and title must be set (provisioning keys on the uid)", file)
	}
	hasDSVar := slices.ContainsFunc(d.Templating.List, func(v grafanaVar) bool {
		return v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus"
	})
	if !hasDSVar {
		ps.add("%s: no templating variable datasource of type datasource (query prometheus)", file)
	}
	ids := map[int]string{}
	var exprs []string
	var walk func([]grafanaPanel)
	walk = func(panels []grafanaPanel) {
		for _, p := range panels {
			where := fmt.Sprintf("%s: panel %d %q", file, p.ID, p.Title)
			if other, dup := ids[p.ID]; dup {
				ps.add("%s: id %d is also panel %q", where, p.ID, other)
			}
			ids[p.ID] = p.Title
			if p.GridPos.W <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
				ps.add("%s: gridPos x=%d w=%d is outside the 24-column grid", where, p.GridPos.X, p.GridPos.W)
			}
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if len(p.Targets) == 0 {
				ps.add("%s: no queries", where)
			}
			for _, ds := range append([]*grafanaDS{p.Datasource}, targetsDS(p)...) {
				if ds == nil || ds.Type != "prometheus" || ds.UID != "${datasource}" {
					ps.add("%s: data source %+v; want {prometheus ${datasource}}", where, ds)
					break
				}
			}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					ps.add("%s: query %s is empty", where, tg.RefID)
					continue
				}
				exprs = append(exprs, tg.Expr)
				ps = append(ps, checkPromQL(fmt.Sprintf("%s query %s", where, tg.RefID), tg.Expr, defs)...)
			}
		}
	}
	walk(d.Panels)
	all := strings.Join(exprs, "\n")
	for what, want := range map[string]string{
		"accept rate":             "mailferry_messages_accepted_total",
		"delivery outcomes":       "mailferry_deliveries_total",
		"queue depth":             "mailferry_queue_depth",
		"delivery latency p50":    "histogram_quantile(0.5, sum by (le) (rate(mailferry_delivery_duration_seconds_bucket",
		"delivery latency p99":    "histogram_quantile(0.99, sum by (le) (rate(mailferry_delivery_duration_seconds_bucket",
		"TLS share":               "mailferry_tls_connections_total",
		"bounce rate":             `mailferry_deliveries_total{result="bounced"}`,
		"HTTP error rate":         `mailferry_http_requests_total{code=~"5.."}`,
		"dependency reachability": "mailferry_dependency_up",
	} {
		if !strings.Contains(all, want) {
			ps.add("%s: no panel shows %s (no query contains %s)", file, what, want)
		}
	}
	return ps
}

func targetsDS(p grafanaPanel) []*grafanaDS {
	var out []*grafanaDS
	for _, t := range p.Targets {
		out = append(out, t.Datasource)
	}
	return out
}

type prometheusConfig struct {
	RuleFiles     []string `yaml:"rule_files"`
	ScrapeConfigs []struct {
		JobName     string `yaml:"job_name"`
		MetricsPath string `yaml:"metrics_path"`
		DNSSD       []struct {
			Names []string `yaml:"names"`
			Port  int      `yaml:"port"`
		} `yaml:"dns_sd_configs"`
		Static []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

// checkPrometheus checks the compose Prometheus: its rule files are in
// deploy/prometheus, and it scrapes the api and worker services on the
// HTTP port under the job names the alerts use.
func checkPrometheus(pc prometheusConfig, c composeFile, ruleFiles []string) []string {
	var ps problems
	const file = "deploy/prometheus/prometheus.yml"
	for _, rf := range pc.RuleFiles {
		if !slices.Contains(ruleFiles, path.Base(rf)) {
			ps.add("%s: rule file %s is not in deploy/prometheus", file, rf)
		}
	}
	if len(pc.RuleFiles) == 0 {
		ps.add("%s: loads no rule files", file)
	}
	jobs := map[string][]string{}
	for _, sc := range pc.ScrapeConfigs {
		if sc.MetricsPath != "" && sc.MetricsPath != "/metrics" {
			ps.add("%s: job %s scrapes %s; Mailferry serves /metrics", file, sc.JobName, sc.MetricsPath)
		}
		for _, sd := range sc.DNSSD {
			for _, n := range sd.Names {
				if _, ok := c.Services[n]; !ok {
					ps.add("%s: job %s looks up %s, which is not a compose service", file, sc.JobName, n)
				}
				if sd.Port != 8080 {
					ps.add("%s: job %s scrapes port %d; Mailferry's HTTP port is 8080", file, sc.JobName, sd.Port)
				}
				jobs[sc.JobName] = append(jobs[sc.JobName], n)
			}
		}
	}
	for job, svc := range map[string]string{"mailferry-api": "api", "mailferry-worker": "worker"} {
		if !slices.Contains(jobs[job], svc) {
			ps.add("%s: no job %s scraping the %s service (alerts and dashboard filter on that job name)", file, job, svc)
		}
	}
	return ps
}

// checkGrafanaProvisioning checks the data source points at the compose
// Prometheus and the dashboard provider reads the folder compose mounts
// mailferry.json into.
func checkGrafanaProvisioning(datasources, dashboards []byte, c composeFile) []string {
	var ps problems
	type datasource struct {
		Type string `yaml:"type"`
		URL  string `yaml:"url"`
	}
	var ds struct {
		Datasources []datasource `yaml:"datasources"`
	}
	if err := yaml.Unmarshal(datasources, &ds); err != nil {
		return []string{"grafana datasources: " + err.Error()}
	}
	if !slices.ContainsFunc(ds.Datasources, func(d datasource) bool {
		return d.Type == "prometheus" && d.URL == "http://prometheus:9090"
	}) {
		ps.add("deploy/grafana/provisioning/datasources: no prometheus data source at http://prometheus:9090")
	}
	type provider struct {
		Type    string `yaml:"type"`
		Options struct {
			Path string `yaml:"path"`
		} `yaml:"options"`
	}
	var dp struct {
		Providers []provider `yaml:"providers"`
	}
	if err := yaml.Unmarshal(dashboards, &dp); err != nil {
		return append(ps, "grafana dashboards: "+err.Error())
	}
	g := c.Services["grafana"]
	var dashTarget string
	for _, v := range g.Volumes {
		if path.Clean(v.Source) == "deploy/grafana/mailferry.json" {
			dashTarget = path.Dir(v.Target)
		}
		if path.Clean(v.Source) == "deploy/grafana/provisioning" && v.Target != "/etc/grafana/provisioning" {
			ps.add("docker-compose.yml: grafana mounts the provisioning folder on %s; Grafana reads /etc/grafana/provisioning", v.Target)
		}
	}
	if dashTarget == "" {
		ps.add("docker-compose.yml: grafana does not mount ./deploy/grafana/mailferry.json")
	}
	if !slices.ContainsFunc(dp.Providers, func(p provider) bool {
		return p.Type == "file" && path.Clean(p.Options.Path) == dashTarget
	}) {
		ps.add("deploy/grafana/provisioning/dashboards: no file provider reads %s, where compose mounts the dashboard", dashTarget)
	}
	return ps
}

// checkRuleCopy checks the PrometheusRule carries the same groups as
// alerts.yml.
func checkRuleCopy(alerts []byte, rule kubeObject) []string {
	var a, k struct {
		Groups any `yaml:"groups"`
	}
	if err := yaml.Unmarshal(alerts, &a); err != nil {
		return []string{err.Error()}
	}
	if err := rule.Spec.Decode(&k); err != nil {
		return []string{err.Error()}
	}
	if !reflect.DeepEqual(a.Groups, k.Groups) {
		return []string{fmt.Sprintf("%s: spec.groups differ from deploy/prometheus/alerts.yml; copy the groups over", rule)}
	}
	return nil
}

func TestAlertRules(t *testing.T) {
	root := repoRoot(t)
	defs := loadMetrics(t, root)
	var rf ruleFile
	if err := yaml.Unmarshal(readRepoFile(t, root, "deploy/prometheus/alerts.yml"), &rf); err != nil {
		t.Fatalf("deploy/prometheus/alerts.yml: %v", err)
	}
	report(t, checkRules("deploy/prometheus/alerts.yml", rf, defs))

	b, _ := loadKube(t, root)
	rules := b.ofKind("PrometheusRule")
	if len(rules) != 1 {
		t.Fatalf("%s: want one PrometheusRule, have %d", kubeDir, len(rules))
	}
	report(t, checkRuleCopy(readRepoFile(t, root, "deploy/prometheus/alerts.yml"), rules[0]))
}

// TestAlertRuleTests: the promtool unit tests feed series named like the
// real ones, or they prove nothing.
func TestAlertRuleTests(t *testing.T) {
	root := repoRoot(t)
	defs := loadMetrics(t, root)
	var tf struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			InputSeries []struct {
				Series string `yaml:"series"`
			} `yaml:"input_series"`
		} `yaml:"tests"`
	}
	const file = "deploy/prometheus/alerts_test.yml"
	if err := yaml.Unmarshal(readRepoFile(t, root, file), &tf); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if !slices.Equal(tf.RuleFiles, []string{"alerts.yml"}) {
		t.Errorf("%s: rule_files %v; want [alerts.yml]", file, tf.RuleFiles)
	}
	for i, tc := range tf.Tests {
		for _, s := range tc.InputSeries {
			report(t, checkPromQL(fmt.Sprintf("%s: test %d series", file, i+1), s.Series, defs))
		}
	}
}

func TestDashboard(t *testing.T) {
	root := repoRoot(t)
	defs := loadMetrics(t, root)
	const file = "deploy/grafana/mailferry.json"
	var d grafanaDashboard
	if err := json.Unmarshal(readRepoFile(t, root, file), &d); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	report(t, checkDashboard(file, d, defs))
}

func TestPrometheusConfig(t *testing.T) {
	root := repoRoot(t)
	var pc prometheusConfig
	if err := yaml.Unmarshal(readRepoFile(t, root, "deploy/prometheus/prometheus.yml"), &pc); err != nil {
		t.Fatalf("deploy/prometheus/prometheus.yml: %v", err)
	}
	var ruleFiles []string
	for _, f := range deployFiles(t, root) {
		if path.Dir(f) == "deploy/prometheus" {
			ruleFiles = append(ruleFiles, path.Base(f))
		}
	}
	report(t, checkPrometheus(pc, loadCompose(t, root), ruleFiles))
}

func TestGrafanaProvisioning(t *testing.T) {
	root := repoRoot(t)
	report(t, checkGrafanaProvisioning(
		readRepoFile(t, root, "deploy/grafana/provisioning/datasources/prometheus.yml"),
		readRepoFile(t, root, "deploy/grafana/provisioning/dashboards/mailferry.yml"),
		loadCompose(t, root)))
}

// TestDeployYAMLParses: every YAML file under deploy/ parses, all its
// documents, including those no other test reads.
func TestDeployYAMLParses(t *testing.T) {
	root := repoRoot(t)
	n := 0
	for _, f := range deployFiles(t, root) {
		if !isYAML(f) {
			continue
		}
		docs, err := parseYAML(f, readRepoFile(t, root, f))
		if err != nil {
			t.Error(err)
			continue
		}
		if len(docs) == 0 {
			t.Errorf("%s: no YAML document", f)
		}
		for _, d := range docs {
			var v any
			if err := d.decode(&v); err != nil {
				t.Error(err)
			}
		}
		n++
	}
	if n < 10 {
		t.Errorf("found only %d YAML files under deploy/", n)
	}
}
