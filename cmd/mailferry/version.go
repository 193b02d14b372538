package main

import (
	"context"
	"fmt"
	"runtime/debug"
)

func runVersion(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "version", "version")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rev, modified, goVersion := "unknown", false, "unknown"
	if info, ok := debug.ReadBuildInfo(); ok {
		goVersion = info.GoVersion
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if modified {
		rev += "+dirty"
	}
	fmt.Fprintf(env.stdout, "mailferry %s (commit %s, %s)\n", version, rev, goVersion)
	return nil
}
