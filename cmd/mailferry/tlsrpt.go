package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/mailferry/mailferry/config"
	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/store"
	"github.com/mailferry/mailferry/tlspolicy"
)

// startTLSRPT runs the daily TLS-RPT reports (MAILFERRY_TLSRPT_FROM) in
// the scheduler role; every scheduler runs it, and the ledger lets one
// send each report.
func startTLSRPT(ctx context.Context, cfg config.Config, st *store.Store, in *intake.Intake, log *slog.Logger, wg *sync.WaitGroup, errc chan<- error) error {
	r, err := tlspolicy.NewReporter(tlspolicy.ReporterOptions{Store: st, From: cfg.TLSRPTFrom,
		Mailer:    tlspolicy.IntakeMailer{Intake: in, Store: st, Hostname: cfg.Hostname},
		DNSServer: cfg.DNSServer, AllowPrivate: cfg.AllowPrivateDestinations, Logger: log})
	if err != nil {
		return fmt.Errorf("MAILFERRY_TLSRPT_FROM: %w", err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); errc <- r.Run(ctx, time.Hour) }()
	return nil
}

// startPolicyRefresh refreshes cached MTA-STS policies before they expire
// (RFC 8461 10.2), in the scheduler role; the ledger's lock makes one
// process fetch each.
func startPolicyRefresh(ctx context.Context, cfg config.Config, st *store.Store, log *slog.Logger, wg *sync.WaitGroup, errc chan<- error) error {
	c, err := tlspolicy.New(tlspolicy.Options{Cache: st, MTASTS: true, DNSServer: cfg.DNSServer,
		AllowPrivate: cfg.AllowPrivateDestinations, Logger: log})
	if err != nil {
		return err
	}
	wg.Add(1)
	go func() { defer wg.Done(); errc <- c.RunRefresh(ctx, 10*time.Minute) }()
	return nil
}
