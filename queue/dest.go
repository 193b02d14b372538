package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Destination leases: how many SMTP transactions the whole fleet has in
// flight to one destination (next hop), and the limit it has earned.
//
// Keys, per destination D (hash tag {d:D}, so each script touches one slot):
//
//	<Prefix>:{d:D}:leases  sorted set: lease id → expiry (unix ms). A lease
//	                       not renewed by its expiry is dropped by the next
//	                       acquire: a killed worker's leases come back within
//	                       the lease TTL.
//	<Prefix>:{d:D}:state   hash: limit (the concurrency earned, shared by the
//	                       fleet), max, err and err_at (the last unhealthy
//	                       transaction), and q:<consumer> = "<n> <expiry ms>",
//	                       the jobs each worker holds waiting for a lease.
//	<Prefix>:dests         sorted set: destination → last use (unix ms), the
//	                       index `mailferry queue show` reads. It is not in
//	                       the destination's slot and is written apart, as a
//	                       hint.
//
// The state expires after destIdle without use, so a destination not seen
// for a while starts again at a few connections.

// destIdle is how long a destination's earned limit outlives its last use.
const destIdle = 10 * time.Minute

// Verdict is what a released lease says about its transaction.
type Verdict int

const (
	// Unjudged: no transaction ran (the job ended before dialling).
	Unjudged Verdict = iota
	// Healthy: a host answered quickly, without 421; the limit grows by one.
	Healthy
	// Unhealthy: slow, no host reached, or 421; the limit halves.
	Unhealthy
)

// DestLimit is how a destination's concurrency starts and how far it grows.
type DestLimit struct {
	Start, Max int
}

// shareLua is the fair share left to one worker: the limit split evenly
// among the workers with jobs waiting (their q: fields, unexpired) and the
// asking one, less the leases it holds (ids start with "<consumer>/").
// Without it a worker that hands each released lease to its own next job
// would keep the destination for as long as its backlog lasts, and the
// jobs another worker holds for it would wait all that time.
const shareLua = `
local function share(leases, state, consumer, limit, now)
  local active, listed = 0, false
  local f = redis.call('HGETALL', state)
  for i = 1, #f, 2 do
    if string.sub(f[i], 1, 2) == 'q:' then
      local n, exp = string.match(f[i + 1], '^(%d+) (%d+)$')
      if n and tonumber(n) > 0 and tonumber(exp) > now then
        active = active + 1
        if string.sub(f[i], 3) == consumer then listed = true end
      end
    end
  end
  if not listed then active = active + 1 end
  local own, pre = 0, consumer .. '/'
  for _, m in ipairs(redis.call('ZRANGE', leases, 0, -1)) do
    if string.sub(m, 1, #pre) == pre then own = own + 1 end
  end
  return math.ceil(limit / active) - own
end
`

// acquireScript drops expired leases, then grants up to ARGV[3] new ones
// while the destination is under its limit and the worker under its fair
// share. It returns the limit, then the granted ids.
// KEYS: leases, state. ARGV: now ms, expiry ms, want, start, max, id prefix, idle ms, 2×ttl ms, consumer.
const acquireScript = shareLua + `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local max = tonumber(ARGV[5])
local limit = tonumber(redis.call('HGET', KEYS[2], 'limit') or ARGV[4])
if limit > max then limit = max end
if limit < 1 then limit = 1 end
redis.call('HSET', KEYS[2], 'limit', limit, 'max', max)
redis.call('PEXPIRE', KEYS[2], ARGV[7])
local out = {limit}
local n = math.min(limit - redis.call('ZCARD', KEYS[1]), tonumber(ARGV[3]),
  share(KEYS[1], KEYS[2], ARGV[9], limit, tonumber(ARGV[1])))
for i = 1, n do
  local id = ARGV[6] .. i
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  out[#out + 1] = id
end
if n > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[8]) end
return out
`

