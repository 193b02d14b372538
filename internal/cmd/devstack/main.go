// Command devstack runs a command with throwaway Redis and PostgreSQL servers
// on free loopback ports, then stops them. `make test` and `make run` use it:
//
//	devstack [-dir D] [-persist] [-prefix MAILFERRY_TEST_] -- command args...
//
// The child sees <prefix>REDIS_URL and <prefix>DATABASE_URL.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/mailferry/mailferry/internal/devstack"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "devstack:", err)
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			os.Exit(exit.ExitCode())
		}
		os.Exit(1)
	}
}

func run() error {
	dir := flag.String("dir", "", "folder for server data; empty: a temporary folder removed afterwards")
	persist := flag.Bool("persist", false, "keep Redis data across runs (AOF)")
	prefix := flag.String("prefix", "MAILFERRY_TEST_", "prefix of the exported REDIS_URL and DATABASE_URL variables")
	cluster := flag.Bool("cluster", false, "also start a Redis Cluster (3 primaries, 3 replicas) and export REDIS_CLUSTER_URL")
	flag.Parse()
	args := flag.Args()
	if len(args) == 0 {
		return errors.New("usage: devstack [-dir D] [-persist] [-prefix P] -- command args")
	}
	base := *dir
	if base == "" {
		tmp, err := os.MkdirTemp("", "mailferry-devstack-")
		if err != nil {
			return fmt.Errorf("create temp dir: %w", err)
		}
		defer os.RemoveAll(tmp)
		base = tmp
	} else if err := os.MkdirAll(base, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", base, err)
	}
	// Absolute, so `make stop` can find the servers by their data folder.
	base, err := filepath.Abs(base)
	if err != nil {
		return fmt.Errorf("resolve %s: %w", base, err)
	}
	ctx := context.Background()
	rds, err := devstack.StartRedis(ctx, devstack.RedisOptions{Dir: base + "/redis", Persist: *persist})
	if err != nil {
		return err
	}
	defer stop(rds)
	pg, err := devstack.StartPostgres(ctx, devstack.PostgresOptions{Dir: base + "/postgres"})
	if err != nil {
		return err
	}
	defer stop(pg)
	fmt.Fprintf(os.Stderr, "devstack: redis %s, postgres %s\n", rds.URL, pg.URL)
	env := append(os.Environ(), *prefix+"REDIS_URL="+rds.URL, *prefix+"DATABASE_URL="+pg.URL)
	if *cluster {
		c, err := devstack.StartRedisCluster(ctx, devstack.ClusterOptions{Dir: base + "/cluster"})
		if err != nil {
			return err
		}
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := c.Stop(ctx); err != nil {
				fmt.Fprintln(os.Stderr, "devstack:", err)
			}
		}()
		fmt.Fprintf(os.Stderr, "devstack: redis cluster %s\n", c.URL)
		env = append(env, *prefix+"REDIS_CLUSTER_URL="+c.URL)
	}

	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = env
	// Ctrl-C reaches the child through the terminal's process group; wait
	// for it to finish before stopping the servers it uses.
	signal.Ignore(syscall.SIGINT)
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", args[0], err)
	}
	go func() {
		for s := range term {
			_ = cmd.Process.Signal(s)
		}
	}()
	return cmd.Wait()
}

func stop(p *devstack.Process) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Stop(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "devstack:", err)
	}
}
