package deploycheck

// The checks must be able to fail. Each case below breaks a real file (or
// feeds a bad input) in one way and expects the problem to be reported in
// words that say what is wrong.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// mutate replaces old with new in s, failing the test when old is not
// there: a case that no longer breaks anything proves nothing.
func mutate(t *testing.T, s, old, new string) string {
	t.Helper()
	if !strings.Contains(s, old) {
		t.Fatalf("mutation target %q not found; update the case", old)
	}
	return strings.Replace(s, old, new, 1)
}

// expect checks that one of the problems contains want.
func expect(t *testing.T, problems []string, want string) {
	t.Helper()
	for _, p := range problems {
		if strings.Contains(p, want) {
			return
		}
	}
	t.Errorf("no problem mentions %q; got %d:\n  %s", want, len(problems), strings.Join(problems, "\n  "))
}

func TestCatchesImageRefs(t *testing.T) {
	for ref, want := range map[string]string{
		"redis":                         "has no tag",
		"redis:latest":                  "uses :latest",
		"localhost:5000/mailferry":      "has no tag",
		"ghcr.io/x/y:${TAG}":            "built from variables",
		"gcr.io/distroless/static@sha1": "malformed digest",
		"redis:8.2.2-alpine":            "",
		"localhost:5000/mailferry:1.0":  "",
		"gcr.io/distroless/static-debian13:nonroot@sha256:0123456789012345678901234567890123456789012345678901234567890123": "",
	} {
		got := checkImageRef(ref)
		if want == "" && got != "" || want != "" && !strings.Contains(got, want) {
			t.Errorf("checkImageRef(%q) = %q; want %q", ref, got, want)
		}
	}
}

func TestCatchesPromQL(t *testing.T) {
	defs := loadMetrics(t, repoRoot(t))
	for _, c := range []struct{ expr, want string }{
		{`rate(mailferry_delivered_total[5m])`, "metric mailferry_delivered_total is not defined"},
		{`sum(rate(mailferry_deliveries_total{status="bounced"}[5m]))`, `has no label "status"`},
		{`sum by (results) (rate(mailferry_deliveries_total[5m]))`, `label "results" in by/without`},
		{`mailferry_queue_depth_bucket`, "mailferry_queue_depth is a desc, which has no _bucket series"},
		{`rate(mailferry_http_requests_total_count[5m])`, "mailferry_http_requests_total is a counter"},
		{`histogram_quantile(0.5, sum by (le) (rate(mailferry_delivery_duration_seconds_bucket{route="/v1"}[5m])))`, `has no label "route"`},
		{`mailferry_queue_depth{state="ready"`, "unclosed {"},
		{`mailferry_queue_depth{state}`, "not followed by a matcher"},
	} {
		expect(t, checkPromQL("test", c.expr, defs), c.want)
	}
	for _, good := range []string{
		`histogram_quantile(0.99, sum by (le, route) (rate(mailferry_http_request_duration_seconds_bucket{route!~"/metrics"}[$__rate_interval])))`,
		`max(mailferry_queue_depth{state=~"ready|inflight"}) > 0 and on () (sum(increase(mailferry_deliveries_total{result="delivered"}[15m])) or vector(0)) == 0`,
		`sum(rate(mailferry_accept_batch_size_sum[5m])) / sum(rate(mailferry_accept_batch_size_count[5m]))`,
		`up{job="mailferry-api", instance="x"} == 0`,
	} {
		if ps := checkPromQL("test", good, defs); len(ps) > 0 {
			t.Errorf("checkPromQL(%q) reported %v", good, ps)
		}
	}
}

func TestCatchesEnvNames(t *testing.T) {
	expect(t, checkEnvNames("f", "a: 1\nMAILFERRY_HOSTNAME: x\nMAILFERRY_HOST_NAME: y\n"), "f:3: MAILFERRY_HOST_NAME is not a variable")
	if ps := checkEnvNames("f", "MAILFERRY_HOSTNAME, MAILFERRY_TLS_KEY and MAILFERRY_* in prose"); len(ps) > 0 {
		t.Errorf("known names reported: %v", ps)
	}
}

