// Package scheduler runs Mailferry's periodic chores: it moves scheduled
// jobs whose time has come (send_at, retries) into the ready queue, keeps
// the attempts table's time partitions ahead of the clock and drops those
// past retention, and purges expired idempotency keys and events past
// retention. Several instances may run at once: every chore
// is safe to repeat.
package scheduler

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// Queue promotes due jobs and forgets departed workers.
type Queue interface {
	PromoteDue(ctx context.Context, now time.Time, limit int) (int, error)
	PruneConsumers(ctx context.Context, idle time.Duration) (int, error)
}

// Ledger is the store's housekeeping.
type Ledger interface {
	PurgeIdempotency(ctx context.Context, olderThan time.Time) (int64, error)
	EnsureAttemptPartitions(ctx context.Context, now time.Time, monthsAhead int) error
	DropAttemptPartitionsBefore(ctx context.Context, before time.Time) ([]string, error)
	PurgeEvents(ctx context.Context, olderThan time.Time) (int64, error)
}

// Options configures a Scheduler.
type Options struct {
	Queue  Queue
	Ledger Ledger
	Logger *slog.Logger
	// PromoteEvery is how often due jobs are looked for; default 250ms.
	PromoteEvery time.Duration
	// ChoresEvery is how often the slow chores run; default 1h.
	ChoresEvery time.Duration
	// AttemptRetention is how long attempt history is kept
	// (MAILFERRY_ATTEMPT_RETENTION); default 2160h (90 days). Whole months
	// older than it are dropped, so up to a month more stays.
	AttemptRetention time.Duration
	// EventRetention is how long events and their webhook deliveries are
	// kept (MAILFERRY_EVENT_RETENTION); default 720h (30 days).
	EventRetention time.Duration
	Now            func() time.Time
	// Domains re-checks sending domains' DNS records, moves DKIM
	// rotations on and retires old keys (domains.Service); nil: not run.
	Domains DomainSweeper
	// DomainsEvery is how often Domains sweeps; default 1m. Each domain
	// is looked up at its own interval; one whose rotation waits for DNS
	// at every sweep.
	DomainsEvery time.Duration
}

// DomainSweeper re-checks the sending domains that are due.
type DomainSweeper interface {
	Sweep(ctx context.Context) (int, error)
}

// DefaultEventRetention is MAILFERRY_EVENT_RETENTION's default.
const DefaultEventRetention = 30 * 24 * time.Hour

// DefaultAttemptRetention is MAILFERRY_ATTEMPT_RETENTION's default.
const DefaultAttemptRetention = 90 * 24 * time.Hour

// Scheduler runs the chores until its context ends.
type Scheduler struct{ opts Options }

// New checks opts.
func New(opts Options) (*Scheduler, error) {
	if opts.Queue == nil || opts.Ledger == nil {
		return nil, errors.New("scheduler: Queue and Ledger are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.PromoteEvery <= 0 {
		opts.PromoteEvery = 250 * time.Millisecond
	}
	if opts.ChoresEvery <= 0 {
		opts.ChoresEvery = time.Hour
	}
	if opts.AttemptRetention <= 0 {
		opts.AttemptRetention = DefaultAttemptRetention
	}
	if opts.EventRetention <= 0 {
		opts.EventRetention = DefaultEventRetention
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.DomainsEvery <= 0 {
		opts.DomainsEvery = time.Minute
	}
	return &Scheduler{opts: opts}, nil
}

// Run loops until ctx is done, then returns nil.
func (s *Scheduler) Run(ctx context.Context) error {
	if s.opts.Domains != nil {
		// DNS lookups of many domains take their time: in a loop of
		// their own, they never hold up due jobs.
		done := make(chan struct{})
		defer func() { <-done }()
		go func() { defer close(done); s.sweepDomains(ctx) }()
	}
	promote := time.NewTicker(s.opts.PromoteEvery)
	defer promote.Stop()
	chores := time.NewTicker(s.opts.ChoresEvery)
	defer chores.Stop()
	s.chores(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-promote.C:
			s.promote(ctx)
		case <-chores.C:
			s.chores(ctx)
		}
	}
}

func (s *Scheduler) promote(ctx context.Context) {
	for ctx.Err() == nil {
		n, err := s.opts.Queue.PromoteDue(ctx, s.opts.Now(), 1000)
		if err != nil {
			if ctx.Err() == nil {
				s.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "promote due jobs", slog.Any("error", err))
			}
			return
		}
		if n < 1000 {
			return
		}
	}
}

func (s *Scheduler) chores(ctx context.Context) {
	now := s.opts.Now()
	if err := s.opts.Ledger.EnsureAttemptPartitions(ctx, now, 2); err != nil && ctx.Err() == nil {
		s.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "create attempt partitions", slog.Any("error", err))
	}
	if dropped, err := s.opts.Ledger.DropAttemptPartitionsBefore(ctx, now.Add(-s.opts.AttemptRetention)); err != nil && ctx.Err() == nil {
		s.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "drop old attempt partitions", slog.Any("error", err))
	} else if len(dropped) > 0 {
		s.opts.Logger.LogAttrs(ctx, slog.LevelInfo, "dropped attempt partitions past retention",
			slog.Any("partitions", dropped), slog.Duration("retention", s.opts.AttemptRetention))
	}
	// Each serve process joins the consumer group under a new name; names
	// of processes gone for a day (holding no jobs) are removed.
	if _, err := s.opts.Queue.PruneConsumers(ctx, 24*time.Hour); err != nil && ctx.Err() == nil {
		s.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "prune queue consumers", slog.Any("error", err))
	}
	// An Idempotency-Key repeated within 24 h returns the first answer
	// (README.md, Send a message); older keys are forgotten.
	n, err := s.opts.Ledger.PurgeIdempotency(ctx, now.Add(-24*time.Hour))
	if err != nil && ctx.Err() == nil {
		s.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "purge idempotency keys", slog.Any("error", err))
	} else if n > 0 {
		s.opts.Logger.LogAttrs(ctx, slog.LevelInfo, "purged idempotency keys", slog.Int64("count", n))
	}
	// The events feed and webhook history are kept MAILFERRY_EVENT_RETENTION.
	n, err = s.opts.Ledger.PurgeEvents(ctx, now.Add(-s.opts.EventRetention))
	if err != nil && ctx.Err() == nil {
		s.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "purge events", slog.Any("error", err))
	} else if n > 0 {
		s.opts.Logger.LogAttrs(ctx, slog.LevelInfo, "purged events past retention", slog.Int64("count", n),
			slog.Duration("retention", s.opts.EventRetention))
	}
}

func (s *Scheduler) sweepDomains(ctx context.Context) {
	t := time.NewTicker(s.opts.DomainsEvery)
	defer t.Stop()
	for {
		n, err := s.opts.Domains.Sweep(ctx)
		if err != nil && ctx.Err() == nil {
			s.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "check sending domains", slog.Any("error", err))
		} else if n > 0 {
			s.opts.Logger.LogAttrs(ctx, slog.LevelDebug, "checked sending domains", slog.Int("count", n))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
