package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/mailferry/mailferry/bounce"
	"github.com/mailferry/mailferry/budget"
	"github.com/mailferry/mailferry/config"
	"github.com/mailferry/mailferry/inbound"
	"github.com/mailferry/mailferry/returnpath"
	"github.com/mailferry/mailferry/store"
)

// bounceSetup is what the worker and the inbound role share: the VERP
// signer (nil without MAILFERRY_BOUNCE_DOMAIN) and the classification
// rules (MAILFERRY_BOUNCE_RULES before the embedded ones).
type bounceSetup struct {
	signer *returnpath.Signer
	rules  *bounce.Rules
}

func newBounceSetup(ctx context.Context, cfg config.Config) (bounceSetup, error) {
	var b bounceSetup
	if cfg.BounceDomain != "" {
		s, err := returnpath.New(cfg.BounceDomain, cfg.SecretKey)
		if err != nil {
			return b, fmt.Errorf("MAILFERRY_BOUNCE_DOMAIN: %w", err)
		}
		b.signer = s
	}
	b.rules = bounce.DefaultRules()
	if cfg.BounceRules != "" {
		r, err := bounce.LoadRules(ctx, cfg.BounceRules)
		if err != nil {
			return b, fmt.Errorf("MAILFERRY_BOUNCE_RULES: %w", err)
		}
		b.rules = r
	}
	return b, nil
}

// inboundDeps is what startInbound shares with the rest of serve.
type inboundDeps struct {
	store   *store.Store
	bounces bounceSetup
	metrics *inbound.Metrics
	bodies  *budget.Budget // message bytes in flight, shared with the API and submission
	log     *slog.Logger
}

// startInbound runs the inbound role: the processor of stored reports
// and, unless MAILFERRY_INBOUND_ADDR is empty, the SMTP listener for DSNs
// and complaints, with STARTTLS when MAILFERRY_TLS_CERT is set. It returns
// a stop func that ends the listener (sessions in progress finish until
// its ctx ends); the processor stops with ctx.
func startInbound(ctx context.Context, cfg config.Config, deps inboundDeps, wg *sync.WaitGroup, errc chan<- error) (stop func(context.Context) error, err error) {
	log := deps.log
	if deps.bounces.signer == nil {
		return nil, errors.New("role inbound: set MAILFERRY_BOUNCE_DOMAIN (and MAILFERRY_SECRET_KEY): it accepts mail only for the return paths made with it")
	}
	proc, err := inbound.NewProcessor(inbound.ProcessorOptions{
		Claimer: deps.store, Messages: deps.store, Applier: deps.store,
		ReturnPaths: deps.bounces.signer, Rules: deps.bounces.rules,
		Logger: log, Metrics: deps.metrics,
	})
	if err != nil {
		return nil, err
	}
	wg.Add(1)
	go func() { defer wg.Done(); errc <- proc.Run(ctx) }()
	noop := func(context.Context) error { return nil }
	if cfg.InboundAddr == "" {
		log.Info("inbound listener off (MAILFERRY_INBOUND_ADDR is empty); processing reports stored by other processes")
		return noop, nil
	}
	var tlsConfig *tls.Config
	if cfg.TLSCert != "" {
		certs, err := loadCertificate(cfg.TLSCert, cfg.TLSKey, log)
		if err != nil {
			return nil, err
		}
		tlsConfig = &tls.Config{GetCertificate: certs.get, MinVersion: tls.VersionTLS12}
	}
	srv, err := inbound.NewServer(inbound.ServerOptions{
		Saver: deps.store, ReturnPaths: deps.bounces.signer, FBLAddress: cfg.FBLAddress,
		CustomReturnPaths: store.NewReturnPathCache(deps.store, store.ReturnPathCacheOptions{FreshNegatives: true}),
		Hostname:          cfg.Hostname, TLSConfig: tlsConfig,
		MaxMessageBytes: min(cfg.MaxMessageBytes, 10<<20),
		Stored:          proc.Wake, Budget: deps.bodies, Logger: log, Metrics: deps.metrics,
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.InboundAddr)
	if err != nil {
		return nil, fmt.Errorf("listen on MAILFERRY_INBOUND_ADDR %s (set it empty to turn the listener off, or run serve with --roles api,worker,scheduler): %w", cfg.InboundAddr, err)
	}
	log.Info("inbound listener for DSNs and complaints", "addr", ln.Addr().String(), "bounce_domain", cfg.BounceDomain,
		"fbl_address", cfg.FBLAddress, "starttls", tlsConfig != nil)
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(ln); err != nil {
			errc <- fmt.Errorf("inbound listener: %w", err)
		}
	}()
	return func(ctx context.Context) error {
		err := srv.Shutdown(ctx)
		<-served
		return err
	}, nil
}

// runInbound shows the reports the inbound listener received.
func runInbound(ctx context.Context, env *environment, args []string) error {
	return dispatch(ctx, env, "inbound", "inbound list [--status unparseable]", args, []command{
		{"list", "list received DSNs and complaints, newest first, with what became of them", inboundList},
	})
}

func inboundList(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "inbound list", "inbound list [--status pending|processed|unparseable|unmatched] [--limit N] [--cursor C]\n\n"+
		"Lists the reports (DSNs, complaints) the inbound listener stored, newest first, with why one was unparseable or unmatched.")
	status := fs.String("status", "", "only reports with this status: pending, processed, unparseable or unmatched")
	limit := fs.Int("limit", 50, "reports per page (at most 1000)")
	cursor := fs.String("cursor", "", "the next page, as printed after the last one")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch *status {
	case "", store.InboundPending, store.InboundProcessed, store.InboundUnparseable, store.InboundUnmatched:
	default:
		return fmt.Errorf("inbound list: --status %q is not pending, processed, unparseable or unmatched", *status)
	}
	_, st, err := openStore(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	rows, next, err := st.ListInbound(ctx, *status, *cursor, *limit)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tRECEIVED_AT\tFROM_IP\tMAIL_FROM\tRCPT_TO\tBYTES\tSTATUS\tKIND\tREASON")
	for _, r := range rows {
		from := r.MailFrom
		if from == "" {
			from = "<>"
		}
		ip := "-"
		if r.RemoteIP.IsValid() {
			ip = r.RemoteIP.String()
		}
		kind := r.Kind
		if kind == "" {
			kind = "-"
		}
		// One line per report: a reason never spans lines.
		reason := strings.Join(strings.Fields(r.Reason), " ")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", r.ID, r.ReceivedAt.UTC().Format(time.RFC3339), ip, from,
			strings.Join(r.RcptTo, ","), r.Size, r.Status, kind, reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if next != "" {
		fmt.Fprintf(env.stdout, "\nmore: mailferry inbound list --cursor %s\n", next)
	}
	return nil
}
