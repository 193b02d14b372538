package main

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailferry/mailferry/config"
	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/relay"
	"github.com/mailferry/mailferry/returnpath"
	"github.com/mailferry/mailferry/shaping"
	"github.com/mailferry/mailferry/smtpclient"
	"github.com/mailferry/mailferry/store"
	"github.com/mailferry/mailferry/tlspolicy"
)

// workerBounces is what a worker needs for bounces: the VERP signer (nil:
// the stored MAIL FROM), the rules, and the sync bounce counter.
type workerBounces struct {
	bounceSetup
	count func(class string)
}

func newWorker(cfg config.Config, st *store.Store, q *queue.Queue, reg prometheus.Registerer, log *slog.Logger, b workerBounces, sh *shaping.Shaper) (*relay.Worker, *tlspolicy.Client, error) {
	sealer, err := dkim.NewSealer(cfg.SecretKey)
	if err != nil {
		return nil, nil, fmt.Errorf("MAILFERRY_SECRET_KEY: %w", err)
	}
	router, err := relay.NewRouter(relay.RouterOptions{DNSServer: cfg.DNSServer, AllowPrivate: cfg.AllowPrivateDestinations})
	if err != nil {
		return nil, nil, fmt.Errorf("MAILFERRY_DNS_SERVER: %w", err)
	}
	copts := smtpclient.Options{Hostname: cfg.Hostname, Port: cfg.SMTPPort, AllowPrivate: cfg.AllowPrivateDestinations}
	// Keep as many idle connections to a host as transactions may run to
	// it: the smarthost's 50 would otherwise be cut to the pool's 32 and
	// redialled.
	copts.Reuse.MaxIdlePerHost = max(cfg.WorkerPerDomain, cfg.SmarthostConnections)
	// max_messages_per_connection of the shaping file, per MX host.
	copts.Reuse.MaxMessagesFor = sh.MaxMessagesPerConnection
	route := router.Route
	if cfg.Smarthost != nil {
		route, err = smarthostRoute(cfg, &copts)
		if err != nil {
			return nil, nil, err
		}
		log.Info("relaying all mail through a smarthost", "smarthost", cfg.Smarthost.Redacted())
	}
	inner, err := smtpclient.New(copts)
	if err != nil {
		return nil, nil, fmt.Errorf("smtp client: %w", err)
	}
	// The TLS policy layer: MTA-STS of the recipient domain (not through
	// a smarthost, whose name no recipient domain's policy lists) and
	// REQUIRETLS/TLS-Required of the message.
	client, err := tlspolicy.New(tlspolicy.Options{
		Inner: inner, Cache: st, MTASTS: cfg.MTASTS && cfg.Smarthost == nil, DNSSEC: cfg.DNSSEC && cfg.Smarthost == nil,
		DNSServer: cfg.DNSServer, AllowPrivate: cfg.AllowPrivateDestinations,
		Logger: log, Registerer: reg,
	})
	if err != nil {
		return nil, nil, err
	}
	if cfg.DNSSEC {
		log.Info("DANE on: trusting the AD bit of the DNS server, which must validate and be reached over a trusted path",
			"dns_server", cmp.Or(cfg.DNSServer, "/etc/resolv.conf"))
	}
	w, err := relay.NewWorker(relay.WorkerOptions{
		Ledger: st, Queue: q, Route: route, Client: client,
		Signer: dkim.NewSigner(dkim.SignOptions{}), Sealer: sealer,
		Logger: log, Metrics: relay.NewMetrics(reg),
		RetrySchedule: cfg.RetrySchedule, MaxQueueAge: cfg.MaxQueueAge,
		Concurrency: cfg.WorkerConcurrency, PerDestination: cfg.WorkerPerDomain,
		Smarthost: cfg.Smarthost != nil, SmarthostConnections: cfg.SmarthostConnections,
		Heartbeat: cfg.Leases.Heartbeat, Lease: cfg.Leases.Lease,
		ReturnPaths: returnPaths(b.signer), Rules: b.rules, CountBounce: b.count,
		CustomReturnPaths: store.NewReturnPathCache(st, store.ReturnPathCacheOptions{}),
		Shaper:            sh,
	})
	if err != nil {
		return nil, nil, err
	}
	return w, client, nil
}

