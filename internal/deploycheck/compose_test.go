package deploycheck

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

type composeFile struct {
	Name     string
	Services map[string]composeService
	Volumes  map[string]any
}

type composeService struct {
	Image           string
	Build           any
	Command         stringList
	Entrypoint      stringList
	Environment     envMap
	EnvFile         any       `yaml:"env_file"`
	DependsOn       dependsOn `yaml:"depends_on"`
	Deploy          struct{ Replicas *int }
	Profiles        []string
	Restart         string
	Volumes         []volumeMount
	Healthcheck     struct{ Test stringList }
	StopGracePeriod string `yaml:"stop_grace_period"`
}

// envMap is compose's environment: a mapping, or a list of NAME=value.
type envMap map[string]string

func (e *envMap) UnmarshalYAML(n *yaml.Node) error {
	m := envMap{}
	switch n.Kind {
	case yaml.MappingNode:
		var raw map[string]*string
		if err := n.Decode(&raw); err != nil {
			return err
		}
		for k, v := range raw {
			if v != nil {
				m[k] = *v
			} else {
				m[k] = ""
			}
		}
	case yaml.SequenceNode:
		var list []string
		if err := n.Decode(&list); err != nil {
			return err
		}
		for _, kv := range list {
			k, v, _ := strings.Cut(kv, "=")
			m[k] = v
		}
	default:
		return fmt.Errorf("line %d: environment must be a mapping or a list", n.Line)
	}
	*e = m
	return nil
}

// dependsOn is depends_on: a list of services, or a mapping to conditions.
type dependsOn map[string]string

func (d *dependsOn) UnmarshalYAML(n *yaml.Node) error {
	m := dependsOn{}
	switch n.Kind {
	case yaml.SequenceNode:
		var list []string
		if err := n.Decode(&list); err != nil {
			return err
		}
		for _, s := range list {
			m[s] = "service_started"
		}
	case yaml.MappingNode:
		var raw map[string]struct{ Condition string }
		if err := n.Decode(&raw); err != nil {
			return err
		}
		for s, c := range raw {
			if c.Condition == "" {
				c.Condition = "service_started"
			}
			m[s] = c.Condition
		}
	default:
		return fmt.Errorf("line %d: depends_on must be a list or a mapping", n.Line)
	}
	*d = m
	return nil
}

// volumeMount is a service volume in short ("src:dst[:mode]") or long form.
type volumeMount struct {
	Source, Target string
	ReadOnly       bool
}

func (v *volumeMount) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		parts := strings.Split(n.Value, ":")
		switch len(parts) {
		case 1:
			v.Target = parts[0]
		case 2, 3:
			v.Source, v.Target = parts[0], parts[1]
			v.ReadOnly = len(parts) == 3 && slices.Contains(strings.Split(parts[2], ","), "ro")
		default:
			return fmt.Errorf("line %d: volume %q is not source:target[:mode]", n.Line, n.Value)
		}
		return nil
	}
	var long struct {
		Source, Target string
		ReadOnly       bool `yaml:"read_only"`
	}
	if err := n.Decode(&long); err != nil {
		return err
	}
	v.Source, v.Target, v.ReadOnly = long.Source, long.Target, long.ReadOnly
	return nil
}

// isBind says whether the source is a host path rather than a named volume.
func (v volumeMount) isBind() bool {
	return strings.HasPrefix(v.Source, ".") || strings.HasPrefix(v.Source, "/") || strings.HasPrefix(v.Source, "~")
}

