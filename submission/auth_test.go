package submission

import (
	"net/netip"
	"testing"
	"time"
)

func TestFailureLimiter(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := newFailureLimiter(3, time.Minute, func() time.Time { return now })
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	blocked := func(s string) bool { return l.wait(ip(s)) > 0 }

	for i := range 2 {
		if l.fail(ip("192.0.2.1")) {
			t.Fatalf("blocked after %d failures", i+1)
		}
	}
	if blocked("192.0.2.1") {
		t.Fatal("blocked before the limit")
	}
	if !l.fail(ip("192.0.2.1")) || !blocked("192.0.2.1") {
		t.Fatal("not blocked at the limit")
	}
	if blocked("192.0.2.2") {
		t.Error("a neighbour is blocked too")
	}
	if !blocked("::ffff:192.0.2.1") {
		t.Error("the IPv4-mapped form escapes the block")
	}
	now = now.Add(59 * time.Second)
	if got := l.wait(ip("192.0.2.1")); got != time.Second {
		t.Errorf("wait %v, want 1s", got)
	}
	now = now.Add(time.Second)
	if blocked("192.0.2.1") {
		t.Error("still blocked after the block time")
	}

	// IPv6 counts by /64.
	l.fail(ip("2001:db8::1"))
	l.fail(ip("2001:db8::2"))
	l.fail(ip("2001:db8::ffff:3"))
	if !blocked("2001:db8::99") {
		t.Error("failures from one /64 do not add up")
	}
	if blocked("2001:db8:0:1::1") {
		t.Error("the next /64 is blocked too")
	}

	// Failures further apart than the window do not add up.
	for range 5 {
		l.fail(ip("198.51.100.7"))
		l.fail(ip("198.51.100.7"))
		now = now.Add(61 * time.Second)
	}
	if blocked("198.51.100.7") {
		t.Error("blocked by failures spread over minutes")
	}

	l.prune(now.Add(time.Hour))
	if len(l.clients) != 0 {
		t.Errorf("%d entries left after pruning", len(l.clients))
	}
}

func TestLoginServer(t *testing.T) {
	var gotUser, gotPass string
	auth := func(u, p string) error { gotUser, gotPass = u, p; return nil }

	s := newLoginServer(auth)
	ch, done, err := s.Next(nil)
	if string(ch) != "Username:" || done || err != nil {
		t.Fatalf("first step: %q %v %v", ch, done, err)
	}
	ch, done, err = s.Next([]byte("acme"))
	if string(ch) != "Password:" || done || err != nil {
		t.Fatalf("second step: %q %v %v", ch, done, err)
	}
	if _, done, err = s.Next([]byte("secret")); !done || err != nil || gotUser != "acme" || gotPass != "secret" {
		t.Fatalf("last step: %v %v, authenticated %q %q", done, err, gotUser, gotPass)
	}
	if _, _, err = s.Next([]byte("more")); err == nil {
		t.Error("a response after the end was taken")
	}

	// The user name as initial response (RFC 4954 4).
	s = newLoginServer(auth)
	if ch, _, _ := s.Next([]byte("acme")); string(ch) != "Password:" {
		t.Errorf("with an initial response: %q", ch)
	}
}

// TestFailureLimiterInflight: checks in progress count against the limit
// from when they begin; a success gives its attempt back.
func TestFailureLimiterInflight(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := newFailureLimiter(3, time.Minute, func() time.Time { return now })
	ip := netip.MustParseAddr("192.0.2.1")
	for i := range 3 {
		if _, ok := l.begin(ip); !ok {
			t.Fatalf("check %d refused under the limit", i+1)
		}
	}
	if wait, ok := l.begin(ip); ok || wait != busyWait {
		t.Fatalf("a fourth check at once: ok %v wait %v, want refused for %v", ok, wait, busyWait)
	}
	if _, ok := l.begin(netip.MustParseAddr("192.0.2.2")); !ok {
		t.Fatal("another address is refused")
	}
	l.end(ip, false) // a success: the attempt comes back
	if _, ok := l.begin(ip); !ok {
		t.Fatal("refused after a check ended in success")
	}
	l.end(ip, true)
	l.end(ip, true)
	if !l.end(ip, true) {
		t.Fatal("three failures did not block")
	}
	if wait, ok := l.begin(ip); ok || wait != time.Minute {
		t.Fatalf("after the block: ok %v wait %v, want refused for 1m", ok, wait)
	}
}
