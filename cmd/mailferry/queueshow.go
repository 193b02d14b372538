package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"
)

// runQueue shows the Redis work queue to an operator.
func runQueue(ctx context.Context, env *environment, args []string) error {
	return dispatch(ctx, env, "queue", "queue show", args, []command{
		{"show", "list destinations with jobs queued, in flight, their concurrency limit and last error", queueShow},
	})
}

// queueShow prints the queue's depth, then one line per destination (next
// hop) used in the last ten minutes, busiest first. QUEUED counts the jobs
// workers hold waiting for the destination; jobs not yet claimed have no
// destination yet and show in the READY total.
func queueShow(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "queue show", "queue show\n\nLists the queue's depth and, per destination (next hop: mx:<host> or smarthost),\n"+
		"the jobs waiting for it, transactions in flight fleet-wide, the concurrency limit it has\nearned (and its cap), and its last error.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := env.config()
	if err != nil {
		return err
	}
	q, closeQueue, err := openQueue(cfg)
	if err != nil {
		return err
	}
	defer closeQueue()
	now := time.Now()
	depth, err := q.Depth(ctx)
	if err != nil {
		return err
	}
	dests, err := q.Destinations(ctx, now)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "ready %d  scheduled %d  claimed %d\n\n", depth.Ready, depth.Scheduled, depth.Inflight)
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DESTINATION\tQUEUED\tIN_FLIGHT\tLIMIT\tLAST_ERROR")
	for _, d := range dests {
		last := "-"
		if d.LastErr != "" {
			last = d.ErrAt.UTC().Format(time.RFC3339) + " " + strings.Join(strings.Fields(d.LastErr), " ")
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d/%d\t%s\n", d.Name, d.Queued, d.Inflight, d.Limit, d.Max, last)
	}
	return tw.Flush()
}
