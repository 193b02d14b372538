package shaping

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// State is a shaping unit's automation state, shared by the fleet.
type State struct {
	// Factor scales the message rate: 1 untouched, 0.5 halved. It holds
	// for Period after Since, then doubles each Period until it is 1.
	Factor float64
	Since  time.Time
	Period time.Duration
	// SuspendedUntil: no transaction before this time.
	SuspendedUntil time.Time
	Reason         string // the reply that last triggered a rule
}

// FactorAt is the rate factor at t: halved for a period, then restored
// step by step, doubling each period.
func (s State) FactorAt(t time.Time) float64 {
	if s.Factor <= 0 || s.Factor >= 1 || s.Period <= 0 {
		return 1
	}
	if t.Before(s.Since.Add(s.Period)) {
		return s.Factor
	}
	steps := math.Floor(float64(t.Sub(s.Since)) / float64(s.Period))
	return math.Min(1, s.Factor*math.Exp2(steps))
}

// Suspended reports whether the unit is suspended at t.
func (s State) Suspended(t time.Time) bool { return t.Before(s.SuspendedUntil) }

// minFactor bounds halving: a destination keeps at least 1/64 of its rate.
const minFactor = 1.0 / 64

// stateFresh is how long a process trusts its copy of a unit's state
// before reading Redis again; another process's throttle is seen that
// late at most.
const stateFresh = 500 * time.Millisecond

// Options configures New.
type Options struct {
	Config *Config
	Redis  redis.UniversalClient
	Prefix string           // "" means "mailferry"
	Now    func() time.Time // the automation's clock; nil: time.Now
	Logger *slog.Logger
	// Registerer takes the metrics; nil: none.
	Registerer prometheus.Registerer
}

// Shaper applies a Config across the fleet: the rates are GCRA buckets in
// Redis (redis_rate), and a rule's throttle or suspension is a hash in
// Redis that every worker reads. Each unit (an entry, or a destination no
// entry matches) has its keys under one hash tag, {shape:<unit>}.
type Shaper struct {
	cfg    *Config
	rdb    redis.UniversalClient
	rl     *redis_rate.Limiter
	prefix string
	now    func() time.Time
	log    *slog.Logger
	m      *metrics

	mu     sync.Mutex
	states map[string]cachedState // unit → state
}

type cachedState struct {
	st   State
	read time.Time // wall clock of the read, for stateFresh
}

