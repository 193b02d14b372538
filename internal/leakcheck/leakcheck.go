// Package leakcheck fails a test binary whose goroutines outlive its
// tests: every session, query and test server a test starts must end.
package leakcheck

import (
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"
)

// Run calls run (a TestMain's m.Run or testenv.Run) and returns its exit
// code, or 1 if goroutines started during it are still there 10s later;
// their stacks go to w.
func Run(w io.Writer, run func() int) int { return check(w, 10*time.Second, run) }

func check(w io.Writer, grace time.Duration, run func() int) int {
	before := len(goroutines())
	code := run()
	if code != 0 {
		return code
	}
	deadline := time.Now().Add(grace)
	left := goroutines()
	for len(left) > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // goroutines have no end to wait on
		left = goroutines()
	}
	if len(left) > before {
		fmt.Fprintf(w, "goroutine leak: %d before the tests, %d after:\n\n%s\n",
			before, len(left), strings.Join(left, "\n\n"))
		return 1
	}
	return code
}

// goroutines returns the stacks of all goroutines but this one and those
// the runtime or the test framework own (signal handling for -fuzz).
func goroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 || strings.Contains(g, "os/signal.signal_recv") {
			continue // i == 0 is the calling goroutine
		}
		out = append(out, g)
	}
	return out
}