// releaseScript ends a lease, applies the transaction's verdict to the
// shared limit and, when ARGV[6] names a new id and the limit and the
// worker's fair share allow, grants it at once: a worker with jobs waiting
// keeps the connection slot without a second round trip. Returns the
// limit, the leases still free to this worker after it, and the new id if
// granted. With ARGV[12] '1' a refused handoff keeps the old lease (its
// verdict applied) for the caller to release after it has closed the
// connection it kept for the handoff (Leases.HandOff).
// KEYS: leases, state. ARGV: id, verdict, start, max, now ms, new id, expiry ms, error, idle ms, 2×ttl ms, consumer, keep.
const releaseScript = shareLua + `
redis.call('ZREM', KEYS[1], ARGV[1])
local max = tonumber(ARGV[4])
local limit = tonumber(redis.call('HGET', KEYS[2], 'limit') or ARGV[3])
if ARGV[2] == '1' then
  limit = math.min(limit + 1, max)
elseif ARGV[2] == '2' then
  limit = math.max(math.floor(limit / 2), 1)
  redis.call('HSET', KEYS[2], 'err', ARGV[8], 'err_at', ARGV[5])
end
if limit > max then limit = max end
redis.call('HSET', KEYS[2], 'limit', limit, 'max', max)
redis.call('PEXPIRE', KEYS[2], ARGV[9])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[5])
local free = math.min(limit - redis.call('ZCARD', KEYS[1]), share(KEYS[1], KEYS[2], ARGV[11], limit, tonumber(ARGV[5])))
if ARGV[6] ~= '' and free > 0 then
  redis.call('ZADD', KEYS[1], ARGV[7], ARGV[6])
  redis.call('PEXPIRE', KEYS[1], ARGV[10])
  return {limit, free - 1, ARGV[6]}
end
if ARGV[6] ~= '' and ARGV[12] == '1' then
  redis.call('ZADD', KEYS[1], ARGV[7], ARGV[1])
  return {limit, 0}
end
return {limit, math.max(free, 0)}
`

// renewScript pushes back the expiry of leases still held and returns the
// ids no longer held (expired and dropped, or lost with Redis's data). It
// also records how many jobs this worker holds waiting (ARGV[4]).
// KEYS: leases, state. ARGV: expiry ms, ttl ms, queued field, queued value ("" deletes), idle ms, ids...
const renewScript = `
local lost = {}
for i = 6, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
if #ARGV >= 6 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[2], ARGV[3])
elseif redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
return lost
`

// Leases are the destination leases of one worker process. Safe for
// concurrent use.
type Leases struct {
	q       *Queue
	ttl     time.Duration
	acquire *redis.Script
	release *redis.Script
	renew   *redis.Script
	seq     atomic.Uint64
}

// Leases returns the destination leases of this worker (Options.Consumer),
// each lasting ttl unrenewed.
func (q *Queue) Leases(ttl time.Duration) (*Leases, error) {
	if q.opts.Consumer == "" {
		return nil, fmt.Errorf("destination leases: %w", errNoConsumer)
	}
	if ttl < 10*time.Millisecond {
		return nil, fmt.Errorf("destination leases: ttl %v: must be at least 10ms", ttl)
	}
	l := &Leases{q: q, ttl: ttl, acquire: redis.NewScript(acquireScript), release: redis.NewScript(releaseScript),
		renew: redis.NewScript(renewScript)}
	return l, nil
}

// TTL is how long a lease lasts unrenewed.
func (l *Leases) TTL() time.Duration { return l.ttl }

func (l *Leases) keys(dest string) []string {
	base := l.q.opts.Prefix + ":{d:" + dest + "}:"
	return []string{base + "leases", base + "state"}
}

func (l *Leases) indexKey() string { return l.q.opts.Prefix + ":dests" }

// idPrefix is unique per call: the consumer, a sequence number, a dot; the
// script appends 1, 2, … .
func (l *Leases) idPrefix() string {
	n := l.seq.Add(1)
	return l.q.opts.Consumer + "/" + strconv.FormatUint(n, 36) + "."
}

