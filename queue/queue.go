package queue

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Job is one unit of delivery work: one message to one recipient domain.
type Job struct {
	MessageID string `json:"m"`
	Domain    string `json:"d"`
	// Attempt is kept in the encoding for jobs written by older versions;
	// new jobs carry 0. Nothing decides by it: the ledger counts attempts,
	// and a constant lets copies of a job merge in the scheduled set.
	Attempt int `json:"a"`
}

// Item is a job to enqueue; a zero or past NotBefore means ready now.
type Item struct {
	Job       Job
	NotBefore time.Time
}

// Claimed is a job a worker holds until Ack, Retry or the visibility
// timeout. Its shard follows from Job.MessageID, so callers need only pass
// it back unchanged.
type Claimed struct {
	ID  string // stream entry id, opaque to callers
	Job Job
}

// Depth counts jobs by state, summed over shards.
type Depth struct {
	Ready     int64 // in a stream, not yet claimed
	Scheduled int64 // waiting in a sorted set for their time
	Inflight  int64 // claimed, not yet acked or retried
}

// ErrLost means a claimed job is no longer held by this worker: another
// worker reclaimed it after the visibility timeout, or Redis lost it.
var ErrLost = errors.New("job no longer held by this worker")

// Options configures a Queue.
type Options struct {
	Prefix            string        // key prefix, default "mailferry"
	Shards            int           // independent streams, each its own hash tag; default 1
	Group             string        // consumer group, default "workers"
	Consumer          string        // this worker's name; required for Claim and Extend
	VisibilityTimeout time.Duration // default 5m: an unacked, unextended claim is reclaimed after it
}

const (
	defaultPrefix     = "mailferry"
	defaultGroup      = "workers"
	defaultVisibility = 5 * time.Minute
	// Claim may visit every shard, one round trip each.
	maxShards = 256
	// field is the stream entry's only field; one short name keeps entries small.
	field = "j"
)

// validate fills in defaults and reports every bad field at once.
func (o Options) validate() (Options, error) {
	var errs []error
	switch {
	case o.Prefix == "":
		o.Prefix = defaultPrefix
	case strings.ContainsAny(o.Prefix, "{}"):
		// A brace would change the hash tag and split a shard across slots.
		errs = append(errs, fmt.Errorf("prefix %q: must not contain { or }", o.Prefix))
	}
	switch {
	case o.Shards == 0:
		o.Shards = 1
	case o.Shards < 0 || o.Shards > maxShards:
		errs = append(errs, fmt.Errorf("shards %d: must be between 1 and %d", o.Shards, maxShards))
	}
	if o.Group == "" {
		o.Group = defaultGroup
	}
	switch {
	case o.VisibilityTimeout == 0:
		o.VisibilityTimeout = defaultVisibility
	case o.VisibilityTimeout < time.Millisecond:
		// Redis counts idle time in milliseconds.
		errs = append(errs, fmt.Errorf("visibility timeout %v: must be at least 1ms", o.VisibilityTimeout))
	}
	return o, errors.Join(errs...)
}

// Queue is the Redis work queue. It is safe for concurrent use.
type Queue struct {
	rdb  redis.UniversalClient
	opts Options
	// oneNode: every shard lives on one server, so one MULTI may span shards.
	oneNode bool
	shards  []shard
	// Rotating start shards keep Claim and PromoteDue fair; the random
	// offset keeps separate processes from all starting at shard 0.
	claimTurn   atomic.Uint32
	promoteTurn atomic.Uint32
	promote     *redis.Script
	extend      *redis.Script
	prune       *redis.Script
	// counts are this Queue's own operations (Counts).
	claims, acks, retries, retriesNow atomic.Int64
}

// Counts are the operations one Queue value made since New: tests and
// operators read them to see jobs going round through Redis.
type Counts struct {
	Claimed int64 // jobs handed out by Claim
	Acked   int64 // jobs ended by Ack
	Retried int64 // jobs put back by Retry, for a time or at once
	// RetriedNow: put back ready at once (a shutdown giving back jobs it
	// held, a ledger outage). A scheduler that wrote jobs back because
	// their destination was busy would show here.
	RetriedNow int64
}

// Counts returns the operation counts.
func (q *Queue) Counts() Counts {
	return Counts{Claimed: q.claims.Load(), Acked: q.acks.Load(), Retried: q.retries.Load(), RetriedNow: q.retriesNow.Load()}
}

type shard struct {
	index     int
	stream    string
	scheduled string
	// groupReady skips XGROUP CREATE once done; a NOGROUP reply resets it.
	groupReady atomic.Bool

	mu sync.Mutex
	// cursor resumes XAUTOCLAIM where the last scan stopped, so each Claim
	// scans a bounded slice of the pending list however long it is.
	cursor string
	// nextScan delays the next scan after a full pass found nothing more:
	// no entry can go stale faster than the visibility timeout.
	nextScan time.Time
}

