// Package wait lets tests wait on a condition instead of sleeping: For
// checks cond every millisecond or so until it holds, and fails the test
// once the deadline passes.
package wait

import (
	"testing"
	"time"
)

// Deadline is how long For waits: generous, since a loaded CI machine is
// slow, and a condition that holds returns at once anyway.
const Deadline = 10 * time.Second

// For returns as soon as cond holds, or fails t naming what after
// Deadline.
func For(t testing.TB, what string, cond func() bool) {
	t.Helper()
	Within(t, Deadline, what, cond)
}

// Within is For with a deadline of d.
func Within(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for pause := time.Millisecond; !cond(); pause = min(2*pause, 20*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(pause) // the polling interval of a wait on cond
	}
}
