package testenv

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/internal/devstack"
)

// OneNodeCluster starts a Redis Cluster of one primary that holds every
// slot, on a free loopback port, for this test alone, and returns a
// cluster client on it. It is the cheapest way to run code through
// go-redis's ClusterClient (slot routing, EVALSHA with its NOSCRIPT
// fallback) and through Redis's cluster rules: a multi-key command across
// slots fails with CROSSSLOT on one node as on many. Failover needs the
// real harness of several nodes.
func OneNodeCluster(t testing.TB) redis.UniversalClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("testenv: redis-server not installed (scripts/install-deps.sh): %v", err)
	}
	port, err := devstack.FreePort()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	dir := t.TempDir()
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir,
		"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(dir, "nodes.conf"),
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", filepath.Join(dir, "redis.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		t.Fatalf("testenv: start redis cluster node: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	node := redis.NewClient(&redis.Options{Addr: addr})
	defer node.Close()
	for {
		// The node listens within milliseconds; then it takes every slot
		// and reports the cluster ok.
		if err := node.Ping(ctx).Err(); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("testenv: redis cluster node on %s did not answer", addr)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := node.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
		t.Fatalf("testenv: CLUSTER ADDSLOTSRANGE: %v", err)
	}
	for {
		info, err := node.ClusterInfo(ctx).Result()
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("testenv: redis cluster on %s not ok: %v %s", addr, err, info)
		case <-time.After(10 * time.Millisecond):
		}
	}
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{addr}})
	t.Cleanup(func() { c.Close() })
	return c
}
