package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/queue"
)

// runParked shows and undoes parking: a job (message × recipient domain)
// that panicked repeatedly is taken out of delivery with a reason, and
// stays there until an operator releases it.
func runParked(ctx context.Context, env *environment, args []string) error {
	return dispatch(ctx, env, "parked", "parked list | parked release MESSAGE_ID DOMAIN", args, []command{
		{"list", "list parked jobs and why they were parked", parkedList},
		{"release", "return a parked job to delivery now", parkedRelease},
	})
}

func parkedList(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "parked list", "parked list\n\nLists parked jobs: message id, recipient domain, failures, when and why parked.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	_, st, err := openStore(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	jobs, err := st.ParkedJobs(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MESSAGE_ID\tDOMAIN\tFAILURES\tPARKED_AT\tREASON")
	for _, j := range jobs {
		// One line per job: a reason never spans lines.
		reason := strings.Join(strings.Fields(j.Reason), " ")
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", j.MessageID, j.Domain, j.Failures, j.ParkedAt.UTC().Format(time.RFC3339), reason)
	}
	return tw.Flush()
}

func parkedRelease(ctx context.Context, env *environment, args []string) error {
	fs := flagSet(env, "parked release", "parked release MESSAGE_ID DOMAIN\n\nForgets the job's failures and queues it for delivery now.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return errors.New("parked release: give the message id and the recipient domain")
	}
	id, err := uuid.Parse(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("parked release: message id %q: %w", fs.Arg(0), err)
	}
	domain := strings.ToLower(fs.Arg(1))
	cfg, st, err := openStore(ctx, env)
	if err != nil {
		return err
	}
	defer st.Close()
	q, closeQueue, err := openQueue(cfg)
	if err != nil {
		return err
	}
	defer closeQueue()
	ok, err := st.UnparkJob(ctx, id, domain)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("parked release: no parked job %s to %s", id, domain)
	}
	if err := q.Enqueue(ctx, queue.Item{Job: queue.Job{MessageID: id.String(), Domain: domain}}); err != nil {
		// Unparked but not queued: the reconciler's sweep requeues it.
		return fmt.Errorf("parked release: unparked, but queueing failed (the scheduler requeues it within MAILFERRY_RECONCILE_INTERVAL): %w", err)
	}
	fmt.Fprintf(env.stderr, "released job %s to %s\n", id, domain)
	return nil
}
