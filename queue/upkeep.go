package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// promoteScript moves due jobs from the scheduled set to the stream in one
// step, so a job is never in both or in neither.
// KEYS: scheduled, stream. ARGV: now (unix ms), limit, field.
const promoteScript = `
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, job in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', ARGV[3], job)
end
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
end
return #due
`

// promoteBatch caps one script run: Lua's unpack has a stack limit, and a
// long script stalls every other Redis client.
const promoteBatch = 1000

// PromoteDue moves up to limit jobs due at or before now from the scheduled
// sets to the streams and returns how many moved. Shards take turns being
// first, so a backlog in one does not starve the others.
func (q *Queue) PromoteDue(ctx context.Context, now time.Time, limit int) (int, error) {
	if limit <= 0 {
		return 0, fmt.Errorf("promote due jobs: limit %d: must be positive", limit)
	}
	n := len(q.shards)
	start := int(q.promoteTurn.Add(1) % uint32(n))
	moved := 0
	for i := 0; i < n && moved < limit; i++ {
		sh := &q.shards[(start+i)%n]
		for moved < limit {
			batch := min(limit-moved, promoteBatch)
			got, err := q.promote.Run(ctx, q.rdb, []string{sh.scheduled, sh.stream},
				now.UnixMilli(), batch, field).Int()
			if err != nil {
				return moved, fmt.Errorf("promote due jobs in %s: %w", sh.scheduled, err)
			}
			moved += got
			if got < batch {
				break
			}
		}
	}
	return moved, nil
}

// Depth counts jobs by state over all shards in one round trip. Ready is
// the stream length less the pending entries: acked entries are deleted,
// so everything else in the stream is waiting for a first claim.
func (q *Queue) Depth(ctx context.Context) (Depth, error) {
	type counts struct {
		length  *redis.IntCmd
		pending *redis.XPendingCmd
		later   *redis.IntCmd
	}
	cs := make([]counts, len(q.shards))
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range q.shards {
			sh := &q.shards[i]
			cs[i] = counts{
				length:  p.XLen(ctx, sh.stream),
				pending: p.XPending(ctx, sh.stream, q.opts.Group),
				later:   p.ZCard(ctx, sh.scheduled),
			}
		}
		return nil
	})
	var d Depth
	if err != nil && !isNoGroup(err) {
		return d, fmt.Errorf("queue depth: %w", err)
	}
	for _, c := range cs {
		var pending int64
		switch err := c.pending.Err(); {
		case err == nil:
			pending = c.pending.Val().Count
		case isNoGroup(err):
			// No group yet (or any more): nothing is claimed.
		default:
			return Depth{}, fmt.Errorf("queue depth: %w", err)
		}
		if err := c.length.Err(); err != nil {
			return Depth{}, fmt.Errorf("queue depth: %w", err)
		}
		if err := c.later.Err(); err != nil {
			return Depth{}, fmt.Errorf("queue depth: %w", err)
		}
		d.Ready += max(c.length.Val()-pending, 0)
		d.Inflight += pending
		d.Scheduled += c.later.Val()
	}
	return d, nil
}

// pruneScript deletes consumers idle for ARGV[2] ms that hold no jobs, in
// one step: a consumer deleted while holding jobs would strand them.
// KEYS: stream. ARGV: group, min idle (ms).
const pruneScript = `
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local removed = 0
for _, c in ipairs(consumers) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['pending'] == 0 and f['idle'] >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed = removed + 1
  end
end
return removed
`

// PruneConsumers removes consumers that hold no jobs and have been idle
// for at least idle, and returns how many it removed. Each worker process
// joins the group under its own name, so without pruning the group keeps a
// record of every process that ever ran. A pruned worker that claims again
// simply rejoins.
func (q *Queue) PruneConsumers(ctx context.Context, idle time.Duration) (int, error) {
	if idle < time.Millisecond {
		return 0, fmt.Errorf("prune consumers: idle %v: must be at least 1ms", idle)
	}
	removed := 0
	for i := range q.shards {
		sh := &q.shards[i]
		n, err := q.prune.Run(ctx, q.rdb, []string{sh.stream}, q.opts.Group, idle.Milliseconds()).Int()
		if err != nil {
			return removed, fmt.Errorf("prune consumers of %s: %w", sh.stream, err)
		}
		removed += n
	}
	return removed, nil
}