// interpolate expands compose's ${NAME}, ${NAME:-default}, ${NAME-default}
// and $$ with vars; ${NAME:?msg} and unset names without a default are
// errors, as they would be for `docker compose up` with vars as the
// environment.
func interpolate(s string, vars map[string]string) (string, error) {
	re := regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)`)
	var err error
	out := re.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		g := re.FindStringSubmatch(m)
		name, op, arg := g[1], g[2], g[3]
		if name == "" {
			name = g[4]
		}
		v, set := vars[name]
		switch op {
		case ":-":
			if v == "" {
				return arg
			}
		case "-":
			if !set {
				return arg
			}
		case ":?", "?":
			if !set || op == ":?" && v == "" {
				err = fmt.Errorf("%s must be set: %s", name, arg)
			}
		default:
			if !set {
				err = fmt.Errorf("${%s} has no default and is not set", name)
			}
		}
		return v
	})
	return out, err
}

// isMailferry says whether a compose service runs the Mailferry image.
func (s composeService) isMailferry() bool {
	return s.Build != nil || isMailferryImage(s.Image)
}

// invocation is a mailferry command line found in a deployment file.
type invocation struct {
	where string
	args  []string
}

// composeInvocations lists the mailferry command lines of compose's
// services; without a command, the image's CMD (defaultCmd) runs.
func composeInvocations(c composeFile, defaultCmd []string) []invocation {
	var out []invocation
	for _, name := range sortedKeys(c.Services) {
		s := c.Services[name]
		if !s.isMailferry() {
			continue
		}
		args := []string(s.Command)
		if len(args) == 0 {
			args = defaultCmd
		}
		out = append(out, invocation{where: "docker-compose.yml: service " + name, args: args})
	}
	return out
}

// rolesOf returns the roles of a serve command line ("serve" alone runs
// them all); ok is false for other commands.
func rolesOf(args []string) (roles []string, ok bool) {
	if len(args) == 0 || args[0] != "serve" {
		return nil, false
	}
	value := strings.Join(allRoles, ",")
	for i, a := range args[1:] {
		a = strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		if a == "roles" && i+2 < len(args) {
			value = args[i+2]
		} else if v, found := strings.CutPrefix(a, "roles="); found {
			value = v
		}
	}
	for _, r := range strings.Split(value, ",") {
		if r = strings.TrimSpace(r); r != "" {
			roles = append(roles, r)
		}
	}
	return roles, true
}

// allRoles are the roles of `mailferry serve --roles`; TestBinary checks
// the binary accepts each.
var allRoles = []string{"api", "worker", "scheduler", "webhooks"}

// checkRoleCoverage checks that every role runs somewhere: without a
// scheduler no retry is ever due, without a worker nothing is delivered.
func checkRoleCoverage(where string, invs []invocation) []string {
	var ps problems
	have := map[string]bool{}
	for _, inv := range invs {
		roles, _ := rolesOf(inv.args)
		for _, r := range roles {
			have[r] = true
		}
	}
	for _, r := range allRoles {
		if !have[r] {
			ps.add("%s: no service runs the %s role", where, r)
		}
	}
	return ps
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// checkConfig loads env with the binary's own config.Load and returns its
// complaints, one per bad variable.
func checkConfig(where string, env map[string]string) []string {
	var ps problems
	_, err := loadConfig(env)
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			ps.add("%s: the binary would refuse this configuration: %s", where, line)
		}
	}
	return ps
}

// checkCompose checks docker-compose.yml against the brief: pinned images,
// Redis with AOF on a volume, PostgreSQL 16 with a volume and a pg_isready
// health check, a one-shot migrate that api and worker wait for, worker
// replicas, configuration the binary accepts, a monitoring profile, and
// bind mounts and named volumes that exist. root is the repository, for
// bind-mount sources.
func checkCompose(c composeFile, root string) []string {
	var ps problems
	at := func(svc string) string { return "docker-compose.yml: service " + svc }
	for _, want := range []string{"redis", "postgres", "migrate", "api", "worker", "mailpit", "prometheus", "grafana"} {
		if _, ok := c.Services[want]; !ok {
			ps.add("docker-compose.yml: no service %s", want)
		}
	}
	for _, name := range sortedKeys(c.Services) {
		s := c.Services[name]
		if p := checkImageRef(s.Image); p != "" {
			ps.add("%s: %s", at(name), p)
		}
		for dep := range s.DependsOn {
			if _, ok := c.Services[dep]; !ok {
				ps.add("%s: depends on %s, which is not a service", at(name), dep)
			}
		}
		for _, v := range s.Volumes {
			switch {
			case v.isBind():
				if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(v.Source))); err != nil {
					ps.add("%s: bind mount source %s does not exist in the repository", at(name), v.Source)
				}
				if !v.ReadOnly {
					ps.add("%s: bind mount %s is writable; mount repository files :ro", at(name), v.Source)
				}
			case v.Source != "":
				if _, ok := c.Volumes[v.Source]; !ok {
					ps.add("%s: volume %s is not declared under the top-level volumes", at(name), v.Source)
				}
			}
		}
		if s.isMailferry() {
			if len(s.Entrypoint) > 0 && !slices.Equal(s.Entrypoint, []string{"/mailferry"}) {
				ps.add("%s: entrypoint %v replaces the image's /mailferry", at(name), s.Entrypoint)
			}
			env := map[string]string{}
			for k, v := range s.Environment {
				x, err := interpolate(v, nil)
				if err != nil {
					ps.add("%s: %s: %v", at(name), k, err)
				}
				env[k] = x
			}
			ps = append(ps, checkConfig(at(name), env)...)
			if s.EnvFile != nil {
				ps.add("%s: env_file is not checked by CI; put the variables under environment", at(name))
			}
		}
	}
	if r, ok := c.Services["redis"]; ok {
		cmd := strings.Join(r.Command, " ")
		if !strings.Contains(cmd, "--appendonly yes") {
			ps.add("%s: command %q does not turn on AOF persistence (--appendonly yes)", at("redis"), cmd)
		}
		if !hasNamedVolume(r, "/data") {
			ps.add("%s: no named volume on /data; the queue would not survive the container", at("redis"))
		}
	}
	ps = append(ps, checkComposeCluster(c)...)
	if p, ok := c.Services["postgres"]; ok {
		if !strings.HasPrefix(p.Image, "postgres:16") {
			ps.add("%s: image %s is not PostgreSQL 16", at("postgres"), p.Image)
		}
		if !strings.Contains(strings.Join(p.Healthcheck.Test, " "), "pg_isready") {
			ps.add("%s: health check %v does not run pg_isready", at("postgres"), p.Healthcheck.Test)
		}
		if !hasNamedVolume(p, "/var/lib/postgresql/data") {
			ps.add("%s: no named volume on /var/lib/postgresql/data", at("postgres"))
		}
	}
	if m, ok := c.Services["migrate"]; ok {
		if !slices.Equal(m.Command, []string{"migrate"}) {
			ps.add("%s: command is %v; want [migrate]", at("migrate"), m.Command)
		}
		if m.Restart != "no" {
			ps.add("%s: restart is %q; a one-shot service needs restart \"no\", or it runs forever", at("migrate"), m.Restart)
		}
		if m.DependsOn["postgres"] != "service_healthy" {
			ps.add("%s: does not wait for postgres to be healthy", at("migrate"))
		}
	}
	for _, name := range []string{"api", "worker"} {
		s, ok := c.Services[name]
		if !ok {
			continue
		}
		if s.DependsOn["migrate"] != "service_completed_successfully" {
			ps.add("%s: depends_on migrate must have condition service_completed_successfully (has %q)", at(name), s.DependsOn["migrate"])
		}
		if s.Environment["MAILFERRY_AUTO_MIGRATE"] != "false" {
			ps.add("%s: MAILFERRY_AUTO_MIGRATE must be \"false\": the migrate service applies migrations", at(name))
		}
		smarthost, err := url.Parse(s.Environment["MAILFERRY_SMARTHOST"])
		if err != nil || smarthost.Hostname() != "mailpit" {
			ps.add("%s: MAILFERRY_SMARTHOST %q does not point at the mailpit service", at(name), s.Environment["MAILFERRY_SMARTHOST"])
		}
		for _, v := range []string{"MAILFERRY_REDIS_URL", "MAILFERRY_DATABASE_URL", "MAILFERRY_HOSTNAME", "MAILFERRY_SECRET_KEY"} {
			if _, ok := s.Environment[v]; !ok {
				ps.add("%s: %s is not set", at(name), v)
			}
		}
		for _, pair := range [][2]string{{"MAILFERRY_REDIS_URL", "redis"}, {"MAILFERRY_DATABASE_URL", "postgres"}} {
			// The default of a ${NAME:-default} (the cluster profile sets
			// the Redis URL in .env).
			raw, _ := interpolate(s.Environment[pair[0]], nil)
			if u, err := url.Parse(raw); err != nil || u.Hostname() != pair[1] {
				ps.add("%s: %s does not point at the %s service", at(name), pair[0], pair[1])
			}
		}
		if d, err := parseDuration(s.StopGracePeriod); err != nil || d < 45 {
			ps.add("%s: stop_grace_period %q must be at least 45s: the default 10s kills SMTP transactions mid-way", at(name), s.StopGracePeriod)
		}
	}
	if w, ok := c.Services["worker"]; ok && (w.Deploy.Replicas == nil || *w.Deploy.Replicas != 2) {
		ps.add("%s: deploy.replicas must be 2", at("worker"))
	}
	for _, name := range []string{"prometheus", "grafana"} {
		if s, ok := c.Services[name]; ok && !slices.Equal(s.Profiles, []string{"monitoring"}) {
			ps.add("%s: profiles %v; want [monitoring]", at(name), s.Profiles)
		}
	}
	for _, name := range []string{"redis", "postgres", "migrate", "api", "worker", "mailpit"} {
		if s, ok := c.Services[name]; ok && len(s.Profiles) > 0 {
			ps.add("%s: in profiles %v, so a plain `docker compose up` leaves it out", at(name), s.Profiles)
		}
	}
	return ps
}

func hasNamedVolume(s composeService, target string) bool {
	return slices.ContainsFunc(s.Volumes, func(v volumeMount) bool { return v.Target == target && v.Source != "" && !v.isBind() })
}

// parseDuration reads a compose duration like 60s or 1m30s into seconds.
func parseDuration(s string) (int, error) {
	m := regexp.MustCompile(`^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$`).FindStringSubmatch(s)
	if s == "" || m == nil {
		return 0, fmt.Errorf("not a duration: %q", s)
	}
	total := 0
	for i, unit := range []int{3600, 60, 1} {
		if m[i+1] != "" {
			n, err := strconv.Atoi(m[i+1])
			if err != nil {
				return 0, err
			}
			total += n * unit
		}
	}
	return total, nil
}

func loadCompose(t *testing.T, root string) composeFile {
	t.Helper()
	data := readRepoFile(t, root, "docker-compose.yml")
	var c composeFile
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return c
}

// dockerfileCmd is the image's default command (CMD of the last stage).
func dockerfileCmd(t *testing.T, root string) []string {
	t.Helper()
	stages, err := parseDockerfile(string(readRepoFile(t, root, "Dockerfile")))
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	var cmd []string
	for _, in := range stages[len(stages)-1].instrs {
		if in.cmd == "CMD" {
			if err := json.Unmarshal([]byte(in.args), &cmd); err != nil {
				t.Fatalf("Dockerfile:%d: CMD is not in exec form: %v", in.line, err)
			}
		}
	}
	return cmd
}

func TestCompose(t *testing.T) {
	root := repoRoot(t)
	c := loadCompose(t, root)
	report(t, checkCompose(c, root))
	report(t, checkRoleCoverage("docker-compose.yml", composeInvocations(c, dockerfileCmd(t, root))))
}
