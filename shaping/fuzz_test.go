package shaping

import (
	"testing"
)

// FuzzParse: any input is refused or gives a config whose every entry
// has a valid name and matches something, whose rates round-trip, and
// whose lookups do not panic; parsing is deterministic.
func FuzzParse(f *testing.F) {
	f.Add(builtinYAML)
	f.Add([]byte("destinations: [{name: a, destinations: [smarthost], max_message_rate: 5/s}]"))
	f.Add([]byte("rules: [{match: '^421', action: throttle, duration: 1m}]"))
	f.Add([]byte("default: {max_connections: 3}"))
	builtin := Builtin()
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if err != nil {
			return
		}
		c2, err := Parse(b)
		if err != nil || len(c2.Entries) != len(c.Entries) || len(c2.Rules) != len(c.Rules) {
			t.Fatalf("second parse differs: %v", err)
		}
		for _, e := range c.Entries {
			if !namePattern.MatchString(e.Name) || len(e.Destinations)+len(e.MXSuffixes) == 0 {
				t.Fatalf("entry %+v accepted", e)
			}
			if r := e.MaxMessageRate; !r.IsZero() {
				if back, err := ParseRate(r.String()); err != nil || back != r {
					t.Fatalf("rate %v does not round-trip: %v", r, err)
				}
			}
			for _, d := range e.Destinations {
				if c.Match(d) == nil {
					t.Fatalf("destination %q of %s matches no entry", d, e.Name)
				}
			}
		}
		for _, r := range c.Rules {
			if r.Match == nil || (r.Action != Throttle && r.Action != Suspend) || r.Duration <= 0 {
				t.Fatalf("rule %+v accepted", r)
			}
			c.RuleFor("", "421 4.7.0 try again later")
		}
		Merge(builtin, c).LimitsFor("mx:gmail-smtp-in.l.google.com")
	})
}
