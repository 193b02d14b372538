package deploycheck

import (
	"slices"
	"strings"
	"testing"
)

// TestWorkerAutoscalerOnQueueDepth: the worker autoscaler follows the
// queue (docs/scale-out.md), through a metric the binary exports, with
// labels it has.
func TestWorkerAutoscalerOnQueueDepth(t *testing.T) {
	root := repoRoot(t)
	b, _ := loadKube(t, root)
	defs := loadMetrics(t, root)
	found := false
	for _, o := range b.ofKind("HorizontalPodAutoscaler") {
		var s hpaSpec
		if err := o.Spec.Decode(&s); err != nil {
			t.Fatalf("%s: %v", o, err)
		}
		for _, m := range s.Metrics {
			if m.Type != "External" || m.External == nil {
				continue
			}
			name := m.External.Metric.Name
			def, _, ok := defs.lookup(name)
			if !ok {
				t.Errorf("%s: external metric %s is not one the binary exports", o, name)
				continue
			}
			for l := range m.External.Metric.Selector.MatchLabels {
				if def.labelsKnown && !slices.Contains(def.labels, l) {
					t.Errorf("%s: %s has no label %q (has %v)", o, name, l, def.labels)
				}
			}
			if s.ScaleTargetRef.Name == "mailferry-worker" && name == "mailferry_queue_depth" {
				found = true
			}
		}
	}
	if !found {
		t.Errorf("no HorizontalPodAutoscaler scales mailferry-worker on mailferry_queue_depth")
	}
}

// checkComposeCluster checks the cluster profile: at least six
// cluster-enabled Redis nodes (3 primaries, 3 replicas) with persistence
// and a volume each, and a one-shot service that joins them.
func checkComposeCluster(c composeFile) []string {
	var ps problems
	at := func(name string) string { return "docker-compose.yml: service " + name }
	var nodes []string
	for name, s := range c.Services {
		if !slices.Contains(s.Profiles, "cluster") || !strings.HasPrefix(name, "redis-node-") {
			continue
		}
		nodes = append(nodes, name)
		cmd := strings.Join(s.Command, " ")
		for _, want := range []string{"--cluster-enabled yes", "--appendonly yes", "--maxmemory-policy noeviction"} {
			if !strings.Contains(cmd, want) {
				ps.add("%s: command %q lacks %s", at(name), cmd, want)
			}
		}
		if !hasNamedVolume(s, "/data") {
			ps.add("%s: no named volume on /data", at(name))
		}
	}
	if len(nodes) < 6 {
		ps.add("docker-compose.yml: the cluster profile has %d redis-node-N services; want 6 (3 primaries, 3 replicas)", len(nodes))
	}
	create, ok := c.Services["redis-cluster-create"]
	switch {
	case !ok:
		ps.add("docker-compose.yml: no redis-cluster-create service joins the cluster profile's nodes")
	case create.Restart != "no":
		ps.add("%s: restart %q; a one-shot service needs \"no\"", at("redis-cluster-create"), create.Restart)
	case !strings.Contains(strings.Join(create.Command, " "), "--cluster-replicas 1"):
		ps.add("%s: does not run redis-cli --cluster create with --cluster-replicas 1", at("redis-cluster-create"))
	}
	for _, n := range nodes {
		if ok && create.DependsOn[n] != "service_healthy" {
			ps.add("%s: does not wait for %s to be healthy", at("redis-cluster-create"), n)
		}
	}
	return ps
}