func TestCatchesDockerfile(t *testing.T) {
	root := repoRoot(t)
	orig := string(readRepoFile(t, root, "Dockerfile"))
	gover := goDirective(string(readRepoFile(t, root, "go.mod")))
	if ps := checkDockerfile(orig, gover); len(ps) > 0 {
		t.Fatalf("the real Dockerfile has %d problems (TestDockerfile lists them); the cases below need a clean one", len(ps))
	}
	for _, c := range []struct{ old, new, want string }{
		{"CGO_ENABLED=0 go build", "go build", "without CGO_ENABLED=0"},
		{"-trimpath ", "", "without -trimpath"},
		{`-ldflags "-s -w `, `-ldflags "-w `, "lacks -s"},
		{"-X main.version=${VERSION}", "-X main.version=dev", "does not stamp"},
		{"ARG VERSION=dev\nRUN", "RUN", "declares no ARG VERSION"},
		{"FROM golang:1.26.8 AS build", "FROM golang AS build", "has no tag"},
		{"FROM golang:1.26.8 AS build", "FROM golang:1.25.0 AS build", "older than go.mod"},
		{"FROM gcr.io/distroless/static-debian13:nonroot", "FROM gcr.io/distroless/static-debian13:latest", "uses :latest"},
		{"USER 65532:65532", "USER 0", "is root"},
		{"USER 65532:65532", "USER nonroot", "not numeric"},
		{"USER 65532:65532\n", "", "no USER"},
		{"EXPOSE 8080 587 465", "EXPOSE 8080 587", "port 465 is not in EXPOSE"},
		{`ENTRYPOINT ["/mailferry"]`, "ENTRYPOINT /mailferry", "exec form"},
		{`CMD ["serve"]`, `CMD ["serve", "--roles", "api"]`, `want ["serve"]`},
		{"COPY --from=build /out/mailferry /mailferry", "COPY --from=build /out/mailferry /usr/bin/mailferry", "no COPY --from"},
	} {
		expect(t, checkDockerfile(mutate(t, orig, c.old, c.new), gover), c.want)
	}
}

func TestCatchesCompose(t *testing.T) {
	root := repoRoot(t)
	orig := string(readRepoFile(t, root, "docker-compose.yml"))
	parse := func(s string) composeFile {
		t.Helper()
		var c composeFile
		if err := yaml.Unmarshal([]byte(s), &c); err != nil {
			t.Fatalf("mutated compose file does not parse: %v", err)
		}
		return c
	}
	if ps := checkCompose(parse(orig), root); len(ps) > 0 {
		t.Fatalf("the real compose file has %d problems (TestCompose lists them); the cases below need a clean one", len(ps))
	}
	for _, c := range []struct{ old, new, want string }{
		{`"--appendonly", "yes", `, "", "does not turn on AOF"},
		{"image: redis:8.2.2-alpine", "image: redis", "has no tag"},
		{"image: axllent/mailpit:v1.28.2", "image: axllent/mailpit:latest", "uses :latest"},
		{"image: postgres:16.14-alpine", "image: postgres:17.6-alpine", "is not PostgreSQL 16"},
		{`pg_isready -U mailferry -d mailferry`, `true`, "does not run pg_isready"},
		{"      - postgres-data:/var/lib/postgresql/data\n", "", "no named volume on /var/lib/postgresql/data"},
		{`    restart: "no"` + "\n", "", "runs forever"},
		{`"--maxmemory-policy", "noeviction"]`, `]`, "lacks --maxmemory-policy noeviction"},
		{"--cluster-replicas 1", "--cluster-replicas 0", "--cluster-replicas 1"},
		{"  redis-node-6:\n", "  redis-six:\n", "has 5 redis-node-N services"},
		{"condition: service_completed_successfully", "condition: service_started", "service_completed_successfully"},
		{"replicas: 2", "replicas: 3", "deploy.replicas must be 2"},
		{`MAILFERRY_AUTO_MIGRATE: "false"`, `MAILFERRY_AUTO_MIGRATE: "true"`, "MAILFERRY_AUTO_MIGRATE must be"},
		{"MAILFERRY_SMARTHOST: smtp://mailpit:1025", "MAILFERRY_SMARTHOST: smtp://mailhog:1025", "does not point at the mailpit service"},
		{"${MAILFERRY_HOSTNAME:-mailferry.localhost}", "mail_ferry!", `MAILFERRY_HOSTNAME: "mail_ferry!" is not a host name`},
		{"${MAILFERRY_SECRET_KEY:-compose-placeholder-secret-change-me-0123456789}", "short", "MAILFERRY_SECRET_KEY: too short"},
		{"${MAILFERRY_LOG_FORMAT:-text}", "${MAILFERRY_LOG_FORMAT}", "has no default and is not set"},
		{"stop_grace_period: 60s", "stop_grace_period: 10s", "stop_grace_period"},
		{`profiles: ["monitoring"]`, "profiles: []", "want [monitoring]"},
		{"./deploy/prometheus:/etc/prometheus:ro", "./deploy/prom:/etc/prometheus:ro", "bind mount source ./deploy/prom does not exist"},
		{"./deploy/prometheus:/etc/prometheus:ro", "./deploy/prometheus:/etc/prometheus", "is writable"},
		{"      - redis-data:/data", "      - redis-store:/data", "volume redis-store is not declared"},
		{"      - prometheus\n", "      - prometheus2\n", "depends on prometheus2, which is not a service"},
	} {
		expect(t, checkCompose(parse(mutate(t, orig, c.old, c.new)), root), c.want)
	}
	cmd := dockerfileCmd(t, root)
	expect(t, checkRoleCoverage("compose", composeInvocations(parse(mutate(t, orig, `"api,scheduler,webhooks"`, `"api,webhooks"`)), cmd)), "no service runs the scheduler role")
	expect(t, checkRoleCoverage("compose", composeInvocations(parse(mutate(t, orig, `"api,scheduler,webhooks"`, `"api,scheduler"`)), cmd)), "no service runs the webhooks role")
	expect(t, checkRoleCoverage("compose", composeInvocations(parse(mutate(t, orig, `["serve", "--roles", "worker"]`, `["migrate"]`)), cmd)), "no service runs the worker role")
}

