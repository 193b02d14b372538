package lease

import (
	"strings"
	"testing"
	"time"
)

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		name       string
		visibility time.Duration
		want       Timing
		err        string
	}{
		{"default", DefaultVisibility, Timing{5 * time.Second, 15 * time.Second, 30 * time.Second, 90 * time.Second}, ""},
		{"tests", 3 * time.Second, Timing{500 * time.Millisecond, 1500 * time.Millisecond, 3 * time.Second, 63 * time.Second}, ""},
		{"too short", 30 * time.Millisecond, Timing{}, "heartbeat"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := New(tc.visibility)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), Var) {
					t.Fatalf("New(%v) error %v, want one naming %s and %q", tc.visibility, err, Var, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("New(%v) = %+v, %v; want %+v", tc.visibility, got, err, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	good := Timing{Heartbeat: time.Second, Lease: 3 * time.Second, Visibility: 6 * time.Second, StaleAfter: time.Minute}
	for _, tc := range []struct {
		name string
		edit func(*Timing)
		err  string
	}{
		{"good", func(*Timing) {}, ""},
		{"lease under three beats", func(t *Timing) { t.Lease = 2 * time.Second }, "three heartbeats"},
		{"lease outlives visibility", func(t *Timing) { t.Lease = 6 * time.Second }, "lapse before"},
		{"stale before visibility", func(t *Timing) { t.StaleAfter = 5 * time.Second }, "stale-after"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tm := good
			tc.edit(&tm)
			err := tm.Validate()
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want %q", err, tc.err)
			}
		})
	}
}
