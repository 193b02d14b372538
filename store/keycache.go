package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// KeyCacheChannel is the channel on which PostgreSQL announces every change
// to api_keys (migration 0004); the payload is the key id.
const KeyCacheChannel = "mailferry_api_keys"

// Defaults of KeyCacheOptions.
const (
	DefaultKeyCacheTTL     = 5 * time.Second
	DefaultKeyCacheEntries = 10000
	// KeyCachePollTTL caps TTL when the cache polls (behind a pooler
	// without a direct URL): how late a revocation may be seen.
	KeyCachePollTTL = time.Second
)

const (
	keyCacheAppName    = "mailferry-keycache" // application_name of the listening connection
	keyCacheMinBackoff = 100 * time.Millisecond
	keyCacheMaxBackoff = 10 * time.Second
	keyCacheIOTimeout  = 10 * time.Second // connect, LISTEN, ping
)

// KeyCacheOptions configures NewKeyCache.
type KeyCacheOptions struct {
	// TTL is how long a verified key is trusted without asking PostgreSQL
	// again: the backstop should a notification be lost. It is also how
	// often an idle listener checks its connection. 0: DefaultKeyCacheTTL.
	TTL time.Duration
	// MaxEntries bounds the cache; only keys that authenticated are kept,
	// so wrong keys, however many, take no room. 0: DefaultKeyCacheEntries.
	MaxEntries int
	Logger     *slog.Logger // nil: discard
}

// KeyCache authenticates API keys like Store.Authenticate, remembering the
// keys that authenticated so most requests need no query.
//
// Revocation stays effectively immediate: Run LISTENs on KeyCacheChannel on
// a connection of its own, and every notification flushes the cache, so a
// key revoked in any process is refused within milliseconds. Entries also
// expire after TTL. The listening connection goes to Options.DirectURL
// when set, since LISTEN needs a session of its own and a transaction
// pooler (PgBouncer in transaction mode) hands each transaction to any
// server connection, so notifications would go to a connection nobody
// reads. Behind a pooler without DirectURL, Run polls instead: the cache is
// on, but an entry is trusted for at most KeyCachePollTTL (1 s), so a
// revocation takes effect within a second in every process, for at most
// one query per key and second per process. While Run is not listening (not started yet, lost its
// connection, reconnecting) nothing is cached or served from the cache:
// every request asks PostgreSQL. Only the sha256 of a secret is kept,
// never the secret.
//
// A KeyCache is safe for concurrent use.
type KeyCache struct {
	store *Store
	ttl   time.Duration
	max   int
	log   *slog.Logger

	listening atomic.Bool // Run is connected and LISTENing

	mu sync.RWMutex
	// gen counts flushes. A request that missed notes it before asking
	// PostgreSQL and stores its answer only if no flush came in between:
	// an answer read before a revocation committed never outlives the
	// notification of that revocation.
	gen     uint64
	entries map[[sha256.Size]byte]cachedKey

	// used is when each key's last use was written (recordUse): at most
	// one write per key per KeyUseInterval, never one per request.
	usedMu sync.Mutex
	used   map[string]time.Time
}

// KeyUseInterval is how often at most a process writes a key's last use.
const KeyUseInterval = time.Minute

type cachedKey struct {
	key     APIKey
	expires time.Time
}

