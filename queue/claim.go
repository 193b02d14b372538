package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// waitSlice bounds each blocking XREADGROUP inside Claim. go-redis does not
// interrupt a blocking read when its context is cancelled, so Claim blocks
// in slices and checks ctx between them; with several shards the slices
// also rotate the wait over all of them.
const waitSlice = 200 * time.Millisecond

// noBlock makes go-redis omit BLOCK; a zero Block would mean "wait forever".
const noBlock = -1

var errNoConsumer = errors.New("no consumer name (Options.Consumer)")

// Claim returns up to limit jobs for this worker. It first takes back jobs
// whose holder has been silent for the visibility timeout, then reads new
// ones from every shard, starting at a different shard each call. If that
// finds nothing it waits up to block for a job to arrive. An empty result
// with a nil error means the wait ended. If a shard fails after others
// yielded jobs, Claim returns those jobs and no error: it must not drop a
// job it already holds, and the fault shows again on the next call.
func (q *Queue) Claim(ctx context.Context, limit int, block time.Duration) ([]Claimed, error) {
	if q.opts.Consumer == "" {
		return nil, fmt.Errorf("claim: %w", errNoConsumer)
	}
	if limit <= 0 {
		return nil, fmt.Errorf("claim: limit %d: must be positive", limit)
	}
	n := len(q.shards)
	start := int(q.claimTurn.Add(1) % uint32(n))
	var out []Claimed
	for pass := range 2 {
		for i := 0; i < n && len(out) < limit; i++ {
			sh := &q.shards[(start+i)%n]
			var got []Claimed
			var err error
			if pass == 0 {
				// Stale leases first: those jobs have waited longest.
				got, err = q.reclaim(ctx, sh, limit-len(out))
			} else {
				got, err = q.read(ctx, sh, limit-len(out), noBlock)
			}
			if err != nil {
				if len(out) > 0 {
					q.claims.Add(int64(len(out)))
					return out, nil
				}
				return nil, fmt.Errorf("claim: %w", err)
			}
			out = append(out, got...)
		}
	}
	if len(out) > 0 || block <= 0 {
		q.claims.Add(int64(len(out)))
		return out, nil
	}
	deadline := time.Now().Add(block)
	for i := start; ; i++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("claim: %w", err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, nil
		}
		// BLOCK counts whole milliseconds, and BLOCK 0 would wait forever.
		wait := max(min(left, waitSlice), time.Millisecond)
		if d, ok := ctx.Deadline(); ok {
			wait = max(min(wait, time.Until(d)), time.Millisecond)
		}
		got, err := q.read(ctx, &q.shards[i%n], limit, wait)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("claim: %w", ctx.Err())
			}
			return nil, fmt.Errorf("claim: %w", err)
		}
		if len(got) > 0 {
			q.claims.Add(int64(len(got)))
			return got, nil
		}
	}
}

// read takes up to count never-delivered entries from one shard, waiting
// up to wait (noBlock: not at all).
func (q *Queue) read(ctx context.Context, sh *shard, count int, wait time.Duration) ([]Claimed, error) {
	args := &redis.XReadGroupArgs{
		Group:    q.opts.Group,
		Consumer: q.opts.Consumer,
		Streams:  []string{sh.stream, ">"},
		Count:    int64(count),
		Block:    wait,
	}
	var res []redis.XStream
	err := q.withGroup(ctx, sh, func() (err error) {
		res, err = q.rdb.XReadGroup(ctx, args).Result()
		return err
	})
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", sh.stream, err)
	}
	var msgs []redis.XMessage
	for _, s := range res {
		msgs = append(msgs, s.Messages...)
	}
	return q.claimed(ctx, sh, msgs), nil
}

