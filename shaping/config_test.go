package shaping

import (
	"strings"
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	good := map[string]Rate{
		"300/min": {300, time.Minute}, "10/s": {10, time.Second}, " 5 / hour ": {5, time.Hour},
		"100000/day": {100000, 24 * time.Hour}, "1/sec": {1, time.Second},
	}
	for in, want := range good {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
		if back, err := ParseRate(got.String()); err != nil || back != got {
			t.Errorf("%v does not round-trip through %q: %v %v", got, got.String(), back, err)
		}
	}
	for _, in := range []string{"", "300", "0/min", "-1/min", "300/week", "x/min", "1.5/s", "20000000/s"} {
		if r, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) = %v, want an error", in, r)
		}
	}
	if got := (Rate{300, time.Minute}).PerSecond(); got != 5 {
		t.Errorf("300/min is %v a second", got)
	}
}

func TestParse(t *testing.T) {
	c, err := Parse([]byte(`
default:
  max_connections: 16
destinations:
  - name: relay
    destinations: [smarthost, MX:Mx.Example.Net]
    max_connections: 4
    max_message_rate: 120/min
  - name: corp
    mx_suffixes: ["*.corp.example", .mail.example]
    max_messages_per_connection: 10
rules:
  - name: slow-down
    entries: [relay]
    match: '^421 4\.7\.0 '
    action: throttle
    duration: 5m
  - match: 'go away'
    action: suspend
    duration: 1h
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dest, entry string
		conns, per  int
		rate        string
	}{
		{"smarthost", "relay", 4, 0, "120/min"},
		{"mx:mx.example.net", "relay", 4, 0, "120/min"},
		{"mx:a.corp.example", "corp", 16, 10, "none"},
		{"mx:x.y.mail.example", "corp", 16, 10, "none"},
		{"mx:corp.example.org", "", 16, 0, "none"},
		{"mx:mail.example", "corp", 16, 10, "none"}, // the suffix's own domain too
		{"mx:xmail.example", "", 16, 0, "none"},     // a suffix starts at a dot
	} {
		name, lim := c.LimitsFor(tc.dest)
		if name != tc.entry || lim.MaxConnections != tc.conns || lim.MaxMessagesPerConnection != tc.per || lim.MaxMessageRate.String() != tc.rate {
			t.Errorf("%s: %q %+v; want %q, %d connections, %d per connection, %s", tc.dest, name, lim, tc.entry, tc.conns, tc.per, tc.rate)
		}
	}
	for _, tc := range []struct{ entry, reply, rule string }{
		{"relay", "421 4.7.0 Try again later", "slow-down"},
		{"corp", "421 4.7.0 Try again later", ""},
		{"corp", "421 4.3.2 GO AWAY now", "rules[1]"},
		{"", "250 2.0.0 ok", ""},
	} {
		r := c.RuleFor(tc.entry, tc.reply)
		got := ""
		if r != nil {
			got = r.Name
		}
		if got != tc.rule {
			t.Errorf("RuleFor(%q, %q) = %q, want %q", tc.entry, tc.reply, got, tc.rule)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for name, in := range map[string]string{
		"unknown field":   "destinations: [{name: a, destinations: [x], max_conections: 3}]",
		"bad name":        "destinations: [{name: 'A B', destinations: [x]}]",
		"duplicate name":  "destinations: [{name: a, destinations: [x]}, {name: a, destinations: [y]}]",
		"matches nothing": "destinations: [{name: a}]",
		"bad suffix":      "destinations: [{name: a, mx_suffixes: [example.com]}]",
		"brace":           "destinations: [{name: a, destinations: ['{x}']}]",
		"bad rate":        "destinations: [{name: a, destinations: [x], max_message_rate: 5/week}]",
		"negative":        "default: {max_connections: -1}",
		"bad regexp":      "rules: [{match: '(', action: throttle, duration: 1m}]",
		"bad action":      "rules: [{match: x, action: bounce, duration: 1m}]",
		"no duration":     "rules: [{match: x, action: suspend}]",
		"long duration":   "rules: [{match: x, action: suspend, duration: 1000h}]",
		"not yaml":        "destinations: {",
	} {
		if _, err := Parse([]byte(in)); err == nil {
			t.Errorf("%s: no error for %s", name, in)
		}
	}
	if c, err := Parse(nil); err != nil || len(c.Entries) != 0 {
		t.Errorf("empty file: %v %v", c, err)
	}
}

// TestBuiltin: the embedded file parses, cites a source for every entry
// and rule, and routes the providers' real MX hosts to their entries.
func TestBuiltin(t *testing.T) {
	c := Builtin()
	for _, e := range c.Entries {
		if !strings.HasPrefix(e.Source, "https://") || e.MaxMessageRate.IsZero() || e.MaxConnections == 0 {
			t.Errorf("entry %s: source %q, limits %+v", e.Name, e.Source, e.Limits)
		}
	}
	for _, r := range c.Rules {
		if r.Source == "" {
			t.Errorf("rule %s cites no source", r.Name)
		}
	}
	for host, want := range map[string]string{
		"gmail-smtp-in.l.google.com":             "gmail",
		"aspmx.l.google.com":                     "gmail",
		"hotmail-com.olc.protection.outlook.com": "outlook",
		"mta5.am0.yahoodns.net":                  "yahoo",
		"mx-aol.mail.gm0.yahoodns.net":           "yahoo",
		"mx01.mail.icloud.com":                   "icloud",
		"mx.example.net":                         "",
	} {
		got := ""
		if e := c.Match("mx:" + host); e != nil {
			got = e.Name
		}
		if got != want {
			t.Errorf("%s → %q, want %q", host, got, want)
		}
	}
	for reply, want := range map[string]string{
		"421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints": "yahoo-volume",
		"421 4.7.0 [TSS09] All messages from 192.0.2.1 will be permanently deferred":                                 "yahoo-complaints",
	} {
		if r := c.RuleFor("yahoo", reply); r == nil || r.Name != want {
			t.Errorf("%q → %v, want %s", reply, r, want)
		}
	}
	if r := c.RuleFor("", "421 4.7.0 Try again later, closing connection."); r == nil || r.Action != Throttle {
		t.Errorf("the generic try-again-later rule: %v", r)
	}
}

func TestMerge(t *testing.T) {
	over, err := Parse([]byte(`
default: {max_connections: 8}
destinations:
  - {name: gmail, mx_suffixes: [.google.com], max_connections: 50}
  - {name: mine, destinations: [mx:mx.example.net], max_message_rate: 60/min}
`))
	if err != nil {
		t.Fatal(err)
	}
	c := Merge(Builtin(), over)
	if _, lim := c.LimitsFor("mx:aspmx.l.google.com"); lim.MaxConnections != 50 || !lim.MaxMessageRate.IsZero() {
		t.Errorf("the file's gmail entry replaces the built-in one: %+v", lim)
	}
	if _, lim := c.LimitsFor("mx:mx01.mail.icloud.com"); lim.MaxConnections != 10 {
		t.Errorf("built-in entries not replaced stay: %+v", lim)
	}
	if name, lim := c.LimitsFor("mx:other.example"); name != "" || lim.MaxConnections != 8 || lim.MaxMessagesPerConnection != 0 {
		t.Errorf("default merged field by field: %+v", lim)
	}
}

func TestFactorAt(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	st := State{Factor: 0.25, Since: t0, Period: time.Minute}
	for _, tc := range []struct {
		after time.Duration
		want  float64
	}{
		{0, 0.25}, {59 * time.Second, 0.25}, {time.Minute, 0.5}, {2 * time.Minute, 1}, {time.Hour, 1},
	} {
		if got := st.FactorAt(t0.Add(tc.after)); got != tc.want {
			t.Errorf("after %s: %v, want %v", tc.after, got, tc.want)
		}
	}
	if got := (State{}).FactorAt(t0); got != 1 {
		t.Errorf("no state: %v", got)
	}
}
