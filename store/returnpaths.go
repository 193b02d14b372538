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
// negative answers too unless told not to (most domains have no custom
// return path), so that a delivery attempt costs no query. Errors are not
// cached. It is safe for concurrent use.
type ReturnPathCache struct {
	lookup    func(ctx context.Context, domain string) (string, error)
	ttl       time.Duration
	negatives bool
	now       func() time.Time

	mu sync.Mutex
	m  map[string]cachedReturnPath
}

type cachedReturnPath struct {
	tenant string
	at     time.Time
}

// ReturnPathCacheOptions configures NewReturnPathCache.
type ReturnPathCacheOptions struct {
	TTL time.Duration // 0: DefaultReturnPathTTL
	// FreshNegatives asks the ledger again for every domain without a
	// verified custom return path. The inbound listener wants it: a
	// worker may start writing bounces.<domain> as soon as its own cache
	// sees the domain verified, and a DSN to it must not meet a stale
	// "no" here and be refused for good. Its lookups follow a tag that
	// verified, so strangers cannot make it query.
	FreshNegatives bool
}

// NewReturnPathCache caches s.ReturnPathTenant.
func NewReturnPathCache(s *Store, opts ReturnPathCacheOptions) *ReturnPathCache {
	if opts.TTL <= 0 {
		opts.TTL = DefaultReturnPathTTL
	}
	return &ReturnPathCache{lookup: s.ReturnPathTenant, ttl: opts.TTL, negatives: !opts.FreshNegatives, now: time.Now,
		m: map[string]cachedReturnPath{}}
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
	if tenant == "" && !c.negatives {
		return "", nil
	}
	c.mu.Lock()
	if len(c.m) >= maxReturnPathDomains {
		clear(c.m)
	}
	c.m[domain] = cachedReturnPath{tenant: tenant, at: now}
	c.mu.Unlock()
	return tenant, nil
}
