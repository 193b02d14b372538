// Package devstack starts throwaway Redis and PostgreSQL servers on free
// loopback ports for tests, `make test` and `make run`. It runs the real
// server binaries from the machine (redis-server, PostgreSQL's initdb and
// postgres); it installs nothing. The Makefile installs what is missing.
package devstack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Process is one running server.
type Process struct {
	Name string
	URL  string
	cmd  *exec.Cmd
	done chan struct{}
	stop func(ctx context.Context) error
}

// Stop ends the server and waits for it, up to ctx.
func (p *Process) Stop(ctx context.Context) error {
	if p == nil {
		return nil
	}
	return p.stop(ctx)
}

// Kill ends the server with SIGKILL, as a crash would, and waits for it.
func (p *Process) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Addr is the host:port the server listens on.
func (p *Process) Addr() string {
	u, err := url.Parse(p.URL)
	if err != nil {
		return ""
	}
	return u.Host
}

// FreePort asks the kernel for a free TCP port on 127.0.0.1.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// RedisOptions configures StartRedis.
type RedisOptions struct {
	Dir  string // working directory (dump/AOF files); created if missing
	Port int    // 0: a free port
	// Persist enables AOF so a restart keeps the data (make run); tests
	// run without persistence.
	Persist bool
	// Args are more redis-server options (a cluster node's).
	Args []string
}

// StartRedis starts redis-server on 127.0.0.1.
func StartRedis(ctx context.Context, opts RedisOptions) (*Process, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not installed (apt-get install -y redis-server): %w", err)
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create redis dir: %w", err)
	}
	port := opts.Port
	if port == 0 {
		if port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	args := []string{
		"--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--dir", opts.Dir, "--daemonize", "no", "--save", "",
		"--protected-mode", "yes", "--loglevel", "warning",
		"--logfile", filepath.Join(opts.Dir, "redis.log"),
	}
	if opts.Persist {
		args = append(args, "--appendonly", "yes")
	} else {
		args = append(args, "--appendonly", "no")
	}
	args = append(args, opts.Args...)
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = serverAttr()
	p, err := startProcess("redis", cmd)
	if err != nil {
		return nil, err
	}
	p.URL = fmt.Sprintf("redis://127.0.0.1:%d/0", port)
	if err := waitTCP(ctx, p, fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
		_ = p.Stop(context.Background())
		return nil, fmt.Errorf("start redis: %w (log: %s)", err, tail(filepath.Join(opts.Dir, "redis.log")))
	}
	return p, nil
}

// PostgresOptions configures StartPostgres.
type PostgresOptions struct {
	Dir  string // data directory parent; reused when it already holds a cluster
	Port int    // 0: a free port
	// Database is created when missing; "" means "mailferry".
	Database string
	// Durable keeps PostgreSQL's defaults, fsync and synchronous_commit on:
	// the durability Mailferry promises, and so the only setting at which
	// a benchmark's throughput counts. Tests leave it off for speed.
	Durable bool
}