// reclaim takes up to count entries whose holder has been idle for the
// visibility timeout, resuming the scan where the last call stopped.
func (q *Queue) reclaim(ctx context.Context, sh *shard, count int) ([]Claimed, error) {
	sh.mu.Lock()
	if time.Now().Before(sh.nextScan) {
		sh.mu.Unlock()
		return nil, nil
	}
	cursor := sh.cursor
	sh.mu.Unlock()

	args := &redis.XAutoClaimArgs{
		Stream:   sh.stream,
		Group:    q.opts.Group,
		Consumer: q.opts.Consumer,
		MinIdle:  q.opts.VisibilityTimeout,
		Start:    cursor,
		Count:    int64(count),
	}
	var msgs []redis.XMessage
	var next string
	err := q.withGroup(ctx, sh, func() (err error) {
		msgs, next, err = q.rdb.XAutoClaim(ctx, args).Result()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reclaim from %s: %w", sh.stream, err)
	}
	sh.mu.Lock()
	sh.cursor = next
	if next == "0-0" {
		// A full pass is done; what it skipped is younger than the timeout.
		sh.nextScan = time.Now().Add(q.opts.VisibilityTimeout / 10)
	}
	sh.mu.Unlock()
	return q.claimed(ctx, sh, msgs), nil
}

// withGroup runs op once the shard's consumer group exists. If Redis says
// the group is gone (a flush, a failover to an empty replica) it recreates
// the group and runs op once more: lost Redis data must not wedge workers.
func (q *Queue) withGroup(ctx context.Context, sh *shard, op func() error) error {
	if err := q.ensureGroup(ctx, sh); err != nil {
		return err
	}
	err := op()
	// Redis 7 ends a blocked read with UNBLOCKED when its stream is deleted.
	if !isNoGroup(err) && (err == nil || !strings.HasPrefix(err.Error(), "UNBLOCKED")) {
		return err
	}
	sh.groupReady.Store(false)
	if err := q.ensureGroup(ctx, sh); err != nil {
		return err
	}
	return op()
}

func (q *Queue) ensureGroup(ctx context.Context, sh *shard) error {
	if sh.groupReady.Load() {
		return nil
	}
	// Start at 0, not $: jobs enqueued before the group existed (right
	// after a flush) must still be delivered.
	err := q.rdb.XGroupCreateMkStream(ctx, sh.stream, q.opts.Group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("create group %s on %s: %w", q.opts.Group, sh.stream, err)
	}
	sh.groupReady.Store(true)
	return nil
}

// claimed decodes stream entries. Entries that cannot be decoded (written
// by something else, or deleted under Redis 6.2's XAUTOCLAIM) can never be
// delivered, so they are removed rather than reclaimed forever.
func (q *Queue) claimed(ctx context.Context, sh *shard, msgs []redis.XMessage) []Claimed {
	out := make([]Claimed, 0, len(msgs))
	var junk []string
	for _, m := range msgs {
		s, _ := m.Values[field].(string)
		j, err := decode(s)
		if err != nil {
			junk = append(junk, m.ID)
			continue
		}
		out = append(out, Claimed{ID: m.ID, Job: j})
	}
	if len(junk) > 0 {
		// A failure here leaves the junk pending; the next reclaim retries.
		_ = q.tx(ctx, []int{sh.index}, func(p redis.Pipeliner, sh *shard) {
			p.XAck(ctx, sh.stream, q.opts.Group, junk...)
			p.XDel(ctx, sh.stream, junk...)
		})
	}
	return out
}

// Ack marks jobs done and deletes their stream entries, so the stream does
// not grow. Acking an entry that no longer exists is not an error.
func (q *Queue) Ack(ctx context.Context, cs ...Claimed) error {
	ids, used, err := q.idsByShard(cs)
	if err != nil {
		return fmt.Errorf("ack: %w", err)
	}
	err = q.tx(ctx, used, func(p redis.Pipeliner, sh *shard) {
		// One MULTI: an acked entry left in the stream would count as ready forever.
		p.XAck(ctx, sh.stream, q.opts.Group, ids[sh.index]...)
		p.XDel(ctx, sh.stream, ids[sh.index]...)
	})
	if err != nil {
		return fmt.Errorf("ack %d jobs: %w", len(cs), err)
	}
	q.acks.Add(int64(len(cs)))
	return nil
}

// Retry ends this attempt and schedules the job again for at, in one
// MULTI. A zero or past at makes it ready at once, as in Enqueue. The job
// is scheduled even if its entry is gone: the worker still holds it.
//
// The scheduled member is the same for every copy of a job (Attempt is
// written as 0), so copies retried for a time merge into one member, the
// last time given winning: copies of a job (a requeue, a reclaim) cannot
// multiply. The ledger, not the job, counts attempts.
func (q *Queue) Retry(ctx context.Context, c Claimed, at time.Time) error {
	if c.ID == "" {
		return errors.New("retry: claimed job has no entry id")
	}
	next := c.Job
	next.Attempt = 0
	if err := next.validate(); err != nil {
		return fmt.Errorf("retry %s: %w", c.ID, err)
	}
	member := encode(next)
	ready := !at.After(time.Now())
	err := q.tx(ctx, []int{q.shardOf(next)}, func(p redis.Pipeliner, sh *shard) {
		if ready {
			p.XAdd(ctx, &redis.XAddArgs{Stream: sh.stream, Values: []string{field, member}})
		} else {
			p.ZAdd(ctx, sh.scheduled, redis.Z{Score: float64(at.UnixMilli()), Member: member})
		}
		p.XAck(ctx, sh.stream, q.opts.Group, c.ID)
		p.XDel(ctx, sh.stream, c.ID)
	})
	if err != nil {
		return fmt.Errorf("retry %s: %w", c.ID, err)
	}
	q.retries.Add(1)
	if ready {
		q.retriesNow.Add(1)
	}
	return nil
}

// extendScript renews leases this consumer still holds and returns the ids
// it does not. Checking the owner first matters: a bare XCLAIM would take a
// job back from the worker that reclaimed it.
// KEYS: stream. ARGV: group, consumer, ids...
const extendScript = `
local lost = {}
for i = 3, #ARGV do
  local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p.err == nil and p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
`

// Hold renews the claims like Extend and returns the entry ids of those
// this worker no longer holds, without treating them as an error: a worker
// keeping many jobs waiting for their destination drops just those.
func (q *Queue) Hold(ctx context.Context, cs ...Claimed) ([]string, error) {
	if q.opts.Consumer == "" {
		return nil, fmt.Errorf("hold: %w", errNoConsumer)
	}
	ids, used, err := q.idsByShard(cs)
	if err != nil {
		return nil, fmt.Errorf("hold: %w", err)
	}
	var lost []string
	for _, s := range used {
		sh := &q.shards[s]
		// Each script call stays short: Redis runs nothing else meanwhile.
		for part := range slices.Chunk(ids[s], 500) {
			args := make([]any, 0, 2+len(part))
			args = append(args, q.opts.Group, q.opts.Consumer)
			for _, id := range part {
				args = append(args, id)
			}
			l, err := q.extend.Run(ctx, q.rdb, []string{sh.stream}, args...).StringSlice()
			if err != nil {
				return lost, fmt.Errorf("hold %d jobs: %w", len(cs), err)
			}
			lost = append(lost, l...)
		}
	}
	return lost, nil
}

// Extend is the heartbeat of a long delivery: it resets the idle time of
// jobs this worker holds so no other worker reclaims them. Jobs it no
// longer holds are reported with ErrLost; the others are still extended.
func (q *Queue) Extend(ctx context.Context, cs ...Claimed) error {
	if q.opts.Consumer == "" {
		return fmt.Errorf("extend: %w", errNoConsumer)
	}
	ids, used, err := q.idsByShard(cs)
	if err != nil {
		return fmt.Errorf("extend: %w", err)
	}
	var lost []string
	for _, s := range used {
		sh := &q.shards[s]
		args := make([]any, 0, 2+len(ids[s]))
		args = append(args, q.opts.Group, q.opts.Consumer)
		for _, id := range ids[s] {
			args = append(args, id)
		}
		l, err := q.extend.Run(ctx, q.rdb, []string{sh.stream}, args...).StringSlice()
		if err != nil {
			return fmt.Errorf("extend %d jobs: %w", len(cs), err)
		}
		lost = append(lost, l...)
	}
	if len(lost) > 0 {
		return fmt.Errorf("extend %s: %w", strings.Join(lost, ", "), ErrLost)
	}
	return nil
}

// idsByShard groups entry ids by shard and lists the shards used.
func (q *Queue) idsByShard(cs []Claimed) ([][]string, []int, error) {
	ids := make([][]string, len(q.shards))
	var used []int
	for _, c := range cs {
		if c.ID == "" {
			return nil, nil, fmt.Errorf("job %s to %s has no entry id", c.Job.MessageID, c.Job.Domain)
		}
		s := q.shardOf(c.Job)
		if ids[s] == nil {
			used = append(used, s)
		}
		ids[s] = append(ids[s], c.ID)
	}
	return ids, used, nil
}
