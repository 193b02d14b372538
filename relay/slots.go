package relay

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/mailferry/mailferry/queue"
)

// DestLeases are the fleet-wide transaction leases per destination;
// *queue.Leases is the one in use (queue/dest.go).
type DestLeases interface {
	Acquire(ctx context.Context, dest string, want int, lim queue.DestLimit, now time.Time) ([]string, int, error)
	Release(ctx context.Context, dest, id string, v queue.Verdict, errText string, lim queue.DestLimit, handoff bool, now time.Time) (next string, limit, free int, err error)
	HandOff(ctx context.Context, dest, id string, v queue.Verdict, errText string, lim queue.DestLimit, now time.Time) (next string, limit, free int, err error)
	Renew(ctx context.Context, dest string, ids []string, queued int, now time.Time) ([]string, error)
	TTL() time.Duration
}

var _ DestLeases = (*queue.Leases)(nil)

// destGate holds the jobs of one worker process that wait for their
// destination (the next hop: see destinationOf), in memory and in arrival
// order per destination, the way Postfix's queue manager keeps its active
// queue per destination: a job refused a transaction waits here, still
// claimed in Redis, and is never written back to Redis because its
// destination is busy.
//
// The number of transactions in flight to a destination is counted by the
// whole fleet, in Redis leases with a TTL (queue.Leases): renewed while the
// transaction runs, gone within the TTL when the worker dies. The limit is
// shared and adapts in the manner of Postfix's destination concurrency
// feedback: a destination starts with startSlots, earns one more with each
// quick transaction up to its cap, and halves after a transaction that was
// slow, reached no host, or was told 421 (RFC 5321 3.8: the server is
// closing the channel). A tarpit or a dead destination so holds one
// transaction, not its cap, and the worker's transactions keep moving mail
// for everyone else: waiting jobs hold no transaction slot of the worker.
type destGate struct {
	leases    DestLeases
	shaper    Shaper      // nil: no shaping file
	trim      IdleTrimmer // nil: the client keeps no idle connections to count
	slowAfter time.Duration
	now       func() time.Time
	log       *slog.Logger

	mu         sync.Mutex
	m          map[string]*gateDest
	lastForget time.Time
}

type gateDest struct {
	lim     queue.DestLimit
	limit   int                  // as Redis last reported it
	running map[string]time.Time // lease id → start, this process's transactions
	waiters []*waiter
	pumping bool
	wake    chan struct{} // a local release or a new waiter: try now
	last    time.Time
	// reported: a queued count was published, so 0 must be published too.
	reported bool
	// hosts are the MX host names (or the smarthost) of the jobs seen for
	// the destination: the connections its leases count.
	hosts map[string]struct{}
}

type waiter struct {
	ch chan *slot // buffered: handing a slot never blocks
}

// slot is one transaction's lease on its destination.
type slot struct {
	dest  string
	id    string
	lim   queue.DestLimit
	start time.Time
	att   *Attempt // the transaction run under it; nil if none was
}

// startSlots is where a destination not seen lately begins: a few
// connections, so a fast next hop is not held to one while it proves
// itself, and a bad one costs little.
const startSlots = 2

// idleForget is how long a destination with nothing in flight stays in
// the map.
const idleForget = 10 * time.Minute

// pollMin and pollMax bound how often a refused destination asks Redis
// again: other workers' releases are seen only so; this worker's own
// releases hand their lease on at once.
const (
	pollMin = 20 * time.Millisecond
	pollMax = time.Second
)

func newDestGate(leases DestLeases, shaper Shaper, slowAfter time.Duration, now func() time.Time, log *slog.Logger) *destGate {
	return &destGate{leases: leases, shaper: shaper, slowAfter: slowAfter, now: now, log: log, m: map[string]*gateDest{}}
}

// dest returns dest's state, creating it; g.mu must be held.
func (g *destGate) dest(dest string, limit int) *gateDest {
	d := g.m[dest]
	if d == nil {
		d = &gateDest{limit: min(startSlots, limit), running: map[string]time.Time{}, wake: make(chan struct{}, 1)}
		g.m[dest] = d
	}
	d.lim = queue.DestLimit{Start: min(startSlots, limit), Max: limit}
	return d
}

