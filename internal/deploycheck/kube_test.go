package deploycheck

import (
	"encoding/base64"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const kubeDir = "deploy/kubernetes"

type kustomization struct {
	Resources []string `yaml:"resources"`
	Images    []struct {
		Name    string `yaml:"name"`
		NewName string `yaml:"newName"`
		NewTag  string `yaml:"newTag"`
		Digest  string `yaml:"digest"`
	} `yaml:"images"`
}

// kubeObject is one manifest; spec is decoded per kind.
type kubeObject struct {
	doc        yamlDoc
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	Spec       yaml.Node         `yaml:"spec"`
}

func (o kubeObject) String() string {
	return fmt.Sprintf("%s %s %s", o.doc.file, o.Kind, o.Metadata.Name)
}

type labelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

// matches says whether the selector selects an object with labels.
func (s labelSelector) matches(labels map[string]string) bool {
	if len(s.MatchLabels) == 0 {
		return false
	}
	for k, v := range s.MatchLabels {
		if labels[k] != v {
			return false
		}
	}
	return true
}

type podTemplate struct {
	Metadata struct {
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec podSpec `yaml:"spec"`
}

type workloadSpec struct { // Deployment and Job
	Replicas *int          `yaml:"replicas"`
	Selector labelSelector `yaml:"selector"`
	Template podTemplate   `yaml:"template"`
}

type podSpec struct {
	TerminationGracePeriodSeconds *int            `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               securityContext `yaml:"securityContext"`
	InitContainers                []container     `yaml:"initContainers"`
	Containers                    []container     `yaml:"containers"`
	EnableServiceLinks            *bool           `yaml:"enableServiceLinks"`
}

type securityContext struct {
	RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
	RunAsUser                *int64 `yaml:"runAsUser"`
	ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
	Privileged               *bool  `yaml:"privileged"`
	Capabilities             struct {
		Add  []string `yaml:"add"`
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
	SeccompProfile struct {
		Type string `yaml:"type"`
	} `yaml:"seccompProfile"`
}

type container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []struct {
		Name      string  `yaml:"name"`
		Value     *string `yaml:"value"`
		ValueFrom any     `yaml:"valueFrom"`
	} `yaml:"env"`
	EnvFrom []struct {
		ConfigMapRef *struct {
			Name string `yaml:"name"`
		} `yaml:"configMapRef"`
		SecretRef *struct {
			Name string `yaml:"name"`
		} `yaml:"secretRef"`
	} `yaml:"envFrom"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	StartupProbe   *probe `yaml:"startupProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext securityContext `yaml:"securityContext"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"` // a number or a port name
	} `yaml:"httpGet"`
}

// port resolves a probe or Service port (number or name) to a number.
func (c container) port(p string) (int, bool) {
	for _, cp := range c.Ports {
		if cp.Name == p || strconv.Itoa(cp.ContainerPort) == p {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

type serviceSpec struct {
	Selector map[string]string `yaml:"selector"`
	Ports    []servicePort     `yaml:"ports"`
}

type servicePort struct {
	Name       string `yaml:"name"`
	Port       int    `yaml:"port"`
	TargetPort string `yaml:"targetPort"`
}

type pdbSpec struct {
	MinAvailable   *string       `yaml:"minAvailable"`
	MaxUnavailable *string       `yaml:"maxUnavailable"`
	Selector       labelSelector `yaml:"selector"`
}

type hpaSpec struct {
	ScaleTargetRef struct {
		Kind string `yaml:"kind"`
		Name string `yaml:"name"`
	} `yaml:"scaleTargetRef"`
	MinReplicas *int        `yaml:"minReplicas"`
	MaxReplicas int         `yaml:"maxReplicas"`
	Metrics     []hpaMetric `yaml:"metrics"`
}

type hpaMetric struct {
	Type     string `yaml:"type"`
	Resource *struct {
		Name string `yaml:"name"`
	} `yaml:"resource"`
	External *struct {
		Metric struct {
			Name     string `yaml:"name"`
			Selector struct {
				MatchLabels map[string]string `yaml:"matchLabels"`
			} `yaml:"selector"`
		} `yaml:"metric"`
	} `yaml:"external"`
}

type serviceMonitorSpec struct {
	Selector  labelSelector `yaml:"selector"`
	Endpoints []struct {
		Port string `yaml:"port"`
		Path string `yaml:"path"`
	} `yaml:"endpoints"`
}

// kubeBase is the parsed kustomize base.
type kubeBase struct {
	kust    kustomization
	objects []kubeObject
}

func (b kubeBase) find(kind, name string) (kubeObject, bool) {
	for _, o := range b.objects {
		if o.Kind == kind && o.Metadata.Name == name {
			return o, true
		}
	}
	return kubeObject{}, false
}

func (b kubeBase) ofKind(kind string) []kubeObject {
	var out []kubeObject
	for _, o := range b.objects {
		if o.Kind == kind {
			out = append(out, o)
		}
	}
	return out
}

// image resolves a container image through the kustomization's images.
func (b kubeBase) image(ref string) string {
	name, tag := splitImage(ref)
	for _, im := range b.kust.Images {
		if im.Name != name {
			continue
		}
		if im.NewName != "" {
			name = im.NewName
		}
		if im.NewTag != "" {
			tag = im.NewTag
		}
		if im.Digest != "" {
			return name + "@" + im.Digest
		}
	}
	switch {
	case tag == "":
		return name
	case strings.HasPrefix(tag, "@"):
		return name + tag
	}
	return name + ":" + tag
}

// parseKube parses a kustomization and the manifests it lists; read reads
// a file of the base by its name there.
func parseKube(read func(name string) ([]byte, error)) (kubeBase, error) {
	var b kubeBase
	data, err := read("kustomization.yaml")
	if err != nil {
		return b, err
	}
	if err := yaml.Unmarshal(data, &b.kust); err != nil {
		return b, fmt.Errorf("%s/kustomization.yaml: %w", kubeDir, err)
	}
	for _, res := range b.kust.Resources {
		data, err := read(res)
		if err != nil {
			return b, fmt.Errorf("%s/kustomization.yaml lists %s: %w", kubeDir, res, err)
		}
		docs, err := parseYAML(kubeDir+"/"+res, data)
		if err != nil {
			return b, err
		}
		for _, d := range docs {
			var o kubeObject
			if err := d.decode(&o); err != nil {
				return b, err
			}
			o.doc = d
			if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
				return b, fmt.Errorf("%s: apiVersion, kind or metadata.name missing", d)
			}
			b.objects = append(b.objects, o)
		}
	}
	return b, nil
}

// podOf decodes the pod template of a Deployment or Job.
func podOf(o kubeObject) (workloadSpec, error) {
	var w workloadSpec
	if err := o.Spec.Decode(&w); err != nil {
		return w, fmt.Errorf("%s: %w", o, err)
	}
	return w, nil
}

// isMailferryImage says whether a container runs the Mailferry image (the
// name the kustomization maps).
func isMailferryImage(ref string) bool {
	name, _ := splitImage(ref)
	return name == "mailferry" || strings.HasSuffix(name, "/mailferry")
}

// kubeInvocations lists the mailferry command lines of the base's
// Deployments and Jobs, init containers included.
func kubeInvocations(b kubeBase, defaultCmd []string) ([]invocation, error) {
	var out []invocation
	for _, o := range b.objects {
		if o.Kind != "Deployment" && o.Kind != "Job" {
			continue
		}
		w, err := podOf(o)
		if err != nil {
			return nil, err
		}
		for _, c := range append(slices.Clone(w.Template.Spec.InitContainers), w.Template.Spec.Containers...) {
			if !isMailferryImage(c.Image) {
				continue
			}
			args := c.Args
			if len(args) == 0 && len(c.Command) == 0 {
				args = defaultCmd
			}
			out = append(out, invocation{where: fmt.Sprintf("%s container %s", o, c.Name), args: args})
		}
	}
	return out, nil
}

// containerEnv is the environment a container gets from its envFrom
// ConfigMaps and Secrets and its env list (which wins), as Kubernetes
// builds it. Variables from valueFrom are left out: their value is not in
// the manifests.
func containerEnv(b kubeBase, c container) (map[string]string, []string) {
	var ps problems
	env := map[string]string{}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			o, ok := b.find("ConfigMap", ef.ConfigMapRef.Name)
			if !ok {
				ps.add("envFrom names ConfigMap %s, which the base does not define", ef.ConfigMapRef.Name)
				continue
			}
			maps.Copy(env, o.Data)
		case ef.SecretRef != nil:
			o, ok := b.find("Secret", ef.SecretRef.Name)
			if !ok {
				ps.add("envFrom names Secret %s, which the base does not define", ef.SecretRef.Name)
				continue
			}
			for k, v := range o.Data {
				dec, err := base64.StdEncoding.DecodeString(v)
				if err != nil {
					ps.add("Secret %s: data.%s is not base64", o.Metadata.Name, k)
				}
				env[k] = string(dec)
			}
			maps.Copy(env, o.StringData)
		}
	}
	for _, e := range c.Env {
		if e.Value != nil {
			env[e.Name] = *e.Value
		} else {
			delete(env, e.Name)
		}
	}
	return env, ps
}

// checkContainerSecurity checks one container's hardening, with the pod's
// security context as the fallback Kubernetes uses.
func checkContainerSecurity(where string, pod securityContext, c container) []string {
	var ps problems
	sc := c.SecurityContext
	if !(isTrue(sc.RunAsNonRoot) || sc.RunAsNonRoot == nil && isTrue(pod.RunAsNonRoot)) {
		ps.add("%s: runAsNonRoot is not true (pod or container securityContext)", where)
	}
	if uid := sc.RunAsUser; uid != nil && *uid == 0 || uid == nil && pod.RunAsUser != nil && *pod.RunAsUser == 0 {
		ps.add("%s: runAsUser is 0", where)
	}
	if !isTrue(sc.ReadOnlyRootFilesystem) {
		ps.add("%s: securityContext.readOnlyRootFilesystem is not true", where)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		ps.add("%s: securityContext.allowPrivilegeEscalation is not false", where)
	}
	if isTrue(sc.Privileged) {
		ps.add("%s: privileged", where)
	}
	if !slices.Contains(sc.Capabilities.Drop, "ALL") {
		ps.add("%s: securityContext.capabilities.drop does not include ALL (has %v)", where, sc.Capabilities.Drop)
	}
	if len(sc.Capabilities.Add) > 0 {
		ps.add("%s: adds capabilities %v", where, sc.Capabilities.Add)
	}
	if sc.SeccompProfile.Type != "RuntimeDefault" && !(sc.SeccompProfile.Type == "" && pod.SeccompProfile.Type == "RuntimeDefault") {
		ps.add("%s: seccompProfile is not RuntimeDefault (pod or container)", where)
	}
	if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" {
		ps.add("%s: resources.requests needs cpu and memory (has %v)", where, c.Resources.Requests)
	}
	if c.Resources.Limits["memory"] == "" {
		ps.add("%s: resources.limits.memory is not set", where)
	}
	return ps
}

