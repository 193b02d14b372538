package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// intactKey is the marker MarkIntact leaves in a shard.
func (q *Queue) intactKey(sh *shard) string {
	return q.opts.Prefix + ":{q" + strconv.Itoa(sh.index) + "}:intact"
}

// Intact reports whether every shard still holds the marker MarkIntact
// left. False means Redis lost data since (a restart without persistence,
// FLUSHALL, a failover to an empty replica, an eviction) or the queue was
// never marked: jobs may be missing and should be rebuilt from the ledger.
// The marker sits in each shard's own hash tag, so on Redis Cluster a node
// that lost its slots shows even if the others did not.
func (q *Queue) Intact(ctx context.Context) (bool, error) {
	cmds := make([]*redis.IntCmd, len(q.shards))
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range q.shards {
			cmds[i] = p.Exists(ctx, q.intactKey(&q.shards[i]))
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("check queue marker: %w", err)
	}
	for _, c := range cmds {
		if c.Val() == 0 {
			return false, nil
		}
	}
	return true, nil
}

// MarkIntact sets every shard's marker. Call it once the queue holds every
// pending job (after a requeue from the ledger), never before.
func (q *Queue) MarkIntact(ctx context.Context) error {
	now := time.Now().UTC().Format(time.RFC3339)
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range q.shards {
			p.Set(ctx, q.intactKey(&q.shards[i]), now, 0)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("set queue marker: %w", err)
	}
	return nil
}

// scanPage is how many jobs one round trip of Jobs reads.
const scanPage = 1000

// ErrStop, returned by the function given to Jobs, ends the walk early;
// Jobs then returns nil.
var ErrStop = errors.New("stop")

// Jobs calls fn for every job the queue holds, in no particular order:
// scheduled, ready and in flight, shard by shard, a page per round trip.
// It takes no snapshot. Each shard's scheduled set is read before its
// stream, so a job promoted meanwhile is still seen (in the stream); a job
// that Retry moves from the stream to the scheduled set while the walk
// runs may be missed. A job may be seen twice.
func (q *Queue) Jobs(ctx context.Context, fn func(Job) error) error {
	for i := range q.shards {
		if err := q.shardJobs(ctx, &q.shards[i], fn); err != nil {
			if errors.Is(err, ErrStop) {
				return nil
			}
			return err
		}
	}
	return nil
}

func (q *Queue) shardJobs(ctx context.Context, sh *shard, fn func(Job) error) error {
	var cursor uint64
	for {
		members, next, err := q.rdb.ZScan(ctx, sh.scheduled, cursor, "", scanPage).Result()
		if err != nil {
			return fmt.Errorf("scan %s: %w", sh.scheduled, err)
		}
		// ZSCAN returns member, score, member, score, …
		for i := 0; i < len(members); i += 2 {
			if j, err := decode(members[i]); err == nil {
				if err := fn(j); err != nil {
					return err
				}
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	start := "-"
	for {
		msgs, err := q.rdb.XRangeN(ctx, sh.stream, start, "+", scanPage).Result()
		if err != nil {
			return fmt.Errorf("scan %s: %w", sh.stream, err)
		}
		for _, m := range msgs {
			s, _ := m.Values[field].(string)
			if j, err := decode(s); err == nil {
				if err := fn(j); err != nil {
					return err
				}
			}
		}
		if len(msgs) < scanPage {
			return nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}