// wait queues for a transaction on dest, whose cap is limit, and returns
// its slot once the fleet has one free. It returns ctx's error if ctx ends
// first. pump runs the Redis side under pumpCtx.
func (g *destGate) wait(ctx, pumpCtx context.Context, dest string, limit int) (*slot, error) {
	wt := &waiter{ch: make(chan *slot, 1)}
	g.mu.Lock()
	d := g.dest(dest, limit)
	d.waiters = append(d.waiters, wt)
	if !d.pumping {
		d.pumping = true
		go g.pump(pumpCtx, dest, d)
	} else {
		poke(d.wake)
	}
	g.mu.Unlock()
	select {
	case s := <-wt.ch:
		return s, nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	if i := slices.Index(d.waiters, wt); i >= 0 {
		d.waiters = slices.Delete(d.waiters, i, i+1)
		g.mu.Unlock()
		return nil, ctx.Err()
	}
	g.mu.Unlock()
	// Handed a slot just as ctx ended: give it back.
	g.release(<-wt.ch)
	return nil, ctx.Err()
}

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// pump asks Redis for leases while dest has waiters: as many as wait, each
// time a local release could not hand one on, or after a pause that
// doubles while the fleet has none free.
func (g *destGate) pump(ctx context.Context, dest string, d *gateDest) {
	delay := pollMin
	for {
		g.mu.Lock()
		n := len(d.waiters)
		if n == 0 || ctx.Err() != nil {
			d.pumping = false
			g.mu.Unlock()
			return
		}
		lim := d.lim
		g.mu.Unlock()
		ids, limit, err := g.leases.Acquire(ctx, dest, n, lim, g.now())
		if err != nil && ctx.Err() == nil {
			g.log.LogAttrs(ctx, slog.LevelWarn, "acquire destination lease", slog.String("destination", dest), slog.Any("error", err))
		}
		// The shaping file's rate and suspensions, after the connection
		// count: a message-rate token is spent only on a transaction that
		// has its lease, so a destination at its connection limit does not
		// burn its rate. Leases not admitted go back at once, unjudged.
		if len(ids) > 0 {
			k, pace := g.admit(ctx, dest, len(ids))
			for _, id := range ids[k:] {
				if _, _, _, rerr := g.leases.Release(ctx, dest, id, queue.Unjudged, "", lim, false, g.now()); rerr != nil && ctx.Err() == nil {
					g.log.LogAttrs(ctx, slog.LevelWarn, "release destination lease; it lapses on its own", slog.String("destination", dest), slog.Any("error", rerr))
				}
			}
			ids = ids[:k]
			if k == 0 {
				select {
				case <-ctx.Done():
				case <-time.After(min(pace, pollMax)):
				}
				continue
			}
		}
		g.mu.Lock()
		if err == nil {
			d.limit = limit
		}
		spare := g.hand(dest, d, ids)
		g.mu.Unlock()
		for _, id := range spare {
			g.release(&slot{dest: dest, id: id, lim: lim})
		}
		if len(ids) > 0 && err == nil {
			delay = pollMin
			continue
		}
		select {
		case <-ctx.Done():
		case <-d.wake:
		case <-time.After(delay):
			delay = min(2*delay, pollMax)
		}
	}
}

// hand gives leases to the first waiters and returns those nobody waits
// for any more; g.mu must be held.
func (g *destGate) hand(dest string, d *gateDest, ids []string) (spare []string) {
	now := g.now()
	for i, id := range ids {
		if len(d.waiters) == 0 {
			return ids[i:]
		}
		wt := d.waiters[0]
		d.waiters = d.waiters[1:]
		d.running[id] = now
		wt.ch <- &slot{dest: dest, id: id, lim: d.lim, start: now}
	}
	return nil
}

// admit asks the shaper how many of n transactions to dest may start, and
// how long to wait when none may. Without a shaper, or when Redis does not
// answer, all may: shaping must not stop the mail.
func (g *destGate) admit(ctx context.Context, dest string, n int) (int, time.Duration) {
	if g.shaper == nil {
		return n, 0
	}
	k, wait, err := g.shaper.Admit(ctx, dest, n)
	if err != nil {
		if ctx.Err() == nil {
			g.log.LogAttrs(ctx, slog.LevelWarn, "shaping unavailable; destination unshaped", slog.String("destination", dest), slog.Any("error", err))
		}
		return n, 0
	}
	return k, max(wait, pollMin)
}

// observe runs a transaction's replies through the automation rules.
func (g *destGate) observe(ctx context.Context, dest string, a *Attempt) {
	if _, err := g.shaper.Observe(ctx, dest, replies(a)); err != nil {
		g.log.LogAttrs(ctx, slog.LevelWarn, "shaping rule not applied", slog.String("destination", dest), slog.Any("error", err))
	}
}

// note records hosts as the destination's, for the idle connections its
// leases count.
func (g *destGate) note(dest string, limit int, hosts []Host) {
	if g.trim == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	d := g.dest(dest, limit)
	if d.hosts == nil {
		d.hosts = map[string]struct{}{}
	}
	for _, h := range hosts {
		if len(d.hosts) >= maxNotedHosts {
			break
		}
		d.hosts[h.Name] = struct{}{}
	}
}

// maxNotedHosts bounds the host names kept per destination; an MX set is
// a handful.
const maxNotedHosts = 64

// trimTo closes idle connections to d's hosts until this process has at
// most keep open to them; g.mu must not be held: it waits for QUIT.
func (g *destGate) trimTo(hosts []string, keep int) {
	if g.trim != nil && len(hosts) > 0 {
		g.trim.TrimIdle(hosts, keep)
	}
}

// hostList returns d's host names; g.mu must be held.
func (d *gateDest) hostList() []string {
	out := make([]string, 0, len(d.hosts))
	for h := range d.hosts {
		out = append(out, h)
	}
	return out
}

// judge notes the transaction run under the slot, for release.
func (s *slot) judge(a Attempt) { s.att = &a }

// release ends the slot's lease with the verdict on its transaction and,
// when jobs wait for the destination, takes a new lease for the first of
// them in the same Redis call.
//
// A lease counts a connection, not only a transaction: the MX host sees
// idle pooled connections as open sessions, and the destination's
// max_connections is about what it sees (issue 15). So the connections
// this process has open to the destination, busy or idle, stay within the
// leases it holds, and before a lease goes back the idle connections
// beyond the leases still held are closed — trim, then release, so that no
// moment has the fleet over the limit. The other way (keep the lease while
// its connection idles, give it back when the pool closes the connection)
// would hold a share of a busy destination's limit on a worker with no
// mail for it, and needs the pool to call back into Redis; trimming keeps
// the lease where the work is. Reuse stays: a worker with jobs waiting
// hands the lease straight on (handoff) and keeps the connection for the
// next transaction; when the handoff is refused (the limit shrank, or
// another worker's fair share), the lease stays in Redis until the
// connection is closed (queue.Leases.HandOff). Only a worker out of work
// for the destination closes connections, which frees the receiver's
// session as the pool's short idle timeout would (smtpclient/pool.go).
func (g *destGate) release(s *slot) {
	v, why := queue.Unjudged, ""
	if a := s.att; a != nil {
		v = queue.Healthy
		if why = g.unhealthy(a); why != "" {
			v = queue.Unhealthy
		}
	}
	// Not the job's context: a lease left behind costs a transaction slot
	// until its TTL.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if g.shaper != nil && s.att != nil {
		g.observe(ctx, s.dest, s.att)
	}
	// A paced destination's next transaction waits to be admitted by the
	// pump: handing the slot straight on would pass its rate by.
	paced := g.shaper != nil && g.shaper.Paced(ctx, s.dest)
	g.mu.Lock()
	d := g.m[s.dest]
	if d == nil {
		d = g.dest(s.dest, s.lim.Max)
	}
	delete(d.running, s.id)
	d.last = g.now()
	handoff := len(d.waiters) > 0 && !paced
	var hosts []string
	if g.trim != nil {
		hosts = d.hostList()
	}
	g.mu.Unlock()
	var (
		next        string
		limit, free int
		err         error
	)
	if handoff && g.trim != nil {
		// The lease handed on keeps this one's connection: no trim. If it
		// is refused, this lease stays until the connection is closed.
		next, limit, free, err = g.leases.HandOff(ctx, s.dest, s.id, v, why, s.lim, g.now())
		if err != nil || next == "" {
			g.mu.Lock()
			keep := len(d.running)
			g.mu.Unlock()
			g.trimTo(hosts, keep)
		}
		if err == nil && next == "" {
			_, limit, free, err = g.leases.Release(ctx, s.dest, s.id, queue.Unjudged, "", s.lim, false, g.now())
		}
	} else {
		g.mu.Lock()
		keep := len(d.running)
		g.mu.Unlock()
		g.trimTo(hosts, keep)
		next, limit, free, err = g.leases.Release(ctx, s.dest, s.id, v, why, s.lim, handoff, g.now())
	}
	if err != nil {
		g.log.LogAttrs(ctx, slog.LevelWarn, "release destination lease; it lapses on its own", slog.String("destination", s.dest), slog.Any("error", err))
	}
	g.mu.Lock()
	if err == nil {
		d.limit = limit
	}
	var spare []string
	if next != "" {
		spare = g.hand(s.dest, d, []string{next})
	}
	// The pump asks again only if the limit has room the handoff did not
	// use (it grew), or Redis failed: otherwise it would be refused.
	if len(d.waiters) > 0 && (free > 0 || err != nil || paced) {
		poke(d.wake)
	}
	g.mu.Unlock()
	for _, id := range spare {
		g.release(&slot{dest: s.dest, id: id, lim: s.lim})
	}
}

