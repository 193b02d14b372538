package leakcheck

import (
	"strings"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(stop <-chan struct{}) int
		want int
		out  string
	}{
		{"clean", func(<-chan struct{}) int { return 0 }, 0, ""},
		{"tests failed", func(<-chan struct{}) int { return 3 }, 3, ""},
		{"leaked goroutine", func(stop <-chan struct{}) int {
			go func() { <-stop }()
			return 0
		}, 1, "goroutine leak"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stop := make(chan struct{})
			defer close(stop)
			var out strings.Builder
			got := check(&out, 50*time.Millisecond, func() int { return tc.run(stop) })
			if got != tc.want || !strings.Contains(out.String(), tc.out) || (tc.out == "") != (out.Len() == 0) {
				t.Errorf("check = %d, output %q; want %d and %q", got, out.String(), tc.want, tc.out)
			}
		})
	}
}
