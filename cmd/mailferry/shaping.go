package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/config"
	"github.com/mailferry/mailferry/internal/redisconn"
	"github.com/mailferry/mailferry/relay"
	"github.com/mailferry/mailferry/shaping"
)

// loadShaping is the built-in shaping with MAILFERRY_SHAPING_FILE over it.
func loadShaping(cfg config.Config) (*shaping.Config, error) {
	var data []byte
	if cfg.ShapingFile != "" {
		var err error
		if data, err = os.ReadFile(cfg.ShapingFile); err != nil {
			return nil, fmt.Errorf("MAILFERRY_SHAPING_FILE: %w", err)
		}
	}
	c, err := shaping.Load(data)
	if err != nil {
		return nil, fmt.Errorf("MAILFERRY_SHAPING_FILE %s: %w", cfg.ShapingFile, err)
	}
	return c, nil
}

// newShaper applies the shaping configuration across the fleet through rdb.
func newShaper(cfg config.Config, rdb redis.UniversalClient, reg prometheus.Registerer, log *slog.Logger) (*shaping.Shaper, error) {
	c, err := loadShaping(cfg)
	if err != nil {
		return nil, err
	}
	return shaping.New(shaping.Options{Config: c, Redis: rdb, Logger: log, Registerer: reg})
}

// runShaping shows the destinations' shaping to an operator.
func runShaping(ctx context.Context, env *environment, args []string) error {
	return dispatch(ctx, env, "shaping", "shaping show [--domain D]", args, []command{
		{"show", "print each shaping entry's limits and rules with the live state from Redis", shapingShow},
	})
}

func shapingShow(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "shaping show", "shaping show [--domain D]\n\nPrints the effective shaping (built-in entries with MAILFERRY_SHAPING_FILE over them):\n"+
		"per entry its matches, max_connections, max_messages_per_connection, max_message_rate, the rate\n"+
		"allowed now and any throttle or suspension, fleet-wide from Redis; then the automation rules.\n"+
		"With --domain, resolves the domain's MX hosts and shows the destination and entry it gets.")
	domain := fs.String("domain", "", "recipient domain to resolve and show")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := env.config()
	if err != nil {
		return err
	}
	rdb, err := redisconn.Open(cfg.RedisMode, cfg.RedisURL.String(), redisconn.Options{})
	if err != nil {
		return fmt.Errorf("MAILFERRY_REDIS_URL: %w", err)
	}
	defer rdb.Close()
	sh, err := newShaper(cfg, rdb, nil, nil)
	if err != nil {
		return err
	}
	now := time.Now()
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	line := func(es shaping.EntryState, matches string) {
		l := es.Limits
		state := "ok"
		switch {
		case es.State.Suspended(now):
			state = "suspended until " + es.State.SuspendedUntil.UTC().Format(time.RFC3339) + " (" + es.State.Reason + ")"
		case es.State.FactorAt(now) < 1:
			state = fmt.Sprintf("throttled ×%g (%s)", es.State.FactorAt(now), es.State.Reason)
		}
		rateNow := "-"
		if !l.MaxMessageRate.IsZero() {
			rateNow = fmt.Sprintf("%.3g/s", es.Rate)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", es.Name, matches, limitOrDash(l.MaxConnections), limitOrDash(l.MaxMessagesPerConnection),
			l.MaxMessageRate, rateNow, state)
	}
	header := "ENTRY\tMATCHES\tMAX_CONNECTIONS\tMSGS/CONNECTION\tMAX_RATE\tRATE_NOW\tSTATE"
	if *domain != "" {
		dest, err := destinationFor(ctx, cfg, *domain)
		if err != nil {
			return err
		}
		es, err := sh.Inspect(ctx, dest)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "%s → destination %s → entry %s\n", *domain, dest, es.Name)
		fmt.Fprintln(tw, header)
		line(es, dest)
		return tw.Flush()
	}
	fmt.Fprintln(tw, header)
	c := sh.Config()
	for _, e := range c.Entries {
		es, err := sh.InspectEntry(ctx, e)
		if err != nil {
			return err
		}
		line(es, strings.Join(append(append([]string{}, e.Destinations...), e.MXSuffixes...), ","))
	}
	fmt.Fprintf(tw, "default\t(every other destination)\t%s\t%s\t%s\t-\t-\n", limitOrDash(c.Default.MaxConnections), limitOrDash(c.Default.MaxMessagesPerConnection), c.Default.MaxMessageRate)
	fmt.Fprintln(tw, "\nRULE\tENTRIES\tACTION\tDURATION\tMATCH")
	for _, r := range c.Rules {
		entries := strings.Join(r.Entries, ",")
		if entries == "" {
			entries = "(all)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Name, entries, r.Action, r.Duration, strings.TrimPrefix(r.Match.String(), "(?i)"))
	}
	return tw.Flush()
}

// destinationFor resolves domain as a worker would and names its
// destination.
func destinationFor(ctx context.Context, cfg config.Config, domain string) (string, error) {
	if cfg.Smarthost != nil {
		return relay.SmarthostDestination, nil
	}
	router, err := relay.NewRouter(relay.RouterOptions{DNSServer: cfg.DNSServer, AllowPrivate: cfg.AllowPrivateDestinations})
	if err != nil {
		return "", fmt.Errorf("MAILFERRY_DNS_SERVER: %w", err)
	}
	hosts, err := router.Route(ctx, strings.ToLower(domain))
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", domain, err)
	}
	return relay.DestinationName(hosts), nil
}

// limitOrDash prints an unset limit as "-": the scheduler's or client's own.
func limitOrDash(n int) string {
	if n == 0 {
		return "-"
	}
	return strconv.Itoa(n)
}
