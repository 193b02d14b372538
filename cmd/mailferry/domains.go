package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"

	"github.com/miekg/dns"

	"github.com/mailferry/mailferry/config"
	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/domains"
	"github.com/mailferry/mailferry/store"
)

// newDomains builds the sending-domain service from the configuration.
func newDomains(cfg config.Config, st *store.Store, log *slog.Logger) (*domains.Service, error) {
	sealer, err := dkim.NewSealer(cfg.SecretKey)
	if err != nil {
		return nil, fmt.Errorf("MAILFERRY_SECRET_KEY: %w", err)
	}
	svc, err := domains.New(domains.Options{
		Ledger: st, Sealer: sealer, DNSServer: cfg.DNSServer, DKIMZone: cfg.DKIMZone, SPFInclude: cfg.SPFInclude,
		BounceDomain: cfg.BounceDomain, RetireAfter: cfg.DKIMRetireAfter, RotateEvery: cfg.DKIMRotateEvery,
		CheckEvery: cfg.DomainCheckInterval, Logger: log.With("component", "domains"),
	})
	if err != nil {
		return nil, fmt.Errorf("MAILFERRY_DNS_SERVER: %w", err)
	}
	return svc, nil
}

// startDKIMZone serves MAILFERRY_DKIM_ZONE on MAILFERRY_DKIM_ZONE_ADDR,
// UDP and TCP, until ctx ends.
func startDKIMZone(ctx context.Context, addr string, svc *domains.Service, log *slog.Logger, wg *sync.WaitGroup, errc chan<- error) error {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return fmt.Errorf("MAILFERRY_DKIM_ZONE_ADDR: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		return fmt.Errorf("MAILFERRY_DKIM_ZONE_ADDR: %w", err)
	}
	h := svc.ZoneServer()
	servers := []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}}
	for _, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ActivateAndServe(); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("dkim zone server: %w", err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		for _, s := range servers {
			_ = s.Shutdown()
		}
	}()
	log.Info("serving the DKIM zone", "addr", addr)
	return nil
}

// verifiedForSubmission adapts domains' check to submission's: a refusal
// is the text of the SMTP reply.
func verifiedForSubmission(svc *domains.Service) func(ctx context.Context, tenant, domain string) (string, error) {
	return func(ctx context.Context, tenant, domain string) (string, error) {
		err := svc.RequireVerified(ctx, tenant, domain)
		var ue *domains.UnverifiedError
		if errors.As(err, &ue) {
			return ue.Error(), nil
		}
		return "", err
	}
}

func dkimRotate(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "dkim rotate", "dkim rotate --domain D\n\n"+
		"Starts a DKIM rotation of a sending domain: new keys are made (delegated mode: in the\n"+
		"slot the tenant's CNAMEs already point to; direct mode: new TXT records to publish).\n"+
		"Signing switches once DNS shows them; the old keys stay published for\n"+
		"MAILFERRY_DKIM_RETIRE_AFTER, then are retired.")
	domain := fs.String("domain", "", "the sending domain (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *domain == "" {
		return errors.New("dkim rotate: --domain is required")
	}
	cfg, st, err := openStore(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	if _, err := st.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	svc, err := newDomains(cfg, st, env.logger(cfg))
	if err != nil {
		return err
	}
	v, err := svc.Rotate(ctx, "", *domain)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("dkim rotate: %s is not a sending domain (POST /v1/domains creates one)", *domain)
	case errors.Is(err, store.ErrRotating):
		return fmt.Errorf("dkim rotate: a rotation of %s already waits for its keys to show in DNS", *domain)
	case err != nil:
		return fmt.Errorf("dkim rotate: %w", err)
	}
	fmt.Fprintf(env.stdout, "Rotation of %s started (%s DKIM). New keys:\n\n", v.Name, v.DKIMMode)
	for _, r := range v.Records {
		if r.Purpose == domains.PurposeDKIM && r.KeyState == store.KeyPending {
			fmt.Fprintf(env.stdout, "%s. IN %s %s  ; %s\n", r.Name, r.Type, r.Value, r.Status)
		}
	}
	if v.DKIMMode == domains.ModeDelegated {
		fmt.Fprintf(env.stdout, "\nPublish them in %s (`mailferry dkim zone` prints the zone's records); the tenant changes nothing.\n", cfg.DKIMZone)
	} else {
		fmt.Fprintln(env.stdout, "\nThe tenant publishes these TXT records; signing switches once they are seen.")
	}
	return nil
}

// dkimZone prints the records of MAILFERRY_DKIM_ZONE: every delegated key
// that is pending, signing or retiring, as zone-file lines.
func dkimZone(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "dkim zone", "dkim zone\n\nPrints the TXT records MAILFERRY_DKIM_ZONE must serve for delegated DKIM.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, st, err := openStore(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	if cfg.DKIMZone == "" {
		return errors.New("dkim zone: MAILFERRY_DKIM_ZONE is not set")
	}
	keys, err := st.ListDKIMKeys(ctx)
	if err != nil {
		return fmt.Errorf("dkim zone: %w", err)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].Domain+keys[i].Selector < keys[j].Domain+keys[j].Selector })
	for _, k := range keys {
		if !strings.HasPrefix(k.Selector, "mf1-") && !strings.HasPrefix(k.Selector, "mf2-") {
			continue
		}
		key := dkim.Key{Domain: k.Domain, Selector: k.Selector, Algorithm: dkim.Algorithm(k.Algorithm), PublicKey: k.PublicKey}
		fmt.Fprintf(env.stdout, "%s. IN TXT %s\n", domains.DelegatedTarget(k.Selector, k.Domain, cfg.DKIMZone), quoteTXT(key.TXTStrings()))
	}
	return nil
}
