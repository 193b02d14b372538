package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/store"
)

func runDKIM(ctx context.Context, env *environment, args []string) error {
	return dispatch(ctx, env, "dkim", "dkim keygen --domain D [--selector S] [--algorithm rsa2048|ed25519] [--json] | dkim list | dkim rotate --domain D | dkim zone", args, []command{
		{"keygen", "create and store a signing key; print its DNS record", dkimKeygen},
		{"list", "list signing keys", dkimList},
		{"rotate", "rotate a sending domain's keys; signing switches once DNS shows them", dkimRotate},
		{"zone", "print the TXT records of MAILFERRY_DKIM_ZONE (delegated DKIM)", dkimZone},
	})
}

// defaultSelector is unique per algorithm and month, so an RSA and an
// Ed25519 key can sign side by side and a rotation gets a fresh name.
func defaultSelector(alg dkim.Algorithm, now time.Time) string {
	prefix := "rsa"
	if alg == dkim.AlgorithmEd25519 {
		prefix = "ed"
	}
	return prefix + now.UTC().Format("200601")
}

func dkimKeygen(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "dkim keygen", "dkim keygen --domain D [--selector S] [--algorithm rsa2048|ed25519] [--json]\n\n"+
		"Creates and stores a DKIM signing key and prints the DNS TXT record to publish.\n"+
		"Private keys are encrypted at rest when MAILFERRY_SECRET_KEY is set.")
	domain := fs.String("domain", "", "the From domain the key signs for (required)")
	selector := fs.String("selector", "", "DNS selector (default: rsaYYYYMM or edYYYYMM)")
	algorithm := fs.String("algorithm", "rsa2048", "rsa2048 or ed25519")
	asJSON := fs.Bool("json", false, `print {"domain","selector","algorithm","dns_name","dns_value"}`)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *domain == "" {
		return errors.New("dkim keygen: --domain is required")
	}
	alg, err := dkim.ParseAlgorithm(*algorithm)
	if err != nil {
		return fmt.Errorf("dkim keygen: --algorithm: %w", err)
	}
	if *selector == "" {
		*selector = defaultSelector(alg, time.Now())
	}
	cfg, st, err := openStore(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	sealer, err := dkim.NewSealer(cfg.SecretKey)
	if err != nil {
		return fmt.Errorf("MAILFERRY_SECRET_KEY: %w", err)
	}
	key, err := dkim.Generate(rand.Reader, *domain, *selector, alg)
	if err != nil {
		return fmt.Errorf("dkim keygen: %w", err)
	}
	sealed, err := sealer.Seal(key.PrivateKey)
	if err != nil {
		return fmt.Errorf("dkim keygen: seal private key: %w", err)
	}
	if _, err := st.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	err = st.CreateDKIMKey(ctx, store.DKIMKey{
		Domain: key.Domain, Selector: key.Selector, Algorithm: string(key.Algorithm),
		PrivateKey: sealed, PublicKey: key.PublicKey, CreatedAt: key.CreatedAt,
	})
	if errors.Is(err, store.ErrExists) {
		return fmt.Errorf("dkim keygen: %s already has a key with selector %q; choose another --selector", key.Domain, key.Selector)
	}
	if err != nil {
		return fmt.Errorf("dkim keygen: %w", err)
	}
	if !sealer.Encrypts() {
		fmt.Fprintln(env.stderr, "warning: MAILFERRY_SECRET_KEY is not set; the private key is stored unencrypted")
	}
	rec := key.Record()
	if *asJSON {
		return json.NewEncoder(env.stdout).Encode(rec)
	}
	fmt.Fprintf(env.stdout, "Publish this TXT record, then mail from %s is signed with it:\n\n", key.Domain)
	fmt.Fprintf(env.stdout, "%s. IN TXT %s\n", rec.DNSName, quoteTXT(key.TXTStrings()))
	return nil
}

// quoteTXT writes a TXT value as zone-file strings of at most 255 bytes
// (RFC 1035 3.3.14); an RSA-2048 record needs two.
func quoteTXT(parts []string) string {
	q := make([]string, len(parts))
	for i, p := range parts {
		q[i] = `"` + p + `"`
	}
	if len(q) == 1 {
		return q[0]
	}
	return "( " + strings.Join(q, " ") + " )"
}

func dkimList(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "dkim list", "dkim list [--json]")
	asJSON := fs.Bool("json", false, "print one JSON record per key")
	if err := fs.Parse(args); err != nil {
		return err
	}
	_, st, err := openStore(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	keys, err := st.ListDKIMKeys(ctx)
	if err != nil {
		return fmt.Errorf("dkim list: %w", err)
	}
	if *asJSON {
		enc := json.NewEncoder(env.stdout)
		for _, k := range keys {
			rec := dkim.Key{Domain: k.Domain, Selector: k.Selector, Algorithm: dkim.Algorithm(k.Algorithm), PublicKey: k.PublicKey}.Record()
			if err := enc.Encode(rec); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DOMAIN\tSELECTOR\tALGORITHM\tACTIVE\tSTATE\tENCRYPTED\tCREATED\tDNS NAME")
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%s\t%t\t%s\t%s._domainkey.%s\n", k.Domain, k.Selector, k.Algorithm, k.Active, k.State,
			dkim.IsSealed(k.PrivateKey), k.CreatedAt.UTC().Format(time.RFC3339), k.Selector, k.Domain)
	}
	return tw.Flush()
}