func TestCatchesKubernetes(t *testing.T) {
	root := repoRoot(t)
	dir := filepath.Join(root, filepath.FromSlash(kubeDir))
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	var names []string
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = string(data)
		names = append(names, e.Name())
	}
	check := func(fs map[string]string) []string {
		t.Helper()
		b, err := parseKube(func(name string) ([]byte, error) {
			s, ok := fs[name]
			if !ok {
				return nil, os.ErrNotExist
			}
			return []byte(s), nil
		})
		if err != nil {
			return []string{err.Error()}
		}
		return checkKube(b, names)
	}
	if ps := check(files); len(ps) > 0 {
		t.Fatalf("the real base has %d problems (TestKubernetes lists them); the cases below need a clean one", len(ps))
	}
	for _, c := range []struct{ file, old, new, want string }{
		{"api.yaml", "readOnlyRootFilesystem: true\n            allowPrivilegeEscalation: false\n            capabilities:\n              drop: [\"ALL\"]\n      containers:", "readOnlyRootFilesystem: false\n            allowPrivilegeEscalation: false\n            capabilities:\n              drop: [\"ALL\"]\n      containers:", "container migrate: securityContext.readOnlyRootFilesystem is not true"},
		{"api.yaml", "allowPrivilegeEscalation: false\n            capabilities:\n              drop: [\"ALL\"]\n          volumeMounts:", "capabilities:\n              drop: [\"ALL\"]\n          volumeMounts:", "container mailferry: securityContext.allowPrivilegeEscalation is not false"},
		{"worker.yaml", "drop: [\"ALL\"]\n          volumeMounts:", "drop: [\"NET_RAW\"]\n          volumeMounts:", "capabilities.drop does not include ALL"},
		{"worker.yaml", "runAsNonRoot: true\n            readOnlyRootFilesystem: true\n            allowPrivilegeEscalation: false\n            capabilities:\n              drop: [\"ALL\"]\n          volumeMounts:", "runAsNonRoot: false\n            readOnlyRootFilesystem: true\n            allowPrivilegeEscalation: false\n            capabilities:\n              drop: [\"ALL\"]\n          volumeMounts:", "container mailferry: runAsNonRoot is not true"},
		{"worker.yaml", "        runAsNonRoot: true\n        runAsUser: 65532", "        runAsNonRoot: true\n        runAsUser: 0", "runAsUser is 0"},
		{"worker.yaml", "type: RuntimeDefault", "type: Unconfined", "seccompProfile is not RuntimeDefault"},
		{"worker.yaml", "terminationGracePeriodSeconds: 60", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds must be at least 45"},
		{"worker.yaml", "path: /readyz", "path: /ready", "readinessProbe checks /ready; want /readyz"},
		{"api.yaml", "          livenessProbe:\n", "          otherProbe:\n", "no livenessProbe with httpGet /healthz"},
		{"api.yaml", "path: /healthz\n              port: http\n            periodSeconds: 10", "path: /healthz\n              port: 9090\n            periodSeconds: 10", "livenessProbe port 9090 is not a containerPort"},
		{"worker.yaml", "            limits:\n              cpu: \"2\"\n              # Messages", "            limits:\n              cpu: \"2\"\n            x:\n              # Messages", "resources.limits.memory is not set"},
		{"worker.yaml", "enableServiceLinks: false", "enableServiceLinks: true", "enableServiceLinks is not false"},
		{"worker.yaml", "  revisionHistoryLimit: 5", "  replicas: 3\n  revisionHistoryLimit: 5", "sets replicas"},
		{"worker.yaml", "args: [\"serve\", \"--roles\", \"worker\"]", "args: [\"serve\", \"--roles\", \"worker\"]\n          command: [\"/bin/sh\"]", "replaces the image's /mailferry"},
		{"worker.yaml", "                name: mailferry\n          resources:", "                name: mailferry-secrets\n          resources:", "envFrom names Secret mailferry-secrets"},
		{"configmap.yaml", "MAILFERRY_HOSTNAME: mail.example.com", "MAILFERRY_HOSTNAME: -bad-", "is not a host name"},
		{"configmap.yaml", "MAILFERRY_HTTP_ADDR: \":8080\"", "MAILFERRY_HTTP_ADDR: \":9000\"", "MAILFERRY_HTTP_ADDR is \":9000\""},
		{"configmap.yaml", "MAILFERRY_AUTO_MIGRATE: \"false\"", "MAILFERRY_AUTO_MIGRATE: \"true\"", "should set MAILFERRY_AUTO_MIGRATE=false"},
		{"secret.yaml", "redis://:CHANGE-ME@", "redis://:hunter2@", "stringData.MAILFERRY_REDIS_URL is not a placeholder"},
		{"service.yaml", "targetPort: submissions", "targetPort: smtps", `targets "smtps", which no container of mailferry-api declares`},
		{"service.yaml", "      port: 465\n", "      port: 4650\n", "no port 465"},
		{"pdb.yaml", "      app.kubernetes.io/component: worker\n", "      app.kubernetes.io/component: workers\n", "Deployment mailferry-worker has no PodDisruptionBudget"},
		{"hpa.yaml", "name: mailferry-worker\n  minReplicas", "name: mailferry-workers\n  minReplicas", "is not a Deployment of the base"},
		{"hpa.yaml", "minReplicas: 2", "minReplicas: 1", "minReplicas below 2"},
		{"servicemonitor.yaml", "- port: http", "- port: metrics", `endpoint port "metrics" is not a named port`},
		{"kustomization.yaml", "  - pdb.yaml\n", "", "pdb.yaml is not listed"},
		{"kustomization.yaml", "    newTag: \"0.1.0\"\n", "", "has no tag"},
	} {
		fs := map[string]string{}
		for k, v := range files {
			fs[k] = v
		}
		fs[c.file] = mutate(t, fs[c.file], c.old, c.new)
		expect(t, check(fs), c.want)
	}
}

