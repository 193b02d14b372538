// Command mailferry is the outbound mail relay: one binary for the HTTP
// API, the delivery workers and the operator commands. This package alone
// reads the environment, opens connections and wires the packages together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/mailferry/mailferry/config"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env *environment, args []string) error
}

func commands() []command {
	return []command{
		{"serve", "run the API and the delivery workers", runServe},
		{"migrate", "apply database migrations", runMigrate},
		{"keys", "create, list and revoke API keys", runKeys},
		{"dkim", "create and list DKIM signing keys", runDKIM},
		{"requeue", "rebuild the Redis queue from PostgreSQL", runRequeue},
		{"queue", "show destinations: jobs queued, in flight, concurrency limit, last error", runQueue},
		{"shaping", "show the destinations' shaping: limits, rules, live throttles and suspensions", runShaping},
		{"parked", "list or release jobs parked after repeated panics", runParked},
		{"inbound", "list the DSNs and complaints the inbound listener received", runInbound},
		{"suppressions", "list, add and remove addresses on a tenant's suppression list", runSuppressions},
		{"version", "print version and build information", runVersion},
	}
}

// environment is what every command gets from main: the streams and a way
// to load the configuration.
type environment struct {
	stdout, stderr io.Writer
	lookup         func(string) (string, bool)
}

func (e *environment) config() (config.Config, error) {
	c, err := config.Load(e.lookup)
	if err != nil {
		return c, fmt.Errorf("configuration:\n  %s", strings.ReplaceAll(err.Error(), "\n", "\n  "))
	}
	return c, nil
}

func (e *environment) logger(c config.Config) *slog.Logger {
	level := map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}[c.LogLevel]
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(e.stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(e.stderr, opts))
}

func main() {
	env := &environment{stdout: os.Stdout, stderr: os.Stderr, lookup: os.LookupEnv}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, env, os.Args[1:])
	stop()
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "mailferry:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, env *environment, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(env.stdout)
		if len(args) == 0 {
			return errors.New("no command given")
		}
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, env, args[1:])
		}
	}
	return fmt.Errorf("unknown command %q; run `mailferry --help` for the list", args[0])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "mailferry — outbound mail relay\n\nUsage: mailferry <command> [flags]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun `mailferry <command> --help` for a command's flags.\n\nEnvironment:")
	vars := config.Vars()
	sort.Slice(vars, func(i, j int) bool { return vars[i].Name < vars[j].Name })
	for _, v := range vars {
		fmt.Fprintf(w, "  %-38s %s (default %s)\n", v.Name, v.Meaning, v.Default)
	}
}

// flagSet builds a subcommand's flags with a help text that ends up on
// stdout for --help.
func flagSet(env *environment, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.stdout, "Usage: mailferry %s\n", synopsis)
		fs.SetOutput(env.stdout)
		fs.PrintDefaults()
		fs.SetOutput(env.stderr)
	}
	return fs
}

// dispatch runs the subcommand of a command group such as "keys".
func dispatch(ctx context.Context, env *environment, group, synopsis string, args []string, subs []command) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(env.stdout, "Usage: mailferry "+synopsis+"\n\nCommands:")
		names := make([]string, len(subs))
		for i, c := range subs {
			fmt.Fprintf(env.stdout, "  %-8s %s\n", c.name, c.summary)
			names[i] = c.name
		}
		if len(args) == 0 {
			return fmt.Errorf("%s: name a subcommand: %s", group, strings.Join(names, ", "))
		}
		return nil
	}
	for _, c := range subs {
		if c.name == args[0] {
			return c.run(ctx, env, args[1:])
		}
	}
	return fmt.Errorf("%s: unknown subcommand %q; run `mailferry %s --help`", group, args[0], group)
}
