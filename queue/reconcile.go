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

// rebuildKey holds the token of the rebuild in progress in a shard.
func (q *Queue) rebuildKey(sh *shard) string {
	return q.opts.Prefix + ":{q" + strconv.Itoa(sh.index) + "}:rebuild"
}

// Rebuild is a rebuild of the queue from the ledger, begun by
// StartRebuild and ended by MarkIntact.
type Rebuild struct{ token string }

// ErrRebuildInterrupted: a shard lost its rebuild token while the queue
// was being rebuilt (Redis lost data again, or another process began a
// rebuild of its own). The queue is not marked whole; rebuild again.
var ErrRebuildInterrupted = errors.New("queue rebuild interrupted: redis lost data or another rebuild began; not marked whole")

// StartRebuild leaves a fresh token in every shard before the jobs are
// requeued. MarkIntact sets the marker only where the token survived, so
// a data loss while the jobs were being requeued is not hidden by a
// marker set after it.
func (q *Queue) StartRebuild(ctx context.Context) (Rebuild, error) {
	token := strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + q.opts.Consumer
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range q.shards {
			p.Set(ctx, q.rebuildKey(&q.shards[i]), token, 0)
		}
		return nil
	})
	if err != nil {
		return Rebuild{}, fmt.Errorf("start queue rebuild: %w", err)
	}
	return Rebuild{token: token}, nil
}

// markIntact sets a shard's marker if its rebuild token is still rb's
// (both keys in the shard's hash tag: one slot on Redis Cluster). Sent
// with EVAL: a pipeline does not fall back from EVALSHA on NOSCRIPT.
var markIntact = redis.NewScript(`
if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
redis.call("SET", KEYS[2], ARGV[2])
redis.call("DEL", KEYS[1])
return 1
`)

// MarkIntact sets every shard's marker. Call it once the queue holds every
// pending job (requeued from the ledger after StartRebuild), never before.
// It returns ErrRebuildInterrupted, having marked only the shards that
// kept rb's token, when a shard lost it since StartRebuild.
func (q *Queue) MarkIntact(ctx context.Context, rb Rebuild) error {
	if rb.token == "" {
		return errors.New("mark queue whole: no rebuild was started")
	}
	now := time.Now().UTC().Format(time.RFC3339)
	cmds := make([]*redis.Cmd, len(q.shards))
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range q.shards {
			sh := &q.shards[i]
			cmds[i] = markIntact.Eval(ctx, p, []string{q.rebuildKey(sh), q.intactKey(sh)}, rb.token, now)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("set queue marker: %w", err)
	}
	for _, c := range cmds {
		if n, _ := c.Int(); n != 1 {
			return ErrRebuildInterrupted
		}
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
