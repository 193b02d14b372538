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
	before := goroutines()
	code := run()
	if code != 0 {
		return code
	}
	// New goroutines are told by id, not by count: one that was there
	// before and ends during run would otherwise hide one that run leaked.
	deadline := time.Now().Add(grace)
	left := started(before, goroutines())
	for len(left) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // goroutines have no end to wait on
		left = started(before, goroutines())
	}
	if len(left) > 0 {
		fmt.Fprintf(w, "goroutine leak: %d started during the tests are still running:\n\n%s\n",
			len(left), strings.Join(left, "\n\n"))
		return 1
	}
	return code
}

// started returns the stacks in now whose goroutine is not in before.
func started(before, now []string) []string {
	old := make(map[string]bool, len(before))
	for _, g := range before {
		old[goroutineID(g)] = true
	}
	var out []string
	for _, g := range now {
		if !old[goroutineID(g)] {
			out = append(out, g)
		}
	}
	return out
}

// goroutineID is the "goroutine N" that heads a stack.
func goroutineID(stack string) string {
	id, _, _ := strings.Cut(stack, " [")
	return id
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
