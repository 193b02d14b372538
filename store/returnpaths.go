package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// A domain's custom return path is verified when its last DNS check found
// bounces.<domain> a CNAME to the bounce domain (domains.PurposeReturnPath,
// domains.StatusVerified in the records JSON).
const selectReturnPathTenant = `SELECT tenant_id FROM domains WHERE name = $1
AND records @> '[{"purpose": "return_path", "status": "verified"}]'`

// ReturnPathTenant returns the tenant owning domain when the domain's
// custom return path (bounces.<domain>) is verified, "" when it is not or
// the domain is unknown.
func (s *Store) ReturnPathTenant(ctx context.Context, domain string) (string, error) {
	var tenant string
	err := s.pool.QueryRow(ctx, selectReturnPathTenant, strings.ToLower(domain)).Scan(&tenant)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read return path of domain %s: %w", domain, err)
	}
	return tenant, nil
}

// DefaultReturnPathTTL is how long ReturnPathCache trusts an answer. The
// status changes only when the domain scheduler re-checks DNS (minutes
// apart), so a domain switches to or from its custom return path at most
// this late, in every process.
const DefaultReturnPathTTL = 30 * time.Second

// maxReturnPathDomains bounds the cache; past it, it starts over.
const maxReturnPathDomains = 10000

// ReturnPathCache answers ReturnPathTenant from memory for TTL, the
// negative answers too (most domains have no custom return path), so that
// neither a delivery attempt nor an inbound RCPT costs a query. Errors are
// not cached. It is safe for concurrent use.
type ReturnPathCache struct {
	lookup func(ctx context.Context, domain string) (string, error)
	ttl    time.Duration
	now    func() time.Time

	mu sync.Mutex
	m  map[string]cachedReturnPath
}

type cachedReturnPath struct {
	tenant string
	at     time.Time
}

// NewReturnPathCache caches s.ReturnPathTenant for ttl (0:
// DefaultReturnPathTTL).
func NewReturnPathCache(s *Store, ttl time.Duration) *ReturnPathCache {
	if ttl <= 0 {
		ttl = DefaultReturnPathTTL
	}
	return &ReturnPathCache{lookup: s.ReturnPathTenant, ttl: ttl, now: time.Now, m: map[string]cachedReturnPath{}}
}

// ReturnPathTenant is Store.ReturnPathTenant, cached.
func (c *ReturnPathCache) ReturnPathTenant(ctx context.Context, domain string) (string, error) {
	domain = strings.ToLower(domain)
	now := c.now()
	c.mu.Lock()
	e, ok := c.m[domain]
	c.mu.Unlock()
	if ok && now.Sub(e.at) < c.ttl {
		return e.tenant, nil
	}
	tenant, err := c.lookup(ctx, domain)
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	if len(c.m) >= maxReturnPathDomains {
		clear(c.m)
	}
	c.m[domain] = cachedReturnPath{tenant: tenant, at: now}
	c.mu.Unlock()
	return tenant, nil
}
