package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mailferry/mailferry/internal/testenv"
)

// flushBound is how soon a revocation must reach a listening cache. It is
// generous for a loaded CI machine; the time taken is logged.
const flushBound = 2 * time.Second

// runCache starts c.Run and returns a function that stops it and waits
// for it to return.
func runCache(t *testing.T, c *KeyCache) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after its context ended")
		}
	}
	t.Cleanup(stop)
	return stop
}

// waitFor polls cond every 2 ms until it holds or d passes, and returns
// how long it took.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Since(start)
}

// revokeSilently revokes a key with the notify trigger off: only the TTL
// or a bypassed cache can then refuse it.
func revokeSilently(t *testing.T, s *Store, id string) {
	t.Helper()
	ctx := t.Context()
	for _, sql := range []string{
		`ALTER TABLE api_keys DISABLE TRIGGER api_keys_notify`,
		`UPDATE api_keys SET revoked_at = now() WHERE id = '` + id + `'`,
		`ALTER TABLE api_keys ENABLE TRIGGER api_keys_notify`,
	} {
		if _, err := s.pool.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}

func newKey(t *testing.T, s *Store) (APIKey, string) {
	t.Helper()
	k, secret, err := s.CreateAPIKey(t.Context(), "acme", []string{"example.com"})
	if err != nil {
		t.Fatal(err)
	}
	return k, secret
}

func mustAuth(t *testing.T, c *KeyCache, secret string, want APIKey) {
	t.Helper()
	got, err := c.Authenticate(t.Context(), secret)
	if err != nil {
		t.Fatalf("Authenticate(%s): %v", want.ID, err)
	}
	if got.ID != want.ID || got.TenantID != want.TenantID {
		t.Fatalf("Authenticate = %+v, want key %s", got, want.ID)
	}
}

func refused(c *KeyCache, ctx context.Context, secret string) bool {
	_, err := c.Authenticate(ctx, secret)
	return errors.Is(err, ErrUnauthorized)
}

// TestKeyCacheRevocation: `mailferry keys revoke`, from another process
// (here another pool), reaches a listening cache within flushBound though
// its TTL is an hour.
func TestKeyCacheRevocation(t *testing.T) {
	t.Parallel()
	url := testenv.Database(t)
	s := openStore(t, url)
	if _, err := s.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	c, err := NewKeyCache(s, KeyCacheOptions{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	runCache(t, c)
	waitFor(t, 10*time.Second, "listening", c.Listening)

	k1, s1 := newKey(t, s)
	k2, s2 := newKey(t, s)
	mustAuth(t, c, s1, k1)
	mustAuth(t, c, s2, k2)
	if n := c.Len(); n != 2 {
		t.Fatalf("%d keys cached, want 2", n)
	}
	// Cached for real: a revocation nobody announces goes unseen.
	revokeSilently(t, s, k2.ID)
	mustAuth(t, c, s2, k2)

	// Wrong and unknown secrets are refused and take no room.
	for _, bad := range []string{s1[:len(s1)-1] + "A", "mf_kaaaaaaaaaaaa" + s1[len("mf_")+keyIDLen:], "garbage"} {
		if bad == s1 {
			continue
		}
		for range 3 {
			if !refused(c, t.Context(), bad) {
				t.Fatalf("%q authenticated", bad)
			}
		}
	}
	if n := c.Len(); n != 2 {
		t.Errorf("%d keys cached after wrong keys, want 2", n)
	}

	other := openStore(t, url) // the `mailferry keys revoke` process
	if err := other.RevokeAPIKey(t.Context(), k1.ID); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, flushBound, "revocation reaches the cache", func() bool { return refused(c, t.Context(), s1) })
	t.Logf("revocation refused after %s", took)
	// The flush took the silently revoked key too.
	if !refused(c, t.Context(), s2) {
		t.Error("silently revoked key still accepted after a flush")
	}
	if n := c.Len(); n != 0 {
		t.Errorf("%d keys cached after the flush, want 0", n)
	}
}

// TestKeyCacheBypassed: while the listener is not connected the cache
// neither serves nor stores; after a reconnect it works again.
func TestKeyCacheBypassed(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	c, err := NewKeyCache(s, KeyCacheOptions{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()

	// Not started: every request asks PostgreSQL.
	k1, s1 := newKey(t, s)
	mustAuth(t, c, s1, k1)
	if n := c.Len(); n != 0 || c.Listening() {
		t.Fatalf("not started: %d keys cached, listening %v", n, c.Listening())
	}
	revokeSilently(t, s, k1.ID)
	if !refused(c, ctx, s1) {
		t.Fatal("not started: a revoked key authenticated")
	}

	// Started: cached.
	stop := runCache(t, c)
	waitFor(t, 10*time.Second, "listening", c.Listening)
	k2, s2 := newKey(t, s)
	mustAuth(t, c, s2, k2)
	if n := c.Len(); n != 1 {
		t.Fatalf("listening: %d keys cached, want 1", n)
	}

	// Stopped: flushed, and bypassed.
	stop()
	if c.Listening() {
		t.Fatal("still listening after Run returned")
	}
	if n := c.Len(); n != 0 {
		t.Errorf("stopped: %d keys cached, want 0", n)
	}
	mustAuth(t, c, s2, k2)
	if n := c.Len(); n != 0 {
		t.Errorf("stopped: %d keys cached, want 0", n)
	}
	revokeSilently(t, s, k2.ID)
	if !refused(c, ctx, s2) {
		t.Fatal("stopped: a revoked key authenticated")
	}

	// The listener's connection dies: the cache turns off, Run reconnects,
	// and revocations reach it again.
	runCache(t, c)
	waitFor(t, 10*time.Second, "listening", c.Listening)
	k3, s3 := newKey(t, s)
	mustAuth(t, c, s3, k3)
	var killed bool
	err = s.pool.QueryRow(ctx, `SELECT bool_and(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE application_name = $1 AND datname = current_database()`, keyCacheAppName).Scan(&killed)
	if err != nil || !killed {
		t.Fatalf("terminate the listener: %v, %v", killed, err)
	}
	waitFor(t, 5*time.Second, "cache off after the connection died", func() bool { return !c.Listening() })
	if n := c.Len(); n != 0 {
		t.Errorf("connection lost: %d keys cached, want 0", n)
	}
	waitFor(t, 10*time.Second, "listening again", c.Listening)
	mustAuth(t, c, s3, k3)
	if n := c.Len(); n != 1 {
		t.Fatalf("reconnected: %d keys cached, want 1", n)
	}
	if err := s.RevokeAPIKey(ctx, k3.ID); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, flushBound, "revocation after reconnect", func() bool { return refused(c, ctx, s3) })
	t.Logf("revocation after reconnect refused after %s", took)
}

// TestKeyCacheBound: the cache never holds more than MaxEntries keys.
func TestKeyCacheBound(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	c, err := NewKeyCache(s, KeyCacheOptions{TTL: time.Hour, MaxEntries: 3})
	if err != nil {
		t.Fatal(err)
	}
	runCache(t, c)
	waitFor(t, 10*time.Second, "listening", c.Listening)
	for range 8 {
		k, secret := newKey(t, s)
		mustAuth(t, c, secret, k)
		if n := c.Len(); n > 3 {
			t.Fatalf("%d keys cached, MaxEntries 3", n)
		}
	}
	if _, err := NewKeyCache(s, KeyCacheOptions{TTL: -time.Second}); err == nil {
		t.Error("negative TTL accepted")
	}
}

// BenchmarkAuthenticate compares a query per request with a cache hit.
func BenchmarkAuthenticate(b *testing.B) {
	s := newStore(b)
	k, secret, err := s.CreateAPIKey(b.Context(), "acme", []string{"example.com"})
	if err != nil {
		b.Fatal(err)
	}
	c, err := NewKeyCache(s, KeyCacheOptions{TTL: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(b.Context())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for start := time.Now(); !c.Listening(); time.Sleep(time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			b.Fatal("not listening")
		}
	}
	for _, bc := range []struct {
		name string
		auth func(context.Context, string) (APIKey, error)
	}{{"store", s.Authenticate}, {"cache", c.Authenticate}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if got, err := bc.auth(ctx, secret); err != nil || got.ID != k.ID {
					b.Fatal(got, err)
				}
			}
		})
	}
}