func TestCatchesMonitoring(t *testing.T) {
	root := repoRoot(t)
	defs := loadMetrics(t, root)
	alerts := string(readRepoFile(t, root, "deploy/prometheus/alerts.yml"))
	rules := func(s string) ruleFile {
		var rf ruleFile
		if err := yaml.Unmarshal([]byte(s), &rf); err != nil {
			t.Fatal(err)
		}
		return rf
	}
	for _, c := range []struct{ old, new, want string }{
		{"severity: critical", "severity: page", `severity label "page"`},
		{"alert: MailferryNoDeliveries", "alert: MailferryNoDeliveriez", "no alert MailferryNoDeliveries"},
		{`mailferry_dependency_up{dependency="redis"}`, `mailferry_ready{dependency="redis"}`, "metric mailferry_ready is not defined"},
		{"        for: 2m\n", "", "no for"},
		{"alert: MailferryNoWorkers", "alert: no_workers", "CamelCase"},
	} {
		expect(t, checkRules("alerts.yml", rules(mutate(t, alerts, c.old, c.new)), defs), c.want)
	}

	b, _ := loadKube(t, root)
	rule := b.ofKind("PrometheusRule")[0]
	expect(t, checkRuleCopy([]byte(mutate(t, alerts, "for: 15m", "for: 16m")), rule), "differ from deploy/prometheus/alerts.yml")

	dash := string(readRepoFile(t, root, "deploy/grafana/mailferry.json"))
	for _, c := range []struct{ old, new, want string }{
		{`"id": 2,`, `"id": 3,`, "id 3 is also panel"},
		{"mailferry_tls_connections_total{version!=", "mailferry_tls_connection_total{version!=", "mailferry_tls_connection_total is not defined"},
		{`"uid": "${datasource}"`, `"uid": "prometheus"`, "want {prometheus ${datasource}}"},
		{`"w": 4,`, `"w": 40,`, "outside the 24-column grid"},
	} {
		var d grafanaDashboard
		if err := json.Unmarshal([]byte(mutate(t, dash, c.old, c.new)), &d); err != nil {
			t.Fatal(err)
		}
		expect(t, checkDashboard("dash", d, defs), c.want)
	}
}

