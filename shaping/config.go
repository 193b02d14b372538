// Package shaping is the traffic shaping of destinations
// (MAILFERRY_SHAPING_FILE): per destination or MX host suffix, how many
// connections the fleet may hold, how many messages one connection may
// carry and how many messages a minute (or second, hour, day) the fleet
// may send, with automation rules that slow a destination down or suspend
// it when its replies ask for that. Built-in entries for the large mailbox
// providers come first from builtin.yaml; a file adds to them or replaces
// them by name.
//
// The limits and the automation state are shared by the fleet through
// Redis (see Shaper).
package shaping

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

//go:embed builtin.yaml
var builtinYAML []byte

// Rate is a number of messages per period, written "300/min".
type Rate struct {
	N   int
	Per time.Duration
}

// IsZero reports an unset rate: no limit.
func (r Rate) IsZero() bool { return r.N == 0 }

// PerSecond is the rate in messages a second.
func (r Rate) PerSecond() float64 {
	if r.IsZero() {
		return 0
	}
	return float64(r.N) / r.Per.Seconds()
}

var rateUnits = map[string]time.Duration{
	"s": time.Second, "sec": time.Second, "second": time.Second,
	"m": time.Minute, "min": time.Minute, "minute": time.Minute,
	"h": time.Hour, "hour": time.Hour,
	"d": 24 * time.Hour, "day": 24 * time.Hour,
}

func (r Rate) String() string {
	if r.IsZero() {
		return "none"
	}
	unit := map[time.Duration]string{time.Second: "s", time.Minute: "min", time.Hour: "h", 24 * time.Hour: "day"}[r.Per]
	return strconv.Itoa(r.N) + "/" + unit
}

// ParseRate reads "N/unit", unit one of s, min, h, day (or their long
// forms), N from 1 to 10,000,000.
func ParseRate(s string) (Rate, error) {
	n, unit, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Rate{}, fmt.Errorf("rate %q: want N/unit, e.g. 300/min", s)
	}
	per, ok := rateUnits[strings.TrimSpace(unit)]
	if !ok {
		return Rate{}, fmt.Errorf("rate %q: unit %q is not s, min, h or day", s, unit)
	}
	v, err := strconv.Atoi(strings.TrimSpace(n))
	if err != nil || v < 1 || v > 10_000_000 {
		return Rate{}, fmt.Errorf("rate %q: %q is not a whole number from 1 to 10000000", s, n)
	}
	return Rate{N: v, Per: per}, nil
}

// Limits are what an entry sets; zero fields are not set (the default or
// the scheduler's own setting applies).
type Limits struct {
	MaxConnections           int
	MaxMessagesPerConnection int
	MaxMessageRate           Rate
}

// over is l with the fields set in o replacing its own.
func (l Limits) over(o Limits) Limits {
	if o.MaxConnections > 0 {
		l.MaxConnections = o.MaxConnections
	}
	if o.MaxMessagesPerConnection > 0 {
		l.MaxMessagesPerConnection = o.MaxMessagesPerConnection
	}
	if !o.MaxMessageRate.IsZero() {
		l.MaxMessageRate = o.MaxMessageRate
	}
	return l
}

// Entry shapes the destinations it matches.
type Entry struct {
	// Name labels the entry in metrics, logs and `mailferry shaping show`,
	// and keys its shared state: every destination an entry matches
	// shares its rate and automation state (a provider's MX hosts).
	Name string
	// Destinations are scheduler destination names matched exactly
	// ("mx:mx1.example.net", "smarthost").
	Destinations []string
	// MXSuffixes match the MX host of "mx:" destinations by suffix
	// (".google.com" matches gmail-smtp-in.l.google.com).
	MXSuffixes []string
	Limits
	Source string // where the figures and texts come from
}

// Action is what a rule does.
type Action string

const (
	// Throttle halves the destination's message rate for the rule's
	// duration; then the rate doubles back each duration until whole.
	Throttle Action = "throttle"
	// Suspend stops all transactions to the destination for the rule's
	// duration. Its queue stays: jobs wait, nothing bounces.
	Suspend Action = "suspend"
)

// Rule is an automation rule: a reply that matches triggers Action.
type Rule struct {
	Name string
	// Entries names the entries the rule applies to; empty: every
	// destination, those no entry matches included.
	Entries []string
	// Match is tried on each reply as "<code> <enhanced code> <text>",
	// e.g. "421 4.7.0 Try again later".
	Match    *regexp.Regexp
	Action   Action
	Duration time.Duration
	Source   string
}