// New returns a Queue over rdb. It does no I/O; the consumer group is
// created on first Claim.
func New(rdb redis.UniversalClient, opts Options) (*Queue, error) {
	if rdb == nil {
		return nil, errors.New("nil redis client")
	}
	opts, err := opts.validate()
	if err != nil {
		return nil, err
	}
	_, oneNode := rdb.(*redis.Client)
	q := &Queue{
		rdb:     rdb,
		opts:    opts,
		oneNode: oneNode,
		shards:  make([]shard, opts.Shards),
		promote: redis.NewScript(promoteScript),
		extend:  redis.NewScript(extendScript),
		prune:   redis.NewScript(pruneScript),
	}
	for i := range q.shards {
		base := opts.Prefix + ":{q" + strconv.Itoa(i) + "}:"
		q.shards[i].index = i
		q.shards[i].stream = base + "ready"
		q.shards[i].scheduled = base + "scheduled"
		q.shards[i].cursor = "0-0"
	}
	off := rand.Uint32()
	q.claimTurn.Store(off)
	q.promoteTurn.Store(off)
	return q, nil
}

// Ping checks that Redis answers.
func (q *Queue) Ping(ctx context.Context) error {
	if err := q.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("ping redis: %w", err)
	}
	return nil
}

// Enqueue adds items in one round trip: ready ones to the stream, future
// ones to the scheduled set. Each shard's part is one MULTI, so it is added
// whole or not at all.
func (q *Queue) Enqueue(ctx context.Context, items ...Item) error {
	if len(items) == 0 {
		return nil
	}
	type batch struct {
		ready []string
		later []redis.Z
	}
	batches := make([]batch, len(q.shards))
	now := time.Now()
	for i, it := range items {
		if err := it.Job.validate(); err != nil {
			return fmt.Errorf("enqueue item %d: %w", i, err)
		}
		b := &batches[q.shardOf(it.Job)]
		member := encode(it.Job)
		if it.NotBefore.After(now) {
			b.later = append(b.later, redis.Z{Score: float64(it.NotBefore.UnixMilli()), Member: member})
		} else {
			b.ready = append(b.ready, member)
		}
	}
	var used []int
	for i, b := range batches {
		if len(b.ready)+len(b.later) > 0 {
			used = append(used, i)
		}
	}
	err := q.tx(ctx, used, func(p redis.Pipeliner, sh *shard) {
		b := batches[sh.index]
		for _, m := range b.ready {
			p.XAdd(ctx, &redis.XAddArgs{Stream: sh.stream, Values: []string{field, m}})
		}
		if len(b.later) > 0 {
			p.ZAdd(ctx, sh.scheduled, b.later...)
		}
	})
	if err != nil {
		return fmt.Errorf("enqueue %d jobs: %w", len(items), err)
	}
	return nil
}

// tx runs fn for each listed shard inside MULTI/EXEC, in one round trip
// when all shards live on one server. On a cluster each shard (one slot)
// gets its own transaction, sent concurrently. NOGROUP replies are not
// errors: they only say the entry to acknowledge is already gone.
func (q *Queue) tx(ctx context.Context, shards []int, fn func(redis.Pipeliner, *shard)) error {
	if len(shards) == 0 {
		return nil
	}
	if len(shards) == 1 || q.oneNode {
		cmds, err := q.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			for _, s := range shards {
				fn(p, &q.shards[s])
			}
			return nil
		})
		return cmdsErr(cmds, err)
	}
	errs := make([]error, len(shards))
	var wg sync.WaitGroup
	for i, s := range shards {
		wg.Go(func() {
			cmds, err := q.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
				fn(p, &q.shards[s])
				return nil
			})
			errs[i] = cmdsErr(cmds, err)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// cmdsErr is the first error among cmds other than NOGROUP, or err when no
// command carries one.
func cmdsErr(cmds []redis.Cmder, err error) error {
	if err == nil {
		return nil
	}
	tolerated := false
	for _, c := range cmds {
		switch e := c.Err(); {
		case e == nil:
		case isNoGroup(e):
			tolerated = true
		default:
			return e
		}
	}
	if tolerated {
		return nil
	}
	return err
}

func (q *Queue) shardOf(j Job) int {
	if len(q.shards) == 1 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(j.MessageID))
	return int(h.Sum32() % uint32(len(q.shards)))
}

func (j Job) validate() error {
	switch {
	case j.MessageID == "":
		return errors.New("empty message id")
	case j.Domain == "":
		return errors.New("empty domain")
	case strings.ContainsRune(j.Domain, ' '):
		// The space separates fields in the encoded job.
		return fmt.Errorf("domain %q: contains a space", j.Domain)
	case j.Attempt < 0:
		return fmt.Errorf("attempt %d: must not be negative", j.Attempt)
	}
	return nil
}

// encode writes a job as "attempt domain message-id": about 20 bytes per
// job less than JSON, which counts with a million jobs queued. The message
// id goes last so it may hold any byte.
func encode(j Job) string {
	return strconv.Itoa(j.Attempt) + " " + j.Domain + " " + j.MessageID
}

func decode(s string) (Job, error) {
	attempt, rest, ok1 := strings.Cut(s, " ")
	domain, id, ok2 := strings.Cut(rest, " ")
	n, err := strconv.Atoi(attempt)
	if !ok1 || !ok2 || err != nil {
		return Job{}, fmt.Errorf("malformed job %q", s)
	}
	j := Job{MessageID: id, Domain: domain, Attempt: n}
	if err := j.validate(); err != nil {
		return Job{}, fmt.Errorf("malformed job %q: %w", s, err)
	}
	return j, nil
}

func isNoGroup(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOGROUP")
}
