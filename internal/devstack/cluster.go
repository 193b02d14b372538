package devstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ClusterOptions configures StartRedisCluster.
type ClusterOptions struct {
	Dir       string // parent of one directory per node
	Primaries int    // default 3, the fewest Redis Cluster accepts
	Replicas  int    // per primary, default 1
	// NodeTimeout is cluster-node-timeout: how long a primary may be
	// unreachable before its replica takes over. Default 1s, so tests
	// see a failover in seconds; production keeps Redis's 15s.
	NodeTimeout time.Duration
}

// RedisCluster is a running Redis Cluster of Processes on 127.0.0.1.
type RedisCluster struct {
	Nodes []*Process
	// URL is go-redis's cluster URL: the first node, every other one as an
	// addr= seed (MAILFERRY_REDIS_MODE=cluster).
	URL string
}

// Stop stops every node.
func (c *RedisCluster) Stop(ctx context.Context) error {
	if c == nil {
		return nil
	}
	var errs []error
	for _, n := range c.Nodes {
		errs = append(errs, n.Stop(ctx))
	}
	return errors.Join(errs...)
}

// Node is the node listening on addr, or nil.
func (c *RedisCluster) Node(addr string) *Process {
	for _, n := range c.Nodes {
		if n.Addr() == addr {
			return n
		}
	}
	return nil
}

// StartRedisCluster starts Primaries×(1+Replicas) cluster-enabled
// redis-servers on free loopback ports, joins them with `redis-cli
// --cluster create`, and returns once every node reports cluster_state:ok.
func StartRedisCluster(ctx context.Context, opts ClusterOptions) (_ *RedisCluster, err error) {
	if opts.Primaries == 0 {
		opts.Primaries = 3
	}
	if opts.Replicas == 0 {
		opts.Replicas = 1
	}
	if opts.NodeTimeout == 0 {
		opts.NodeTimeout = time.Second
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, fmt.Errorf("redis-cli not installed (apt-get install -y redis-tools): %w", err)
	}
	c := &RedisCluster{}
	defer func() {
		if err != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = c.Stop(sctx)
		}
	}()
	n := opts.Primaries * (1 + opts.Replicas)
	addrs := make([]string, 0, n)
	for i := range n {
		// The cluster bus gets a free port of its own: the default, port +
		// 10000, may be taken or past 65535.
		bus, err := FreePort()
		if err != nil {
			return nil, err
		}
		p, err := StartRedis(ctx, RedisOptions{Dir: filepath.Join(opts.Dir, "node"+strconv.Itoa(i)), Args: []string{
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-port", strconv.Itoa(bus),
			"--cluster-node-timeout", strconv.FormatInt(opts.NodeTimeout.Milliseconds(), 10),
			// A replica however stale may take over: losing its writes is the
			// case the reconciler covers (queue/doc.go).
			"--cluster-replica-validity-factor", "0",
			// Replicas sync at once rather than after the 5s default wait.
			"--repl-diskless-sync-delay", "0",
		}})
		if err != nil {
			return nil, fmt.Errorf("cluster node %d: %w", i, err)
		}
		c.Nodes = append(c.Nodes, p)
		addrs = append(addrs, p.Addr())
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(opts.Replicas), "--cluster-yes")
	cmd := exec.CommandContext(ctx, cli, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("redis-cli --cluster create: %w: %s", err, lastLines(out.String(), 5))
	}
	for _, a := range addrs {
		if err := WaitClusterOK(ctx, a, 60*time.Second); err != nil {
			return nil, err
		}
	}
	// A replica not yet synced would take over empty: wait for every link.
	for _, a := range addrs {
		if err := waitReplicaLinked(ctx, a, 60*time.Second); err != nil {
			return nil, err
		}
	}
	c.URL = "redis://" + addrs[0] + "?addr=" + strings.Join(addrs[1:], "&addr=")
	return c, nil
}

// WaitClusterOK waits until the node at addr says cluster_state:ok.
func WaitClusterOK(ctx context.Context, addr string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return fmt.Errorf("redis-cli not installed: %w", err)
	}
	host, port, _ := strings.Cut(addr, ":")
	last := ""
	for {
		out, err := exec.CommandContext(ctx, cli, "-h", host, "-p", port, "cluster", "info").Output()
		if err == nil && bytes.Contains(out, []byte("cluster_state:ok")) {
			return nil
		}
		last = lastLines(string(out), 1)
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster node %s not ok after %v (%s): %w", addr, limit, last, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitReplicaLinked waits until the node at addr is a primary, or a
// replica whose link to its primary is up (the initial sync done).
func waitReplicaLinked(ctx context.Context, addr string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	host, port, _ := strings.Cut(addr, ":")
	for {
		out, err := exec.CommandContext(ctx, "redis-cli", "-h", host, "-p", port, "info", "replication").Output()
		if err == nil && (bytes.Contains(out, []byte("role:master")) || bytes.Contains(out, []byte("master_link_status:up"))) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster node %s: replica not synced after %v: %w", addr, limit, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
