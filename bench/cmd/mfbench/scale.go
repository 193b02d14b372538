package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/mailferry/mailferry/dkim"
)

// scale measures scale-out (issue 15): the same backlog drained by 1, 2
// and 4 worker processes on this machine, first on one Redis and then on
// a Redis Cluster of 3 primaries and 3 replicas (the queue in 6 shards),
// so the cost of the cluster and of the fleet-wide destination leases
// shows. The ratio is each cluster figure to the single-Redis figure with
// as many workers, measured in the same run.
func (b *bench) scale(ctx context.Context) *scenarioResult {
	cfg := b.cfg
	var counts []int
	for _, f := range strings.Split(cfg.ScaleWorkers, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err == nil && n > 0 {
			counts = append(counts, n)
		}
	}
	var metrics []metric
	for _, n := range counts {
		metrics = append(metrics,
			metric{fmt.Sprintf("single_%d", n), fmt.Sprintf("drain, %d worker process(es), one Redis", n), "msgs/s", 0},
			metric{fmt.Sprintf("cluster_%d", n), fmt.Sprintf("drain, %d worker process(es), Redis Cluster", n), "msgs/s", 0},
			metric{fmt.Sprintf("ratio_%d", n), fmt.Sprintf("cluster / one Redis, %d worker process(es)", n), "%", 0},
		)
	}
	metrics = append(metrics, otherMetric)
	res := newScenario("scale", fmt.Sprintf("Scale-out: %d messages (1 KB) over %d domains accepted with no worker, then drained by %s worker processes on one machine; one Redis, then a Redis Cluster (3 primaries, 3 replicas, 6 queue shards)",
		cfg.ScaleMessages, cfg.S2Domains, cfg.ScaleWorkers), metrics...)
	res.note("every process shares this machine's cores with Redis, PostgreSQL and the sink: more workers add fleet-wide coordination, not cores")
	defer func() { _ = b.st.useCluster(ctx, false) }()
	for i := range cfg.Runs {
		run := map[string]float64{}
		for _, onCluster := range []bool{false, true} {
			if err := b.st.useCluster(ctx, onCluster); err != nil {
				res.Error = err.Error()
				res.finish()
				return res
			}
			mode := map[bool]string{false: "single", true: "cluster"}[onCluster]
			for _, n := range counts {
				b.quiet(ctx, res)
				d, err := b.drain(ctx, drainOptions{
					Name: fmt.Sprintf("scale-%s-%d", mode, n), Algorithm: string(dkim.AlgorithmEd25519),
					Domains: domains(cfg.S2Domains, 0), Count: cfg.ScaleMessages, TextBytes: 1024,
					Timeout: cfg.ScaleTimeout, Workers: n,
				})
				if err != nil {
					res.Error = err.Error()
					res.finish()
					return res
				}
				if d.timedOut {
					res.note(fmt.Sprintf("run %d, %s with %d workers timed out: %d of %d delivered", i+1, mode, n, d.delivered(), d.want))
				}
				run[fmt.Sprintf("%s_%d", mode, n)] = d.drainRate()
				run["other"] = max(run["other"], d.drainCPU.otherCores())
				b.progress("scale run %d: %s, %d workers: %.0f msgs/s", i+1, mode, n, d.drainRate())
			}
		}
		for _, n := range counts {
			run[fmt.Sprintf("ratio_%d", n)] = 100 * ratio(run[fmt.Sprintf("cluster_%d", n)], run[fmt.Sprintf("single_%d", n)])
		}
		res.add(run)
	}
	res.finish()
	return res
}