// New returns a Shaper.
func New(opts Options) (*Shaper, error) {
	if opts.Config == nil || opts.Redis == nil {
		return nil, errors.New("shaping: Config and Redis are required")
	}
	if opts.Prefix == "" {
		opts.Prefix = "mailferry"
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Shaper{cfg: opts.Config, rdb: opts.Redis, rl: redis_rate.NewLimiter(opts.Redis), prefix: opts.Prefix,
		now: opts.Now, log: opts.Logger, states: map[string]cachedState{}}
	s.m = newMetrics(opts.Registerer, s)
	return s, nil
}

// Config is the configuration s applies.
func (s *Shaper) Config() *Config { return s.cfg }

// unit is the shaping unit of dest: its entry's name, or the destination
// itself when no entry matches; label is the metric label (the entry's
// name or "other", so the label set is bounded by the configuration).
func (s *Shaper) unit(dest string) (unit, label string, lim Limits) {
	name, lim := s.cfg.LimitsFor(dest)
	if name == "" {
		return "d:" + dest, "other", lim
	}
	return "e:" + name, name, lim
}

func (s *Shaper) stateKey(unit string) string { return s.prefix + ":{shape:" + unit + "}:state" }
func (s *Shaper) rateKey(unit string) string  { return s.prefix + ":{shape:" + unit + "}:rate" }

// MaxConnections is dest's connection cap from the configuration; 0: the
// scheduler's own.
func (s *Shaper) MaxConnections(dest string) int {
	_, _, lim := s.unit(dest)
	return lim.MaxConnections
}

// MaxMessagesPerConnection is the cap for connections to an MX host; 0:
// the client's default.
func (s *Shaper) MaxMessagesPerConnection(host string) int {
	if e := s.cfg.MatchHost(host); e != nil && e.MaxMessagesPerConnection > 0 {
		return e.MaxMessagesPerConnection
	}
	return s.cfg.Default.MaxMessagesPerConnection
}

// Paced reports whether dest's transactions must each be admitted (a rate
// is set, or it is suspended, as read from Redis at most stateFresh ago):
// the scheduler then never hands a released connection slot straight to
// the next job. Reading the state here also makes a worker whose
// handoffs never reach Admit see another worker's suspension.
func (s *Shaper) Paced(ctx context.Context, dest string) bool {
	unit, _, lim := s.unit(dest)
	if !lim.MaxMessageRate.IsZero() {
		return true
	}
	st, err := s.state(ctx, unit)
	return err == nil && st.Suspended(s.now())
}

// State reads dest's unit's state, from this process's copy when fresh.
func (s *Shaper) State(ctx context.Context, dest string) (State, error) {
	unit, _, _ := s.unit(dest)
	return s.state(ctx, unit)
}

func (s *Shaper) state(ctx context.Context, unit string) (State, error) {
	s.mu.Lock()
	c, ok := s.states[unit]
	s.mu.Unlock()
	if ok && time.Since(c.read) < stateFresh {
		return c.st, nil
	}
	h, err := s.rdb.HGetAll(ctx, s.stateKey(unit)).Result()
	if err != nil {
		return State{Factor: 1}, fmt.Errorf("shaping state %s: %w", unit, err)
	}
	st := parseState(h)
	s.remember(unit, st)
	return st, nil
}

func (s *Shaper) remember(unit string, st State) {
	s.mu.Lock()
	s.states[unit] = cachedState{st: st, read: time.Now()}
	s.mu.Unlock()
}

func parseState(h map[string]string) State {
	st := State{Factor: 1, Reason: h["reason"]}
	if f, err := strconv.ParseFloat(h["factor"], 64); err == nil && f > 0 && f <= 1 {
		st.Factor = f
	}
	ms := func(k string) int64 { v, _ := strconv.ParseInt(h[k], 10, 64); return v }
	if v := ms("since"); v > 0 {
		st.Since = time.UnixMilli(v)
	}
	st.Period = time.Duration(ms("period")) * time.Millisecond
	if v := ms("suspended_until"); v > 0 {
		st.SuspendedUntil = time.UnixMilli(v)
	}
	return st
}

// Admit asks for n transactions to dest now. It returns how many may
// start and, when fewer than n, how long until more may. A suspended
// destination admits none until its suspension ends; one without a rate
// admits all. An error means Redis did not answer: the caller goes on
// unshaped rather than stopping mail.
func (s *Shaper) Admit(ctx context.Context, dest string, n int) (int, time.Duration, error) {
	if n <= 0 {
		return 0, 0, nil
	}
	unit, _, lim := s.unit(dest)
	st, err := s.state(ctx, unit)
	if err != nil {
		return n, 0, err
	}
	now := s.now()
	if st.Suspended(now) {
		return 0, st.SuspendedUntil.Sub(now), nil
	}
	if lim.MaxMessageRate.IsZero() {
		return n, 0, nil
	}
	res, err := s.rl.AllowAtMost(ctx, s.rateKey(unit), gcra(lim.MaxMessageRate, st.FactorAt(now)), n)
	if err != nil {
		return n, 0, fmt.Errorf("shaping rate %s: %w", unit, err)
	}
	wait := time.Duration(0)
	if res.Allowed < n {
		wait = max(res.RetryAfter, time.Millisecond)
	}
	return res.Allowed, wait, nil
}

// gcra is rate r scaled by factor as redis_rate wants it: whole messages
// per period, kept to three significant decimals by counting per 1000
// periods; the burst is a second's worth, at least one.
func gcra(r Rate, factor float64) redis_rate.Limit {
	perSec := r.PerSecond() * factor
	n := max(1, int(math.Round(float64(r.N)*factor*1000)))
	return redis_rate.Limit{Rate: n, Period: 1000 * r.Per, Burst: max(1, int(perSec))}
}

// Rate is dest's message rate now, in messages a second (0: none set).
func (s *Shaper) Rate(ctx context.Context, dest string) (float64, error) {
	unit, _, lim := s.unit(dest)
	st, err := s.state(ctx, unit)
	return lim.MaxMessageRate.PerSecond() * st.FactorAt(s.now()), err
}

// Reply is one SMTP reply as rules see it.
type Reply struct {
	Code     int
	Enhanced string
	Text     string
}

func (r Reply) String() string {
	if r.Enhanced == "" {
		return strconv.Itoa(r.Code) + " " + r.Text
	}
	return strconv.Itoa(r.Code) + " " + r.Enhanced + " " + r.Text
}

// throttleScript halves a unit's factor unless it is already within a
// throttled period, which it then restarts: a burst of 421s halves once.
// KEYS: state. ARGV: now ms, period ms, min factor, ttl ms, reason.
const throttleScript = `
local h = redis.call('HMGET', KEYS[1], 'factor', 'since', 'period')
local f = tonumber(h[1]) or 1
local since = tonumber(h[2]) or 0
local p = tonumber(h[3]) or tonumber(ARGV[2])
local now = tonumber(ARGV[1])
if since > 0 and now < since + p and f < 1 then
  redis.call('HSET', KEYS[1], 'since', now, 'reason', ARGV[5])
else
  local eff = f
  if since > 0 and p > 0 then eff = math.min(1, f * 2 ^ math.floor((now - since) / p)) end
  f = math.max(eff / 2, tonumber(ARGV[3]))
  redis.call('HSET', KEYS[1], 'factor', tostring(f), 'since', now, 'period', ARGV[2], 'reason', ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('HGETALL', KEYS[1])
`

// suspendScript suspends a unit until ARGV[1] (never shortening a
// suspension already longer). KEYS: state. ARGV: until ms, ttl ms, reason.
const suspendScript = `
local cur = tonumber(redis.call('HGET', KEYS[1], 'suspended_until') or '0')
if tonumber(ARGV[1]) > cur then
  redis.call('HSET', KEYS[1], 'suspended_until', ARGV[1], 'reason', ARGV[3])
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('HGETALL', KEYS[1])
`

var (
	throttle = redis.NewScript(throttleScript)
	suspend  = redis.NewScript(suspendScript)
)

// Observe runs dest's replies through the rules: the first reply that a
// rule matches applies that rule (throttle or suspend) to dest's unit for
// the fleet. It returns the rule applied, or nil.
func (s *Shaper) Observe(ctx context.Context, dest string, replies []Reply) (*Rule, error) {
	unit, label, _ := s.unit(dest)
	entry := ""
	if label != "other" {
		entry = label
	}
	var rule *Rule
	var reply Reply
	for _, r := range replies {
		if r.Code == 0 {
			continue
		}
		if rule = s.cfg.RuleFor(entry, r.String()); rule != nil {
			reply = r
			break
		}
	}
	if rule == nil {
		return nil, nil
	}
	now := s.now()
	reason := rule.Name + ": " + truncate(reply.String(), 200)
	var pairs []string
	var err error
	switch rule.Action {
	case Throttle:
		// Kept long enough to restore fully: 7 doublings from 1/64.
		ttl := 8*rule.Duration + time.Minute
		pairs, err = throttle.Run(ctx, s.rdb, []string{s.stateKey(unit)}, now.UnixMilli(), rule.Duration.Milliseconds(),
			minFactor, ttl.Milliseconds(), reason).StringSlice()
	case Suspend:
		pairs, err = suspend.Run(ctx, s.rdb, []string{s.stateKey(unit)}, now.Add(rule.Duration).UnixMilli(),
			(rule.Duration + time.Minute).Milliseconds(), reason).StringSlice()
	}
	if err != nil {
		return rule, fmt.Errorf("shaping %s %s: %w", rule.Action, unit, err)
	}
	h := make(map[string]string, len(pairs)/2)
	for i := 0; i+1 < len(pairs); i += 2 {
		h[pairs[i]] = pairs[i+1]
	}
	st := parseState(h)
	s.remember(unit, st)
	s.m.throttled(label)
	s.log.LogAttrs(ctx, slog.LevelWarn, "destination shaped by rule", slog.String("destination", dest),
		slog.String("rule", rule.Name), slog.String("action", string(rule.Action)), slog.Float64("rate_factor", st.FactorAt(now)),
		slog.Time("suspended_until", st.SuspendedUntil), slog.String("reply", truncate(reply.String(), 200)))
	return rule, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// EntryState is one entry's limits and live state, for `mailferry shaping
// show`.
type EntryState struct {
	Name   string
	Limits Limits
	State  State
	Rate   float64 // messages a second now (0: no rate set)
}

// Inspect reads the live state of dest's unit from Redis (not from this
// process's copy).
func (s *Shaper) Inspect(ctx context.Context, dest string) (EntryState, error) {
	unit, label, lim := s.unit(dest)
	h, err := s.rdb.HGetAll(ctx, s.stateKey(unit)).Result()
	if err != nil {
		return EntryState{}, fmt.Errorf("shaping state %s: %w", unit, err)
	}
	st := parseState(h)
	return EntryState{Name: label, Limits: lim, State: st, Rate: lim.MaxMessageRate.PerSecond() * st.FactorAt(s.now())}, nil
}

// InspectEntry is Inspect for an entry by name.
func (s *Shaper) InspectEntry(ctx context.Context, e Entry) (EntryState, error) {
	unit := "e:" + e.Name
	h, err := s.rdb.HGetAll(ctx, s.stateKey(unit)).Result()
	if err != nil {
		return EntryState{}, fmt.Errorf("shaping state %s: %w", unit, err)
	}
	st := parseState(h)
	lim := s.cfg.Default.over(e.Limits)
	return EntryState{Name: e.Name, Limits: lim, State: st, Rate: lim.MaxMessageRate.PerSecond() * st.FactorAt(s.now())}, nil
}