// unhealthy says why a transaction is not one to grow on, or "" if it is:
// a host answered, quickly, and did not send us away with 421.
func (g *destGate) unhealthy(a *Attempt) string {
	switch {
	case a.Host == "":
		why := "no host reached"
		if len(a.Tried) > 0 {
			why += ": " + a.Tried[len(a.Tried)-1].Err.Error()
		}
		return why
	case a.Duration >= g.slowAfter:
		return fmt.Sprintf("slow transaction at %s: %s", a.Host, a.Duration.Round(time.Millisecond))
	}
	for _, r := range a.Results {
		if r.Code == 421 {
			return fmt.Sprintf("421 %s from %s", r.Line, a.Host)
		}
	}
	return ""
}

// renew extends this process's leases, publishes how many jobs wait per
// destination, and forgets leases Redis no longer holds (expired while
// Redis was out of reach, or lost with its data): their transactions go
// on, over the limit until they end.
func (g *destGate) renew(ctx context.Context) {
	type job struct {
		dest   string
		ids    []string
		queued int
	}
	var jobs []job
	g.mu.Lock()
	for name, d := range g.m {
		if len(d.running) == 0 && len(d.waiters) == 0 && !d.reported {
			continue
		}
		ids := make([]string, 0, len(d.running))
		for id := range d.running {
			ids = append(ids, id)
		}
		d.reported = len(d.waiters) > 0
		jobs = append(jobs, job{dest: name, ids: ids, queued: len(d.waiters)})
	}
	g.mu.Unlock()
	for _, j := range jobs {
		lost, err := g.leases.Renew(ctx, j.dest, j.ids, j.queued, g.now())
		if err != nil {
			if ctx.Err() == nil {
				g.log.LogAttrs(ctx, slog.LevelWarn, "renew destination leases", slog.String("destination", j.dest), slog.Any("error", err))
			}
			continue
		}
		if len(lost) > 0 {
			g.log.LogAttrs(ctx, slog.LevelWarn, "destination leases lost; their transactions run over the limit until they end",
				slog.String("destination", j.dest), slog.Int("lost", len(lost)))
		}
	}
}

