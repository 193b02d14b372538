package devstack

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
)

// PgBouncerOptions configures StartPgBouncer.
type PgBouncerOptions struct {
	Dir string // config, log and pid files; created if missing
	// Upstream is the PostgreSQL URL PgBouncer forwards to (host, port and
	// user are taken from it; every database name is forwarded as is).
	Upstream string
	Port     int // 0: a free port
	// PoolSize is the server connections per database and user; 0: 20.
	PoolSize int
}

// StartPgBouncer starts PgBouncer on 127.0.0.1 in transaction pooling mode
// (pool_mode=transaction, the mode users put in front of PostgreSQL to
// share few server connections among many clients) in front of Upstream,
// with trust authentication. Its URL is Upstream with PgBouncer's host and
// port. PgBouncer refuses to run as root, so as root it runs as the
// "postgres" user, like PostgreSQL.
func StartPgBouncer(ctx context.Context, opts PgBouncerOptions) (*Process, error) {
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/pgbouncer"); serr != nil {
			return nil, fmt.Errorf("pgbouncer not installed (scripts/install-deps.sh installs it): %w", err)
		}
		bin = "/usr/sbin/pgbouncer"
	}
	up, err := url.Parse(opts.Upstream)
	if err != nil || up.Hostname() == "" || up.Port() == "" {
		return nil, fmt.Errorf("pgbouncer upstream %s: want postgres://user@host:port/db", RedactURL(opts.Upstream))
	}
	user := up.User.Username()
	if user == "" {
		user = "postgres"
	}
	if opts.PoolSize <= 0 {
		opts.PoolSize = 20
	}
	runAs, err := serviceUser()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pgbouncer dir: %w", err)
	}
	if err := chown(opts.Dir, runAs); err != nil {
		return nil, err
	}
	// A port found free may be taken by another process before PgBouncer
	// binds it: then another port, a few times.
	for attempt := 1; ; attempt++ {
		port := opts.Port
		if port == 0 {
			if port, err = FreePort(); err != nil {
				return nil, err
			}
		}
		p, err := startPgBouncerOn(ctx, opts, up, user, runAs, bin, port)
		if err == nil || opts.Port != 0 || attempt == 5 || !strings.Contains(err.Error(), "Address already in use") {
			return p, err
		}
	}
}

// startPgBouncerOn writes the configuration for port and starts PgBouncer.
func startPgBouncerOn(ctx context.Context, opts PgBouncerOptions, up *url.URL, dbUser string, runAs *user.User, bin string, port int) (*Process, error) {
	// The wildcard database forwards any database name, so one PgBouncer
	// serves every per-test database (testenv.Database) of one server.
	// unix_socket_dir empty: TCP only, no socket file shared between runs.
	// server_reset_query is ignored in transaction mode; session state
	// therefore leaks between clients, which is exactly what the tests
	// behind it must survive.
	conf := fmt.Sprintf(`[databases]
* = host=%s port=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = transaction
default_pool_size = %d
max_client_conn = 2000
ignore_startup_parameters = extra_float_digits
logfile = %s
pidfile = %s
log_connections = 0
log_disconnections = 0
`, up.Hostname(), up.Port(), port, filepath.Join(opts.Dir, "users.txt"), opts.PoolSize,
		filepath.Join(opts.Dir, "pgbouncer.log"), filepath.Join(opts.Dir, "pgbouncer.pid"))
	files := map[string]string{
		"pgbouncer.ini": conf,
		"users.txt":     strconv.Quote(dbUser) + ` ""` + "\n",
	}
	for name, body := range files {
		path := filepath.Join(opts.Dir, name)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			return nil, fmt.Errorf("write %s: %w", name, err)
		}
		if err := chown(path, runAs); err != nil {
			return nil, err
		}
	}
	cmd := command(runAs, bin, filepath.Join(opts.Dir, "pgbouncer.ini"))
	p, err := startProcess("pgbouncer", cmd)
	if err != nil {
		return nil, err
	}
	pu := *up
	pu.Host = "127.0.0.1:" + strconv.Itoa(port)
	p.URL = pu.String()
	if err := waitTCP(ctx, p, pu.Host); err != nil {
		_ = p.Stop(context.Background())
		return nil, fmt.Errorf("start pgbouncer: %w (log: %s)", err, tail(filepath.Join(opts.Dir, "pgbouncer.log")))
	}
	return p, nil
}