// StartPostgres initialises (once) and starts a PostgreSQL cluster on
// 127.0.0.1 with trust authentication. PostgreSQL refuses to run as root,
// so as root it runs as the "postgres" user.
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Process, error) {
	binDir, err := postgresBinDir()
	if err != nil {
		return nil, err
	}
	if opts.Database == "" {
		opts.Database = "mailferry"
	}
	port := opts.Port
	if port == 0 {
		if port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	runAs, err := serviceUser()
	if err != nil {
		return nil, err
	}
	data := filepath.Join(opts.Dir, "data")
	sock := filepath.Join(opts.Dir, "socket")
	for _, d := range []string{opts.Dir, sock} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create postgres dir: %w", err)
		}
		if err := chown(d, runAs); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); err != nil {
		initdb := command(runAs, filepath.Join(binDir, "initdb"),
			"-D", data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions")
		if out, err := initdb.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("initdb: %w: %s", err, out)
		}
	}
	args := []string{"-D", data, "-p", strconv.Itoa(port), "-k", sock, "-c", "listen_addresses=127.0.0.1",
		"-c", "max_connections=300", "-c", "log_min_messages=warning"}
	if opts.Durable {
		args = append(args, "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "full_page_writes=on")
	} else {
		// Throwaway clusters trade durability for speed; never for production.
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	cmd := command(runAs, filepath.Join(binDir, "postgres"), args...)
	logPath := filepath.Join(opts.Dir, "postgres.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open postgres log: %w", err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	p, err := startProcess("postgres", cmd)
	logFile.Close()
	if err != nil {
		return nil, err
	}
	p.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", port, opts.Database)
	if err := waitTCP(ctx, p, fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
		_ = p.Stop(context.Background())
		return nil, fmt.Errorf("start postgres: %w (log: %s)", err, tail(logPath))
	}
	if err := createDatabase(ctx, binDir, runAs, sock, port, opts.Database); err != nil {
		_ = p.Stop(context.Background())
		return nil, err
	}
	return p, nil
}

func createDatabase(ctx context.Context, binDir string, runAs *user.User, sock string, port int, name string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		psql := command(runAs, filepath.Join(binDir, "psql"), "-h", sock, "-p", strconv.Itoa(port), "-U", "postgres",
			"-d", "postgres", "-tAc", "SELECT 1 FROM pg_database WHERE datname = '"+name+"'")
		out, err := psql.CombinedOutput()
		if err == nil {
			if strings.TrimSpace(string(out)) == "1" {
				return nil
			}
			create := command(runAs, filepath.Join(binDir, "createdb"), "-h", sock, "-p", strconv.Itoa(port), "-U", "postgres", name)
			if out, err := create.CombinedOutput(); err != nil {
				return fmt.Errorf("createdb %s: %w: %s", name, err, out)
			}
			return nil
		}
		// The server accepts TCP before it accepts logins ("starting up").
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("postgres not ready: %w: %s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func postgresBinDir() (string, error) {
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dir := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(matches) == 0 {
		return "", errors.New("PostgreSQL server binaries not found (apt-get install -y postgresql)")
	}
	sort.Slice(matches, func(i, j int) bool { return pgMajor(matches[i]) > pgMajor(matches[j]) })
	return filepath.Dir(matches[0]), nil
}

func pgMajor(path string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
	return n
}

// serviceUser is the account PostgreSQL runs as: the caller, or "postgres"
// when the caller is root.
func serviceUser() (*user.User, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs a \"postgres\" user to run PostgreSQL: %w", err)
	}
	return u, nil
}

func command(u *user.User, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	attr := serverAttr()
	if u != nil {
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		attr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		cmd.Dir = "/"
		cmd.Env = append(os.Environ(), "HOME="+u.HomeDir, "USER="+u.Username)
	}
	cmd.SysProcAttr = attr
	return cmd
}

// serverAttr puts a server in a process group of its own, so that a Ctrl-C
// on the terminal reaches only the program that uses it (make run's
// mailferry), which can then finish its work before the server is stopped;
// and stops the server when the process that started it dies.
func serverAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

func chown(path string, u *user.User) error {
	if u == nil {
		return nil
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(path, uid, gid); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	// Parents must be traversable by the service user (t.TempDir is 0700).
	for dir := filepath.Dir(path); dir != "/" && dir != "."; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			break
		}
		if fi.Mode().Perm()&0o001 == 0 {
			_ = os.Chmod(dir, fi.Mode().Perm()|0o711)
		}
	}
	return nil
}

func startProcess(name string, cmd *exec.Cmd) (*Process, error) {
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	p.stop = func(ctx context.Context) error {
		select {
		case <-p.done:
			return nil
		default:
		}
		// SIGINT is PostgreSQL's "fast shutdown"; redis saves nothing here.
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-p.done:
			return nil
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			<-p.done
			return fmt.Errorf("stop %s: %w", name, ctx.Err())
		}
	}
	return p, nil
}

func waitTCP(ctx context.Context, p *Process, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited early", p.Name)
		case <-ctx.Done():
			return fmt.Errorf("%s did not listen on %s: %w", p.Name, addr, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func tail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		lines = append(lines, s.Text())
		if len(lines) > 10 {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, " | ")
}

// RedactURL hides a password in a connection URL for messages.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