// forget drops destinations idle for a while, at most once a minute, so
// the map holds the destinations of recent traffic only.
func (g *destGate) forget(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if now.Sub(g.lastForget) < time.Minute {
		return
	}
	g.lastForget = now
	for k, d := range g.m {
		if len(d.running) == 0 && len(d.waiters) == 0 && !d.pumping && !d.reported && now.Sub(d.last) > idleForget {
			delete(g.m, k)
		}
	}
}

// destLoad is one destination's transactions in flight, jobs waiting and
// current limit, in this process.
type destLoad struct {
	dest                    string
	inflight, queued, limit int
}

// loads lists the destinations with transactions in flight or jobs
// waiting, busiest first.
func (g *destGate) loads() []destLoad {
	g.mu.Lock()
	out := make([]destLoad, 0, len(g.m))
	for k, d := range g.m {
		if len(d.running) > 0 || len(d.waiters) > 0 {
			out = append(out, destLoad{dest: k, inflight: len(d.running), queued: len(d.waiters), limit: d.limit})
		}
	}
	g.mu.Unlock()
	sortLoads(out)
	return out
}

func sortLoads(ls []destLoad) {
	slices.SortFunc(ls, func(a, b destLoad) int {
		return cmp.Or(cmp.Compare(b.inflight+b.queued, a.inflight+a.queued), cmp.Compare(a.dest, b.dest))
	})
}