// Config is a shaping configuration: built-in, a file, or both merged.
type Config struct {
	Default Limits
	Entries []Entry
	Rules   []Rule
}

// The YAML form.
type fileLimits struct {
	MaxConnections           int    `yaml:"max_connections"`
	MaxMessagesPerConnection int    `yaml:"max_messages_per_connection"`
	MaxMessageRate           string `yaml:"max_message_rate"`
}

type fileEntry struct {
	Name         string   `yaml:"name"`
	Destinations []string `yaml:"destinations"`
	MXSuffixes   []string `yaml:"mx_suffixes"`
	fileLimits   `yaml:",inline"`
	Source       string `yaml:"source"`
}

type fileRule struct {
	Name     string   `yaml:"name"`
	Entries  []string `yaml:"entries"`
	Match    string   `yaml:"match"`
	Action   string   `yaml:"action"`
	Duration string   `yaml:"duration"`
	Source   string   `yaml:"source"`
}

type file struct {
	Default      fileLimits  `yaml:"default"`
	Destinations []fileEntry `yaml:"destinations"`
	Rules        []fileRule  `yaml:"rules"`
}

// Bounds on a file, so a mistake cannot make a huge config or label set.
const (
	maxEntries     = 200
	maxRules       = 200
	maxMatchLen    = 500
	maxRuleSpan    = 7 * 24 * time.Hour
	maxConnections = 10000
	maxPerConn     = 100000
)

var namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,39}$`)

// Parse reads a shaping file. Every problem is reported, each naming the
// entry or rule.
func Parse(b []byte) (*Config, error) {
	var f file
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) { // empty: sets nothing
		return nil, fmt.Errorf("shaping file: %w", err)
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	c := &Config{}
	var err error
	if c.Default, err = f.Default.limits(); err != nil {
		bad("default: %w", err)
	}
	if len(f.Destinations) > maxEntries || len(f.Rules) > maxRules {
		return nil, fmt.Errorf("shaping file: at most %d destinations and %d rules", maxEntries, maxRules)
	}
	names := map[string]bool{}
	for i, fe := range f.Destinations {
		where := fmt.Sprintf("destinations[%d]", i)
		if !namePattern.MatchString(fe.Name) {
			bad("%s: name %q: want 1-40 of a-z, 0-9, _ and -", where, fe.Name)
		} else if names[fe.Name] {
			bad("%s: name %q given twice", where, fe.Name)
		}
		names[fe.Name] = true
		e := Entry{Name: fe.Name, Source: fe.Source}
		if e.Limits, err = fe.limits(); err != nil {
			bad("%s (%s): %w", where, fe.Name, err)
		}
		for _, d := range fe.Destinations {
			if d == "" || strings.ContainsAny(d, "{} \t\r\n") || len(d) > 260 {
				bad("%s (%s): destination %q: empty, too long or holds a brace or space", where, fe.Name, d)
				continue
			}
			e.Destinations = append(e.Destinations, strings.ToLower(d))
		}
		for _, s := range fe.MXSuffixes {
			s = strings.ToLower(strings.TrimPrefix(s, "*"))
			if !strings.HasPrefix(s, ".") || !validSuffix(s[1:]) {
				bad("%s (%s): mx suffix %q: want .example.com", where, fe.Name, s)
				continue
			}
			e.MXSuffixes = append(e.MXSuffixes, s)
		}
		if len(e.Destinations) == 0 && len(e.MXSuffixes) == 0 {
			bad("%s (%s): matches nothing: give destinations or mx_suffixes", where, fe.Name)
		}
		c.Entries = append(c.Entries, e)
	}
	for i, fr := range f.Rules {
		where := fmt.Sprintf("rules[%d]", i)
		r := Rule{Name: fr.Name, Entries: fr.Entries, Action: Action(fr.Action), Source: fr.Source}
		if r.Name == "" {
			r.Name = where
		}
		if fr.Match == "" || len(fr.Match) > maxMatchLen {
			bad("%s: match: want a regular expression of 1-%d bytes", where, maxMatchLen)
		} else if r.Match, err = regexp.Compile("(?i)" + fr.Match); err != nil {
			bad("%s: match: %w", where, err)
		}
		if r.Action != Throttle && r.Action != Suspend {
			bad("%s: action %q: want throttle or suspend", where, fr.Action)
		}
		if r.Duration, err = time.ParseDuration(fr.Duration); err != nil || r.Duration < time.Second || r.Duration > maxRuleSpan {
			bad("%s: duration %q: want 1s to 168h", where, fr.Duration)
		}
		c.Rules = append(c.Rules, r)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("shaping file: %w", errors.Join(errs...))
	}
	return c, nil
}

func (fl fileLimits) limits() (Limits, error) {
	l := Limits{MaxConnections: fl.MaxConnections, MaxMessagesPerConnection: fl.MaxMessagesPerConnection}
	var errs []error
	if l.MaxConnections < 0 || l.MaxConnections > maxConnections {
		errs = append(errs, fmt.Errorf("max_connections %d: want 1 to %d", l.MaxConnections, maxConnections))
	}
	if l.MaxMessagesPerConnection < 0 || l.MaxMessagesPerConnection > maxPerConn {
		errs = append(errs, fmt.Errorf("max_messages_per_connection %d: want 1 to %d", l.MaxMessagesPerConnection, maxPerConn))
	}
	if fl.MaxMessageRate != "" {
		r, err := ParseRate(fl.MaxMessageRate)
		if err != nil {
			errs = append(errs, fmt.Errorf("max_message_rate: %w", err))
		}
		l.MaxMessageRate = r
	}
	return l, errors.Join(errs...)
}

func validSuffix(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// Builtin is the embedded configuration for the large mailbox providers.
func Builtin() *Config {
	c, err := Parse(builtinYAML)
	if err != nil {
		panic("shaping: builtin.yaml: " + err.Error()) // a build mistake, caught by its test
	}
	return c
}

// Load is the built-in configuration with the file's over it (nil or
// empty: the built-in alone).
func Load(fileData []byte) (*Config, error) {
	base := Builtin()
	if len(bytes.TrimSpace(fileData)) == 0 {
		return base, nil
	}
	over, err := Parse(fileData)
	if err != nil {
		return nil, err
	}
	return Merge(base, over), nil
}

// Merge puts over's configuration on base: its default fields replace
// base's; its entries come first (the first match wins) and replace
// base's entries of the same name; its rules come before base's, and
// replace those of the same name.
func Merge(base, over *Config) *Config {
	c := &Config{Default: base.Default.over(over.Default)}
	c.Entries = append(c.Entries, over.Entries...)
	for _, e := range base.Entries {
		if !slices.ContainsFunc(over.Entries, func(o Entry) bool { return o.Name == e.Name }) {
			c.Entries = append(c.Entries, e)
		}
	}
	c.Rules = append(c.Rules, over.Rules...)
	for _, r := range base.Rules {
		if !slices.ContainsFunc(over.Rules, func(o Rule) bool { return o.Name == r.Name }) {
			c.Rules = append(c.Rules, r)
		}
	}
	return c
}

// Match returns the entry for a scheduler destination ("mx:host",
// "smarthost"), or nil: exact destination names first, then the longest
// MX suffix.
func (c *Config) Match(dest string) *Entry {
	dest = strings.ToLower(dest)
	for i := range c.Entries {
		if slices.Contains(c.Entries[i].Destinations, dest) {
			return &c.Entries[i]
		}
	}
	host, ok := strings.CutPrefix(dest, "mx:")
	if !ok {
		return nil
	}
	return c.MatchHost(host)
}

// MatchHost returns the entry whose MX suffix is the longest that host
// ends with, or nil.
func (c *Config) MatchHost(host string) *Entry {
	host = "." + strings.TrimSuffix(strings.ToLower(host), ".")
	var best *Entry
	bestLen := 0
	for i := range c.Entries {
		for _, s := range c.Entries[i].MXSuffixes {
			if strings.HasSuffix(host, s) && len(s) > bestLen {
				best, bestLen = &c.Entries[i], len(s)
			}
		}
	}
	return best
}

// LimitsFor is the default with the matching entry's limits over it, and
// the entry's name ("" when none matches).
func (c *Config) LimitsFor(dest string) (string, Limits) {
	e := c.Match(dest)
	if e == nil {
		return "", c.Default
	}
	return e.Name, c.Default.over(e.Limits)
}

// RuleFor returns the first rule that applies to the entry named entry
// ("" for a destination no entry matches) and matches reply, or nil.
func (c *Config) RuleFor(entry, reply string) *Rule {
	for i := range c.Rules {
		r := &c.Rules[i]
		if len(r.Entries) > 0 && !slices.Contains(r.Entries, entry) {
			continue
		}
		if r.Match.MatchString(reply) {
			return r
		}
	}
	return nil
}