// returnPaths keeps a nil signer a nil interface: relay tells "no bounce
// domain" by a nil ReturnPaths.
func returnPaths(s *returnpath.Signer) relay.ReturnPaths {
	if s == nil {
		return nil
	}
	return s
}

// smarthostRoute sends every domain's mail to the configured relay host.
// The operator chose that host, so the private-address guard does not
// apply to it (a local mail catcher on 127.0.0.1 is the common case).
func smarthostRoute(cfg config.Config, copts *smtpclient.Options) (func(context.Context, string) ([]relay.Host, error), error) {
	u := cfg.Smarthost
	host := u.Hostname()
	port := 587 // RFC 6409 submission with STARTTLS
	if u.Scheme == "smtps" {
		port = 465 // RFC 8314 implicit TLS
		copts.ImplicitTLS = true
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil {
			return nil, fmt.Errorf("MAILFERRY_SMARTHOST: bad port %q", p)
		}
		port = n
	}
	copts.Port = port
	copts.AllowPrivate = true
	if u.User != nil {
		copts.Username = u.User.Username()
		copts.Password, _ = u.User.Password()
		if un, err := url.PathUnescape(copts.Username); err == nil {
			copts.Username = un
		}
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		h := []relay.Host{{Name: host, Addrs: []netip.Addr{ip.Unmap()}}}
		return func(context.Context, string) ([]relay.Host, error) { return h, nil }, nil
	}
	resolver, err := relay.NewRouter(relay.RouterOptions{DNSServer: cfg.DNSServer, AllowPrivate: true})
	if err != nil {
		return nil, fmt.Errorf("MAILFERRY_DNS_SERVER: %w", err)
	}
	return func(ctx context.Context, _ string) ([]relay.Host, error) {
		if host == "localhost" {
			return []relay.Host{{Name: host, Addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}}, nil
		}
		h, err := resolver.Resolve(ctx, host)
		if err != nil {
			return nil, fmt.Errorf("smarthost %s: %w", net.JoinHostPort(host, strconv.Itoa(port)), err)
		}
		return []relay.Host{h}, nil
	}, nil
}

// dkimWarner tells the API whether a From domain has a signing key, so
// the 202 can warn that mail from it goes out unsigned. Answers are kept
// briefly: a key created with `mailferry dkim keygen` shows within a minute.
type dkimWarner struct {
	st  *store.Store
	log *slog.Logger
	mu  sync.Mutex
	has map[string]cached
}

type cached struct {
	has bool
	at  time.Time
}

func newDKIMWarner(st *store.Store, log *slog.Logger) *dkimWarner {
	return &dkimWarner{st: st, log: log, has: map[string]cached{}}
}

func (w *dkimWarner) warn(ctx context.Context, domain string) []string {
	w.mu.Lock()
	c, ok := w.has[domain]
	w.mu.Unlock()
	if !ok || time.Since(c.at) > time.Minute {
		keys, err := w.st.ActiveDKIMKeys(ctx, domain)
		if err != nil {
			w.log.Warn("look up dkim keys", "domain", domain, "error", err)
			return nil
		}
		c = cached{has: len(keys) > 0, at: time.Now()}
		w.mu.Lock()
		if len(w.has) > 10000 {
			clear(w.has)
		}
		w.has[domain] = c
		w.mu.Unlock()
	}
	if c.has {
		return nil
	}
	return []string{fmt.Sprintf("no DKIM key for %s: the message will be sent unsigned (create one with `mailferry dkim keygen --domain %s`)", domain, domain)}
}
