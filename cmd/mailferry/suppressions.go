package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/store"
)

// runSuppressions manages a tenant's suppression list, as the API's
// /v1/suppressions does, for an operator without the tenant's key.
func runSuppressions(ctx context.Context, env *environment, args []string) error {
	return dispatch(ctx, env, "suppressions",
		"suppressions list --tenant T [--reason R] | suppressions add --tenant T [--reason manual] [--expires RFC3339|DURATION] EMAIL | suppressions remove --tenant T EMAIL",
		args, []command{
			{"list", "list a tenant's suppressed addresses", suppressionsList},
			{"add", "put an address on a tenant's suppression list", suppressionsAdd},
			{"remove", "take an address off a tenant's suppression list", suppressionsRemove},
		})
}

func suppressionsList(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "suppressions list", "suppressions list --tenant T [--reason R]\n\nLists the tenant's live entries: address, reason, message, when added, expiry.")
	tenant := fs.String("tenant", "", "tenant whose list to show (required)")
	reason := fs.String("reason", "", "only this reason: "+strings.Join(store.SuppressionReasons(), ", "))
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *tenant == "" || fs.NArg() != 0 {
		return errors.New("suppressions list: --tenant is required, and no other argument")
	}
	if *reason != "" && !slices.Contains(store.SuppressionReasons(), *reason) {
		return fmt.Errorf("suppressions list: --reason %q is not one of %s", *reason, strings.Join(store.SuppressionReasons(), ", "))
	}
	_, st, err := openStore(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "EMAIL\tREASON\tMESSAGE_ID\tCREATED_AT\tEXPIRES_AT")
	page := store.SuppressionPage{Reason: *reason, Limit: store.MaxSuppressionPage}
	for {
		list, err := st.ListSuppressions(ctx, *tenant, page)
		if err != nil {
			return err
		}
		for _, s := range list {
			msg, expires := "-", "never"
			if s.MessageID != nil {
				msg = s.MessageID.String()
			}
			if s.ExpiresAt != nil {
				expires = s.ExpiresAt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Email, s.Reason, msg, s.CreatedAt.UTC().Format(time.RFC3339), expires)
		}
		if len(list) < page.Limit {
			break
		}
		page.After = list[len(list)-1].Email
	}
	return tw.Flush()
}

func suppressionsAdd(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "suppressions add", "suppressions add --tenant T [--reason manual] [--expires RFC3339|DURATION] EMAIL\n\nLists EMAIL for the tenant; messages to it are accepted with that recipient suppressed. Adding it again replaces reason and expiry.")
	tenant := fs.String("tenant", "", "tenant whose list to change (required)")
	reason := fs.String("reason", store.SuppressedManual, "one of "+strings.Join(store.SuppressionReasons(), ", "))
	expires := fs.String("expires", "", "when the entry lapses: an RFC 3339 time or a duration from now (720h); default never")
	if err := fs.Parse(args); err != nil {
		return err
	}
	email, err := suppressionArgs("suppressions add", *tenant, fs.Args())
	if err != nil {
		return err
	}
	if !slices.Contains(store.SuppressionReasons(), *reason) {
		return fmt.Errorf("suppressions add: --reason %q is not one of %s", *reason, strings.Join(store.SuppressionReasons(), ", "))
	}
	var until *time.Time
	if *expires != "" {
		t, err := parseExpiry(*expires, time.Now())
		if err != nil {
			return fmt.Errorf("suppressions add: --expires: %w", err)
		}
		until = &t
	}
	_, st, err := openStore(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	sup, created, err := st.PutSuppression(ctx, store.Suppression{TenantID: *tenant, Email: email, Reason: *reason, ExpiresAt: until})
	if err != nil {
		return fmt.Errorf("suppressions add (does tenant %q have a key?): %w", *tenant, err)
	}
	verb := "updated"
	if created {
		verb = "added"
	}
	fmt.Fprintf(env.stderr, "%s %s for tenant %s (%s)\n", verb, sup.Email, sup.TenantID, sup.Reason)
	return nil
}

func suppressionsRemove(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "suppressions remove", "suppressions remove --tenant T EMAIL\n\nTakes EMAIL off the tenant's list: the next message to it is sent.")
	tenant := fs.String("tenant", "", "tenant whose list to change (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	email, err := suppressionArgs("suppressions remove", *tenant, fs.Args())
	if err != nil {
		return err
	}
	_, st, err := openStore(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := st.DeleteSuppression(ctx, *tenant, email); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("suppressions remove: %s is not on tenant %s's list", email, *tenant)
		}
		return err
	}
	fmt.Fprintf(env.stderr, "removed %s for tenant %s\n", email, *tenant)
	return nil
}

// suppressionArgs checks --tenant and the one EMAIL argument and returns
// the address as the list keys it.
func suppressionArgs(cmd, tenant string, args []string) (string, error) {
	if tenant == "" || len(args) != 1 {
		return "", fmt.Errorf("%s: give --tenant and one address (flags before the address)", cmd)
	}
	a, err := mail.ParseAddress(args[0])
	if err == nil && a.Name != "" {
		err = errors.New("give the bare address, without a display name")
	}
	if err != nil {
		return "", fmt.Errorf("%s: %q: %w", cmd, args[0], err)
	}
	return store.NormalizeEmail(a.Addr), nil
}

// parseExpiry reads an RFC 3339 time or a duration from now; either must
// lie in the future.
func parseExpiry(s string, now time.Time) (time.Time, error) {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		d, derr := time.ParseDuration(s)
		if derr != nil {
			return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time nor a duration", s)
		}
		t = now.Add(d)
	}
	if !t.After(now) {
		return time.Time{}, fmt.Errorf("%q is not in the future", s)
	}
	return t, nil
}
