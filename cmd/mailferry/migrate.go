package main

import (
	"context"
	"fmt"
)

func runMigrate(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "migrate", "migrate\n\nApplies the embedded database migrations to MAILFERRY_DATABASE_URL.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	_, st, err := openStore(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	applied, err := st.Migrate(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if len(applied) == 0 {
		fmt.Fprintln(env.stderr, "database is up to date")
	}
	for _, name := range applied {
		fmt.Fprintln(env.stderr, "applied", name)
	}
	return nil
}