func checkDest(dest string) error {
	if dest == "" || strings.ContainsAny(dest, "{} ") {
		return fmt.Errorf("destination %q: empty, or holds a brace or space", dest)
	}
	return nil
}

// Acquire grants up to want leases on dest, as many as its shared limit
// leaves free, and returns them with the limit.
func (l *Leases) Acquire(ctx context.Context, dest string, want int, lim DestLimit, now time.Time) ([]string, int, error) {
	if err := checkDest(dest); err != nil {
		return nil, 0, err
	}
	if want <= 0 {
		return nil, 0, nil
	}
	res, err := l.acquire.Run(ctx, l.q.rdb, l.keys(dest), now.UnixMilli(), now.Add(l.ttl).UnixMilli(), want,
		lim.Start, lim.Max, l.idPrefix(), destIdle.Milliseconds(), (2 * l.ttl).Milliseconds(), l.q.opts.Consumer).Slice()
	if err != nil {
		return nil, 0, fmt.Errorf("acquire lease on %s: %w", dest, err)
	}
	limit, ids := parseLeaseReply(res)
	if len(ids) > 0 {
		// The index is a hint for queue show; its failure costs nothing.
		l.q.rdb.ZAdd(ctx, l.indexKey(), redis.Z{Score: float64(now.UnixMilli()), Member: dest})
	}
	return ids, limit, nil
}

// Release ends lease id with the verdict on its transaction (errText says
// what went wrong when Unhealthy). With handoff it grants a new lease in
// the same step if the limit allows, and returns its id ("" if not). free
// is how many more the limit allows now: a grown limit leaves room for
// waiting jobs beyond the handed-off one.
func (l *Leases) Release(ctx context.Context, dest, id string, v Verdict, errText string, lim DestLimit, handoff bool, now time.Time) (next string, limit, free int, err error) {
	return l.end(ctx, dest, id, v, errText, lim, handoff, false, now)
}

// HandOff is Release with handoff, except that when the limit or the
// worker's fair share refuses the new lease (next is ""), lease id is kept,
// its verdict applied: the caller releases it (Release, Unjudged) once it
// has closed the idle connection it kept for the next job, so the fleet's
// connections never outnumber its leases (relay/slots.go).
func (l *Leases) HandOff(ctx context.Context, dest, id string, v Verdict, errText string, lim DestLimit, now time.Time) (next string, limit, free int, err error) {
	return l.end(ctx, dest, id, v, errText, lim, true, true, now)
}

func (l *Leases) end(ctx context.Context, dest, id string, v Verdict, errText string, lim DestLimit, handoff, keep bool, now time.Time) (next string, limit, free int, err error) {
	if err := checkDest(dest); err != nil {
		return "", 0, 0, err
	}
	want, keepArg := "", "0"
	if handoff {
		want = l.idPrefix() + "1"
	}
	if keep {
		keepArg = "1"
	}
	res, err := l.release.Run(ctx, l.q.rdb, l.keys(dest), id, int(v), lim.Start, lim.Max, now.UnixMilli(), want,
		now.Add(l.ttl).UnixMilli(), errText, destIdle.Milliseconds(), (2 * l.ttl).Milliseconds(), l.q.opts.Consumer, keepArg).Slice()
	if err != nil {
		return "", 0, 0, fmt.Errorf("release lease on %s: %w", dest, err)
	}
	limit, rest := parseLeaseReply(res)
	if len(res) > 1 {
		n, _ := res[1].(int64)
		free = int(n)
	}
	if len(rest) > 0 {
		next = rest[0]
	}
	return next, limit, free, nil
}