func TestCatchesDynamicBinary(t *testing.T) {
	// Debian's /bin/sh is dynamically linked against libc.
	expect(t, checkStatic("/bin/sh"), "PT_INTERP")
}

func TestCatchesBadYAMLDocument(t *testing.T) {
	_, err := parseYAML("x.yaml", []byte("a: 1\n---\nb: [\n"))
	if err == nil || !strings.Contains(err.Error(), "x.yaml: document 2") {
		t.Errorf("parseYAML error %v; want it to name document 2", err)
	}
}

func TestDockerignoreMatching(t *testing.T) {
	rules, err := parseDockerignore("# comment\n.git\n/mailferry\n**/*.test\ndeploy\ndocs/*.md\n!docs/keep.md\n")
	if err != nil {
		t.Fatal(err)
	}
	for rel, want := range map[string]bool{
		".git/HEAD":                true,
		"mailferry":                true,
		"cmd/mailferry/main.go":    false,
		"cmd/mailferry":            false,
		"relay/relay.test":         true,
		"a/b/c.test":               true,
		"deploy/kubernetes/x.yaml": true,
		"docs/rfc.md":              true,
		"docs/keep.md":             false,
		"docs/sub/rfc.md":          false,
		"go.mod":                   false,
	} {
		if got := ignored(rules, rel); got != want {
			t.Errorf("ignored(%q) = %v; want %v", rel, got, want)
		}
	}
}

func TestSplitImage(t *testing.T) {
	for ref, want := range map[string][2]string{
		"mailferry":                     {"mailferry", ""},
		"mailferry:local":               {"mailferry", "local"},
		"localhost:5000/mailferry":      {"localhost:5000/mailferry", ""},
		"localhost:5000/mailferry:1.0":  {"localhost:5000/mailferry", "1.0"},
		"gcr.io/x/y@sha256:abc":         {"gcr.io/x/y", "@sha256:abc"},
		"gcr.io/x/y:nonroot@sha256:abc": {"gcr.io/x/y", "nonroot@sha256:abc"},
	} {
		name, tag := splitImage(ref)
		if name != want[0] || tag != want[1] {
			t.Errorf("splitImage(%q) = %q, %q; want %q, %q", ref, name, tag, want[0], want[1])
		}
	}
}