func isTrue(b *bool) bool { return b != nil && *b }

// checkDeployment checks a Deployment: selector, grace period, hardened
// containers, probes on the HTTP port, the image, and a configuration the
// binary accepts.
func checkDeployment(b kubeBase, o kubeObject) []string {
	var ps problems
	w, err := podOf(o)
	if err != nil {
		return []string{err.Error()}
	}
	pod := w.Template.Spec
	if !w.Selector.matches(w.Template.Metadata.Labels) {
		ps.add("%s: spec.selector %v does not match the pod template's labels %v", o, w.Selector.MatchLabels, w.Template.Metadata.Labels)
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || *g < 45 {
		ps.add("%s: terminationGracePeriodSeconds must be at least 45: workers finish SMTP transactions after SIGTERM (the default is 30)", o)
	}
	if pod.EnableServiceLinks == nil || *pod.EnableServiceLinks {
		ps.add("%s: enableServiceLinks is not false: Services named mailferry-* would add MAILFERRY_* variables the binary does not know", o)
	}
	if len(pod.Containers) == 0 {
		ps.add("%s: no containers", o)
	}
	all := append(slices.Clone(pod.InitContainers), pod.Containers...)
	for i, c := range all {
		init := i < len(pod.InitContainers)
		where := fmt.Sprintf("%s container %s", o, c.Name)
		ps = append(ps, checkContainerSecurity(where, pod.SecurityContext, c)...)
		if p := checkImageRef(b.image(c.Image)); p != "" {
			ps.add("%s: %s (after the kustomization's images)", where, p)
		}
		if isMailferryImage(c.Image) && len(c.Command) > 0 && !slices.Equal(c.Command, []string{"/mailferry"}) {
			ps.add("%s: command %v replaces the image's /mailferry", where, c.Command)
		}
		env, envProblems := containerEnv(b, c)
		for _, p := range envProblems {
			ps.add("%s: %s", where, p)
		}
		if isMailferryImage(c.Image) {
			ps = append(ps, checkConfig(where, env)...)
		}
		if init {
			continue
		}
		cfg, _ := loadConfig(env)
		_, httpPort, _ := net.SplitHostPort(cfg.HTTPAddr)
		for _, pr := range []struct {
			name, path string
			p          *probe
		}{{"readinessProbe", "/readyz", c.ReadinessProbe}, {"livenessProbe", "/healthz", c.LivenessProbe}} {
			switch {
			case pr.p == nil || pr.p.HTTPGet == nil:
				ps.add("%s: no %s with httpGet %s", where, pr.name, pr.path)
			case pr.p.HTTPGet.Path != pr.path:
				ps.add("%s: %s checks %s; want %s", where, pr.name, pr.p.HTTPGet.Path, pr.path)
			default:
				n, ok := c.port(pr.p.HTTPGet.Port)
				if !ok {
					ps.add("%s: %s port %s is not a containerPort", where, pr.name, pr.p.HTTPGet.Port)
				} else if strconv.Itoa(n) != httpPort {
					ps.add("%s: %s probes port %d but MAILFERRY_HTTP_ADDR is %q", where, pr.name, n, cfg.HTTPAddr)
				}
			}
		}
		if roles, ok := rolesOf(c.Args); ok && env["MAILFERRY_AUTO_MIGRATE"] != "false" && hasMigrate(pod) {
			ps.add("%s: serve %v with a migrate init container should set MAILFERRY_AUTO_MIGRATE=false", where, roles)
		}
	}
	return ps
}

func hasMigrate(pod podSpec) bool {
	return slices.ContainsFunc(pod.InitContainers, func(c container) bool { return slices.Equal(c.Args, []string{"migrate"}) })
}

// checkKube checks the base as a whole: files, objects and how they refer
// to each other. files are the names in the base's folder.
func checkKube(b kubeBase, files []string) []string {
	var ps problems
	for _, f := range files {
		if isYAML(f) && f != "kustomization.yaml" && !slices.Contains(b.kust.Resources, f) {
			ps.add("%s/%s is not listed in kustomization.yaml's resources, so kubectl apply -k skips it", kubeDir, f)
		}
	}
	byKind := map[string]int{}
	for _, o := range b.objects {
		byKind[o.Kind]++
	}
	for kind, n := range map[string]int{"Deployment": 2, "Service": 1, "ConfigMap": 1, "Secret": 1, "PodDisruptionBudget": 2, "HorizontalPodAutoscaler": 1, "ServiceMonitor": 1} {
		if byKind[kind] < n {
			ps.add("%s: want at least %d %s, have %d", kubeDir, n, kind, byKind[kind])
		}
	}
	deployments := b.ofKind("Deployment")
	templates := map[string]workloadSpec{}
	for _, d := range deployments {
		ps = append(ps, checkDeployment(b, d)...)
		w, err := podOf(d)
		if err == nil {
			templates[d.Metadata.Name] = w
		}
	}
	for _, name := range []string{"mailferry-api", "mailferry-worker"} {
		if _, ok := templates[name]; !ok {
			ps.add("%s: no Deployment %s", kubeDir, name)
		}
	}
	// selected returns the Deployments whose pods the labels select.
	selected := func(match func(map[string]string) bool) []string {
		var out []string
		for _, name := range sortedKeys(templates) {
			if match(templates[name].Template.Metadata.Labels) {
				out = append(out, name)
			}
		}
		return out
	}
	for _, o := range b.ofKind("Service") {
		var s serviceSpec
		if err := o.Spec.Decode(&s); err != nil {
			ps.add("%s: %v", o, err)
			continue
		}
		targets := selected(labelSelector{MatchLabels: s.Selector}.matches)
		if len(targets) == 0 {
			ps.add("%s: selector %v selects no Deployment's pods", o, s.Selector)
		}
		for _, p := range s.Ports {
			for _, d := range targets {
				if !slices.ContainsFunc(templates[d].Template.Spec.Containers, func(c container) bool { _, ok := c.port(p.TargetPort); return ok }) {
					ps.add("%s: port %s targets %q, which no container of %s declares", o, p.Name, p.TargetPort, d)
				}
			}
		}
		if o.Metadata.Name == "mailferry-api" {
			for _, want := range []int{8080, 587, 465} {
				if !slices.ContainsFunc(s.Ports, func(p servicePort) bool { return p.Port == want }) {
					ps.add("%s: no port %d", o, want)
				}
			}
		}
	}
	covered := map[string]bool{}
	for _, o := range b.ofKind("PodDisruptionBudget") {
		var s pdbSpec
		if err := o.Spec.Decode(&s); err != nil {
			ps.add("%s: %v", o, err)
			continue
		}
		if (s.MinAvailable == nil) == (s.MaxUnavailable == nil) {
			ps.add("%s: set exactly one of minAvailable and maxUnavailable", o)
		}
		targets := selected(s.Selector.matches)
		if len(targets) == 0 {
			ps.add("%s: selector %v selects no Deployment's pods", o, s.Selector.MatchLabels)
		}
		for _, t := range targets {
			covered[t] = true
		}
	}
	for _, d := range sortedKeys(templates) {
		if !covered[d] {
			ps.add("%s: Deployment %s has no PodDisruptionBudget", kubeDir, d)
		}
	}
	scaled := map[string]bool{}
	for _, o := range b.ofKind("HorizontalPodAutoscaler") {
		var s hpaSpec
		if err := o.Spec.Decode(&s); err != nil {
			ps.add("%s: %v", o, err)
			continue
		}
		w, ok := templates[s.ScaleTargetRef.Name]
		if s.ScaleTargetRef.Kind != "Deployment" || !ok {
			ps.add("%s: scaleTargetRef %s %s is not a Deployment of the base", o, s.ScaleTargetRef.Kind, s.ScaleTargetRef.Name)
			continue
		}
		scaled[s.ScaleTargetRef.Name] = true
		if w.Replicas != nil {
			ps.add("%s: Deployment %s sets replicas, which resets the autoscaler's count on every apply; leave it out", o, s.ScaleTargetRef.Name)
		}
		if s.MinReplicas == nil || *s.MinReplicas < 2 {
			ps.add("%s: minReplicas below 2 leaves one worker during a drain", o)
		}
		if !slices.ContainsFunc(s.Metrics, func(m hpaMetric) bool {
			return m.Type == "Resource" && m.Resource != nil && m.Resource.Name == "cpu"
		}) {
			ps.add("%s: no CPU resource metric", o)
		}
	}
	if !scaled["mailferry-worker"] {
		ps.add("%s: no HorizontalPodAutoscaler for mailferry-worker", kubeDir)
	}
	for _, o := range b.ofKind("ServiceMonitor") {
		if o.APIVersion != "monitoring.coreos.com/v1" {
			ps.add("%s: apiVersion %s; want monitoring.coreos.com/v1", o, o.APIVersion)
		}
		var s serviceMonitorSpec
		if err := o.Spec.Decode(&s); err != nil {
			ps.add("%s: %v", o, err)
			continue
		}
		var services []kubeObject
		for _, svc := range b.ofKind("Service") {
			if s.Selector.matches(svc.Metadata.Labels) {
				services = append(services, svc)
			}
		}
		for _, want := range []string{"mailferry-api", "mailferry-worker"} {
			if !slices.ContainsFunc(services, func(o kubeObject) bool { return o.Metadata.Name == want }) {
				ps.add("%s: selector %v does not select Service %s, so its pods are not scraped", o, s.Selector.MatchLabels, want)
			}
		}
		for _, e := range s.Endpoints {
			if e.Path != "" && e.Path != "/metrics" {
				ps.add("%s: endpoint path %s; Mailferry serves /metrics", o, e.Path)
			}
			for _, svc := range services {
				var ss serviceSpec
				_ = svc.Spec.Decode(&ss)
				if !slices.ContainsFunc(ss.Ports, func(p servicePort) bool { return p.Name == e.Port }) {
					ps.add("%s: endpoint port %q is not a named port of Service %s", o, e.Port, svc.Metadata.Name)
				}
			}
		}
	}
	for _, o := range b.ofKind("Secret") {
		for k, v := range o.StringData {
			if !strings.Contains(v, "CHANGE-ME") {
				ps.add("%s: stringData.%s is not a placeholder marked CHANGE-ME; real secrets stay out of the repository", o, k)
			}
		}
		if len(o.Data) > 0 {
			ps.add("%s: use stringData with CHANGE-ME placeholders, not data", o)
		}
	}
	migrates := false
	for _, name := range sortedKeys(templates) {
		migrates = migrates || hasMigrate(templates[name].Template.Spec)
	}
	for _, j := range b.ofKind("Job") {
		if w, err := podOf(j); err == nil && slices.ContainsFunc(w.Template.Spec.Containers, func(c container) bool { return slices.Equal(c.Args, []string{"migrate"}) }) {
			migrates = true
		}
	}
	if !migrates {
		ps.add("%s: nothing runs `mailferry migrate` (a Job or an init container)", kubeDir)
	}
	return ps
}

func loadKube(t *testing.T, root string) (kubeBase, []string) {
	t.Helper()
	dir := filepath.Join(root, filepath.FromSlash(kubeDir))
	b, err := parseKube(func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, name)) })
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		files = append(files, e.Name())
	}
	return b, files
}

func TestKubernetes(t *testing.T) {
	root := repoRoot(t)
	b, files := loadKube(t, root)
	report(t, checkKube(b, files))
	invs, err := kubeInvocations(b, dockerfileCmd(t, root))
	if err != nil {
		t.Fatal(err)
	}
	report(t, checkRoleCoverage(kubeDir, invs))
}
