package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mailferry/mailferry/config"
	"github.com/mailferry/mailferry/store"
)

type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func runKeys(ctx context.Context, env *environment, args []string) error {
	return dispatch(ctx, env, "keys", "keys create --tenant T --domain D [--domain D2] [--scope S] [--admin] | keys list | keys revoke ID", args, []command{
		{"create", "create a key; prints the secret alone on stdout", keysCreate},
		{"list", "list keys", keysList},
		{"revoke", "revoke a key at once", keysRevoke},
	})
}

// openStore loads the configuration once and opens a small pool: every
// operator command needs both.
func openStore(ctx context.Context, env *environment) (config.Config, *store.Store, error) {
	cfg, err := env.config()
	if err != nil {
		return cfg, nil, err
	}
	st, err := store.Open(ctx, store.Options{URL: cfg.DatabaseURL.String(), Pooler: cfg.DatabasePooler, MaxConns: 2})
	if err != nil {
		return cfg, nil, fmt.Errorf("open database %s: %w", cfg.DatabaseURL.Redacted(), err)
	}
	return cfg, st, nil
}

func keysCreate(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "keys create", "keys create --tenant T --domain D [--domain D2] [--scope send --scope read --scope manage]\n"+
		"keys create --admin [--tenant T]\n\n"+
		"Creates an API key allowed to send from the domains; prints the secret alone on stdout.\n"+
		"Scopes: send, read, manage (default: all three). --admin makes an operator key, which manages\n"+
		"tenants and every tenant's keys over HTTP (POST /v1/tenants, /v1/keys); without --domain it cannot send.")
	tenant := fs.String("tenant", "", "tenant the key belongs to (required, except with --admin: default "+operatorTenant+")")
	admin := fs.Bool("admin", false, "operator key: manages tenants and keys of every tenant")
	var domains, scopes stringList
	fs.Var(&domains, "domain", "sender domain the key may use (repeatable; at least one unless the key lacks send)")
	fs.Var(&scopes, "scope", "send, read or manage (repeatable; default all three, or read and manage for --admin without --domain)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *admin && *tenant == "" {
		*tenant = operatorTenant
	}
	if *admin && len(domains) == 0 && len(scopes) == 0 {
		scopes = stringList{store.ScopeRead, store.ScopeManage}
	}
	if *tenant == "" || (len(domains) == 0 && !*admin) {
		return errors.New("keys create: --tenant and at least one --domain are required")
	}
	_, st, err := openStore(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	key, secret, err := st.CreateKey(ctx, store.KeySpec{Tenant: *tenant, Domains: domains, Scopes: scopes, Admin: *admin})
	if err != nil {
		return fmt.Errorf("create key: %w", err)
	}
	kind := "key"
	if key.Admin {
		kind = "operator key"
	}
	fmt.Fprintf(env.stderr, "created %s %s for tenant %s, domains %s, scopes %s\n", kind, key.ID, key.TenantID,
		orDash(strings.Join(key.Domains, ", ")), strings.Join(key.Scopes, ", "))
	fmt.Fprintln(env.stdout, secret)
	return nil
}

// operatorTenant is the tenant of an operator key made without --tenant.
const operatorTenant = "operator"

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func keysList(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "keys list", "keys list")
	if err := fs.Parse(args); err != nil {
		return err
	}
	_, st, err := openStore(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	keys, err := st.ListAPIKeys(ctx)
	if err != nil {
		return fmt.Errorf("list keys: %w", err)
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTENANT\tDOMAINS\tSCOPES\tCREATED\tLAST USED\tREVOKED")
	for _, k := range keys {
		revoked, used := "-", "-"
		if k.RevokedAt != nil {
			revoked = k.RevokedAt.UTC().Format(time.RFC3339)
		}
		if k.LastUsedAt != nil {
			used = k.LastUsedAt.UTC().Format(time.RFC3339)
		}
		scopes := strings.Join(k.Scopes, ",")
		if k.Admin {
			scopes += ",admin"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.TenantID, orDash(strings.Join(k.Domains, ",")), scopes,
			k.CreatedAt.UTC().Format(time.RFC3339), used, revoked)
	}
	return tw.Flush()
}

func keysRevoke(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "keys revoke", "keys revoke ID\n\nRevokes the key at once: requests with it are refused with 401.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("keys revoke: give exactly one key ID (see `mailferry keys list`)")
	}
	_, st, err := openStore(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := st.RevokeAPIKey(ctx, fs.Arg(0)); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("keys revoke: no key %q (see `mailferry keys list`)", fs.Arg(0))
		}
		return fmt.Errorf("revoke key: %w", err)
	}
	fmt.Fprintf(env.stderr, "revoked key %s\n", fs.Arg(0))
	return nil
}