// NewKeyCache returns a cache in front of st.Authenticate. It caches
// nothing until Run is listening.
func NewKeyCache(st *Store, opts KeyCacheOptions) (*KeyCache, error) {
	if st == nil {
		return nil, errors.New("key cache: no store")
	}
	if opts.TTL < 0 || opts.MaxEntries < 0 {
		return nil, fmt.Errorf("key cache: TTL %s and MaxEntries %d must not be negative", opts.TTL, opts.MaxEntries)
	}
	if opts.TTL == 0 {
		opts.TTL = DefaultKeyCacheTTL
	}
	if opts.MaxEntries == 0 {
		opts.MaxEntries = DefaultKeyCacheEntries
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if st.pooled && st.directURL == "" {
		opts.TTL = min(opts.TTL, KeyCachePollTTL)
	}
	return &KeyCache{
		store: st, ttl: opts.TTL, max: opts.MaxEntries, log: opts.Logger,
		entries: make(map[[sha256.Size]byte]cachedKey),
		used:    make(map[string]time.Time),
	}, nil
}

// Authenticate returns the key a secret belongs to, with the errors of
// Store.Authenticate. The APIKey returned may be shared with other
// callers: treat its Domains as read-only.
func (c *KeyCache) Authenticate(ctx context.Context, secret string) (APIKey, error) {
	key, err := c.authenticate(ctx, secret)
	if err == nil {
		c.recordUse(ctx, key.ID)
	}
	return key, err
}

// recordUse writes the key's last use unless this process wrote it less
// than KeyUseInterval ago. A failed write is logged, not returned: the
// request is authenticated all the same.
func (c *KeyCache) recordUse(ctx context.Context, id string) {
	now := time.Now()
	c.usedMu.Lock()
	if last, ok := c.used[id]; ok && now.Sub(last) < KeyUseInterval {
		c.usedMu.Unlock()
		return
	}
	if len(c.used) >= c.max {
		clear(c.used) // bounded: at worst one more write per key
	}
	c.used[id] = now
	c.usedMu.Unlock()
	if err := c.store.TouchKeys(ctx, []string{id}, now); err != nil {
		c.log.LogAttrs(ctx, slog.LevelWarn, "record api key use", slog.String("key", id), slog.Any("error", err))
	}
}

func (c *KeyCache) authenticate(ctx context.Context, secret string) (APIKey, error) {
	hash := hashSecret(secret)
	if !c.listening.Load() {
		return c.store.authenticate(ctx, secret, hash)
	}
	now := time.Now()
	c.mu.RLock()
	e, ok := c.entries[hash]
	gen := c.gen
	c.mu.RUnlock()
	if ok && now.Before(e.expires) {
		return e.key, nil
	}
	key, err := c.store.authenticate(ctx, secret, hash)
	if err != nil {
		return key, err // unknown, wrong, revoked or no answer: never cached
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen || !c.listening.Load() {
		return key, nil // flushed meanwhile: this answer may predate it
	}
	if _, ok := c.entries[hash]; !ok && len(c.entries) >= c.max {
		c.evictLocked(now)
	}
	c.entries[hash] = cachedKey{key: key, expires: now.Add(c.ttl)}
	return key, nil
}

// hashSecret is sha256.Sum256([]byte(secret)) without putting a copy of
// a well-formed secret on the heap.
func hashSecret(secret string) [sha256.Size]byte {
	var b [secretTotalLen]byte
	if len(secret) > len(b) {
		return sha256.Sum256([]byte(secret))
	}
	return sha256.Sum256(b[:copy(b[:], secret)])
}

// Listening reports whether the cache is in use: Run is connected and
// listening for changes.
func (c *KeyCache) Listening() bool { return c.listening.Load() }

// Polling reports whether the cache polls rather than listens: the store
// is behind a pooler and has no direct URL.
func (c *KeyCache) Polling() bool { return c.store.pooled && c.store.directURL == "" }

// Len is the number of keys cached, expired ones included.
func (c *KeyCache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}

// evictLocked makes room for one entry: expired entries go first, then
// any (map order is arbitrary, which is all a bound needs).
func (c *KeyCache) evictLocked(now time.Time) {
	for h, e := range c.entries {
		if !now.Before(e.expires) {
			delete(c.entries, h)
		}
	}
	for h := range c.entries {
		if len(c.entries) < c.max {
			break
		}
		delete(c.entries, h)
	}
}

func (c *KeyCache) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	clear(c.entries)
}

// setListening turns the cache on or off; either way it starts empty, as
// notifications may have been missed while it was off.
func (c *KeyCache) setListening(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.listening.Store(on)
	c.gen++
	clear(c.entries)
}

// Run listens for changes to api_keys on a dedicated connection until ctx
// is done, and returns nil then. When the connection fails it turns the
// cache off and reconnects, waiting 100 ms at first and up to 10 s
// between attempts.
func (c *KeyCache) Run(ctx context.Context) error {
	if c.Polling() {
		c.setListening(true)
		c.log.LogAttrs(ctx, slog.LevelInfo, "api key cache on, polling: behind a pooler without MAILFERRY_DATABASE_DIRECT_URL; a revoked key is refused within the TTL",
			slog.Duration("ttl", c.ttl))
		<-ctx.Done()
		c.setListening(false)
		return nil
	}
	backoff := keyCacheMinBackoff
	for {
		connected, err := c.listen(ctx)
		c.setListening(false)
		if ctx.Err() != nil {
			return nil
		}
		if connected {
			backoff = keyCacheMinBackoff
		}
		c.log.LogAttrs(ctx, slog.LevelWarn, "api key cache off: every request asks PostgreSQL until the listener reconnects",
			slog.Any("error", err), slog.Duration("retry_in", backoff))
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, keyCacheMaxBackoff)
	}
}

// listen connects, LISTENs and flushes the cache on every notification
// until the connection fails or ctx is done. connected reports whether it
// got as far as listening.
func (c *KeyCache) listen(ctx context.Context) (connected bool, err error) {
	cfg := c.store.pool.Config().ConnConfig // a copy
	if c.store.directURL != "" {
		var err error
		if cfg, err = pgx.ParseConfig(c.store.directURL); err != nil {
			return false, fmt.Errorf("key cache: direct URL: %w", err) // pgx redacts the password
		}
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["application_name"] = keyCacheAppName
	cctx, cancel := context.WithTimeout(ctx, keyCacheIOTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		return false, fmt.Errorf("key cache: connect: %w", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(cctx, "LISTEN "+KeyCacheChannel); err != nil {
		return false, fmt.Errorf("key cache: listen: %w", err)
	}
	cancel()
	c.setListening(true)
	c.log.LogAttrs(ctx, slog.LevelInfo, "api key cache on", slog.String("channel", KeyCacheChannel), slog.Duration("ttl", c.ttl))

	for {
		// Wake at least once a TTL to check the connection: one that died
		// silently (a network partition) must not keep the cache on.
		wctx, cancel := context.WithTimeout(ctx, c.ttl)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			c.flush()
			c.log.LogAttrs(ctx, slog.LevelDebug, "api key changed: cache flushed", slog.String("key", n.Payload))
		case ctx.Err() != nil:
			return true, nil
		case pgconn.Timeout(err):
			pctx, cancel := context.WithTimeout(ctx, keyCacheIOTimeout)
			err := conn.Ping(pctx)
			cancel()
			if err != nil && ctx.Err() == nil {
				return true, fmt.Errorf("key cache: ping: %w", err)
			}
		default:
			return true, fmt.Errorf("key cache: wait for notification: %w", err)
		}
	}
}
