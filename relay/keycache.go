package relay

import (
	"sync"
	"time"

	"github.com/mailferry/mailferry/dkim"
)

// keyCache keeps each sender domain's unsealed DKIM keys for a while:
// reading them is a ledger round trip and unsealing an RSA key costs more
// than signing with it.
type keyCache struct {
	ttl time.Duration

	mu sync.Mutex
	m  map[string]cachedKeys
}

type cachedKeys struct {
	keys []dkim.Key
	at   time.Time
}

// maxKeyDomains bounds the cache; past it, it starts over.
const maxKeyDomains = 10000

func newKeyCache(ttl time.Duration) *keyCache {
	return &keyCache{ttl: ttl, m: map[string]cachedKeys{}}
}

// get returns domain's keys, loading them when absent or older than the
// TTL. Failures are not cached.
func (c *keyCache) get(now time.Time, domain string, load func() ([]dkim.Key, error)) ([]dkim.Key, error) {
	c.mu.Lock()
	e, ok := c.m[domain]
	c.mu.Unlock()
	if ok && now.Sub(e.at) < c.ttl {
		return e.keys, nil
	}
	keys, err := load()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if len(c.m) >= maxKeyDomains {
		clear(c.m)
	}
	c.m[domain] = cachedKeys{keys: keys, at: now}
	c.mu.Unlock()
	return keys, nil
}