// Renew extends the leases ids on dest and returns those no longer held.
// queued, the jobs this worker holds waiting for dest, is published for
// `mailferry queue show` (0 removes it).
func (l *Leases) Renew(ctx context.Context, dest string, ids []string, queued int, now time.Time) ([]string, error) {
	if err := checkDest(dest); err != nil {
		return nil, err
	}
	val := ""
	if queued > 0 {
		val = strconv.Itoa(queued) + " " + strconv.FormatInt(now.Add(2*l.ttl).UnixMilli(), 10)
	}
	args := make([]any, 0, 5+len(ids))
	args = append(args, now.Add(l.ttl).UnixMilli(), (2 * l.ttl).Milliseconds(), "q:"+l.q.opts.Consumer, val, destIdle.Milliseconds())
	for _, id := range ids {
		args = append(args, id)
	}
	lost, err := l.renew.Run(ctx, l.q.rdb, l.keys(dest), args...).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("renew leases on %s: %w", dest, err)
	}
	if len(ids) > 0 || queued > 0 {
		l.q.rdb.ZAdd(ctx, l.indexKey(), redis.Z{Score: float64(now.UnixMilli()), Member: dest})
	}
	return lost, nil
}

func parseLeaseReply(res []any) (int, []string) {
	if len(res) == 0 {
		return 0, nil
	}
	limit, _ := res[0].(int64)
	ids := make([]string, 0, len(res)-1)
	for _, v := range res[1:] {
		if s, ok := v.(string); ok {
			ids = append(ids, s)
		}
	}
	return int(limit), ids
}

// DestStatus is one destination as the fleet sees it.
type DestStatus struct {
	Name     string
	Queued   int // jobs workers hold waiting for a lease
	Inflight int // leases held (transactions in flight)
	Limit    int // the concurrency earned
	Max      int
	LastErr  string
	ErrAt    time.Time
	LastUsed time.Time
}

// Destinations lists the destinations used in the last destIdle, busiest
// first. Queued counts only jobs workers have claimed and routed; jobs not
// yet claimed are in Depth.Ready, unrouted.
func (q *Queue) Destinations(ctx context.Context, now time.Time) ([]DestStatus, error) {
	idx := q.opts.Prefix + ":dests"
	if err := q.rdb.ZRemRangeByScore(ctx, idx, "-inf", strconv.FormatInt(now.Add(-destIdle).UnixMilli(), 10)).Err(); err != nil {
		return nil, fmt.Errorf("destinations: %w", err)
	}
	names, err := q.rdb.ZRangeWithScores(ctx, idx, 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("destinations: %w", err)
	}
	l := &Leases{q: q}
	out := make([]DestStatus, 0, len(names))
	for _, z := range names {
		name, _ := z.Member.(string)
		k := l.keys(name)
		var count *redis.IntCmd
		var state *redis.MapStringStringCmd
		_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			count = p.ZCount(ctx, k[0], strconv.FormatInt(now.UnixMilli(), 10), "+inf")
			state = p.HGetAll(ctx, k[1])
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("destination %s: %w", name, err)
		}
		d := DestStatus{Name: name, Inflight: int(count.Val()), LastUsed: time.UnixMilli(int64(z.Score))}
		for f, v := range state.Val() {
			switch {
			case f == "limit":
				d.Limit, _ = strconv.Atoi(v)
			case f == "max":
				d.Max, _ = strconv.Atoi(v)
			case f == "err":
				d.LastErr = v
			case f == "err_at":
				ms, _ := strconv.ParseInt(v, 10, 64)
				d.ErrAt = time.UnixMilli(ms)
			case strings.HasPrefix(f, "q:"):
				n, exp, _ := strings.Cut(v, " ")
				ms, _ := strconv.ParseInt(exp, 10, 64)
				if c, err := strconv.Atoi(n); err == nil && ms > now.UnixMilli() {
					d.Queued += c
				}
			}
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b DestStatus) int {
		if a.Queued+a.Inflight != b.Queued+b.Inflight {
			return (b.Queued + b.Inflight) - (a.Queued + a.Inflight)
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out, nil
}
