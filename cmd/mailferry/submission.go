package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailferry/mailferry/budget"
	"github.com/mailferry/mailferry/config"
	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/ratelimit"
	"github.com/mailferry/mailferry/submission"
)

// submissionDeps is what startSubmission shares with the rest of serve.
type submissionDeps struct {
	intake  *intake.Intake
	auth    submission.Authenticator
	bodies  *budget.Budget    // message bytes in flight, shared with the API
	limiter ratelimit.Limiter // per-key budget, shared with the API; nil: none
	quota   *ratelimit.Quota  // tenants' daily quota, shared with the API; nil: none
	reg     prometheus.Registerer
	log     *slog.Logger
	// verified answers MAILFERRY_REQUIRE_VERIFIED_DOMAIN; nil: off.
	verified func(ctx context.Context, tenant, domain string) (string, error)
}

// startSubmission starts the SMTP submission listeners configured by
// MAILFERRY_SUBMISSION_ADDR (587, STARTTLS) and MAILFERRY_SUBMISSIONS_ADDR
// (465, implicit TLS); either may be "" for off. It returns a stop func that
// ends idle sessions, lets transactions finish until ctx of stop ends, and
// waits for the listeners to return.
//
// Without MAILFERRY_TLS_CERT and MAILFERRY_TLS_KEY it logs a warning and
// starts nothing rather than failing: both addresses are on by default, so
// an error would stop every API-only deployment that never asked for SMTP,
// and submission without TLS is no option (AUTH carries the API key). A
// certificate that is configured but cannot be loaded, or an address that
// cannot be bound, is an error.
func startSubmission(ctx context.Context, cfg config.Config, deps submissionDeps) (stop func(context.Context) error, err error) {
	log := deps.log
	noop := func(context.Context) error { return nil }
	if cfg.SubmissionAddr == "" && cfg.SubmissionsAddr == "" {
		return noop, nil
	}
	if cfg.TLSCert == "" || cfg.TLSKey == "" {
		log.LogAttrs(ctx, slog.LevelWarn, "SMTP submission is off: set MAILFERRY_TLS_CERT and MAILFERRY_TLS_KEY to turn it on, "+
			"or set MAILFERRY_SUBMISSION_ADDR and MAILFERRY_SUBMISSIONS_ADDR empty to silence this warning")
		return noop, nil
	}
	certs, err := loadCertificate(cfg.TLSCert, cfg.TLSKey, log)
	if err != nil {
		return nil, err
	}
	log = log.With("role", "submission")
	srv, err := submission.New(submission.Options{
		Intake:          deps.intake,
		Auth:            deps.auth,
		TLSConfig:       &tls.Config{GetCertificate: certs.get, MinVersion: tls.VersionTLS12},
		Hostname:        cfg.Hostname,
		MaxMessageBytes: cfg.MaxMessageBytes,
		MaxRecipients:   cfg.MaxRecipients,
		Logger:          log,
		Metrics:         submission.NewMetrics(deps.reg),
		Budget:          deps.bodies,
		Limiter:         deps.limiter,
		Quota:           deps.quota,
		HideClient:      cfg.SubmissionHideClient,
		RequireVerified: deps.verified,
		// Both ports together; MaxConnections keeps its default of 100.
		MaxConnectionsPerIP: cfg.SubmissionMaxPerIP,
	})
	if err != nil {
		return nil, err
	}

	type endpoint struct {
		env, addr string
		serve     func(net.Listener) error
	}
	var lns []net.Listener
	var serves []func() error
	for _, e := range []endpoint{
		{"MAILFERRY_SUBMISSION_ADDR", cfg.SubmissionAddr, srv.ServeSubmission},
		{"MAILFERRY_SUBMISSIONS_ADDR", cfg.SubmissionsAddr, srv.ServeSubmissions},
	} {
		if e.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", e.addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("listen on %s %s: %w", e.env, e.addr, err)
		}
		log.LogAttrs(ctx, slog.LevelInfo, "SMTP submission listening", slog.String("listener", e.env), slog.String("addr", ln.Addr().String()))
		lns = append(lns, ln)
		serves = append(serves, func() error { return e.serve(ln) })
	}
	var wg sync.WaitGroup
	for _, serve := range serves {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := serve(); err != nil && !errors.Is(err, submission.ErrServerClosed) {
				log.Error("SMTP submission listener stopped", "error", err)
			}
		}()
	}
	return func(ctx context.Context) error {
		err := srv.Shutdown(ctx)
		wg.Wait()
		return err
	}, nil
}

// certificate holds the submission certificate and reloads it when its
// files change, checking at most once a minute, so a renewed certificate
// (certbot, cert-manager) is used without a restart.
type certificate struct {
	certFile, keyFile string
	log               *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	modTime time.Time // the later of the two files' modification times
	checked time.Time
}

func loadCertificate(certFile, keyFile string, log *slog.Logger) (*certificate, error) {
	c := &certificate{certFile: certFile, keyFile: keyFile, log: log}
	cert, mod, err := c.read()
	if err != nil {
		return nil, err
	}
	c.cert, c.modTime, c.checked = cert, mod, time.Now()
	return c, nil
}

func (c *certificate) read() (*tls.Certificate, time.Time, error) {
	var mod time.Time
	for _, f := range []string{c.certFile, c.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("MAILFERRY_TLS_CERT/MAILFERRY_TLS_KEY: %w", err)
		}
		if fi.ModTime().After(mod) {
			mod = fi.ModTime()
		}
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("MAILFERRY_TLS_CERT %s, MAILFERRY_TLS_KEY %s: %w", c.certFile, c.keyFile, err)
	}
	return &cert, mod, nil
}

func (c *certificate) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.checked) < time.Minute {
		return c.cert, nil
	}
	c.checked = time.Now()
	for _, f := range []string{c.certFile, c.keyFile} {
		if fi, err := os.Stat(f); err == nil && fi.ModTime().After(c.modTime) {
			cert, mod, err := c.read()
			if err != nil {
				// Mid-renewal the pair may not match yet: keep the old one.
				c.log.Warn("reload submission certificate; keeping the old one", "error", err)
				return c.cert, nil
			}
			c.cert, c.modTime = cert, mod
			c.log.Info("reloaded submission certificate", "cert", c.certFile)
			break
		}
	}
	return c.cert, nil
}
