package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/mailferry/mailferry/netguard"
	"github.com/mailferry/mailferry/smtpclient"
)

// Route errors, matched with errors.Is; RouteError says whether the failure
// is permanent.
var (
	// ErrNullMX: the domain publishes a null MX, it accepts no mail (RFC 7505).
	ErrNullMX = errors.New("domain accepts no mail (null MX, RFC 7505)")
	// ErrNoSuchDomain: the domain does not exist (NXDOMAIN).
	ErrNoSuchDomain = errors.New("domain does not exist")
	// ErrNoAddress: no mail host has an address (the client's sentinel too).
	ErrNoAddress = smtpclient.ErrNoAddress
	// ErrPrivateOnly: every address of every host was refused by the
	// private-destination guard (netguard), here or in the client.
	ErrPrivateOnly = smtpclient.ErrPrivateOnly
)

const (
	defaultLookupTimeout = 10 * time.Second
	defaultResolvConf    = "/etc/resolv.conf"
	// ednsSize is the UDP payload size we advertise (RFC 6891 6.2.5); 1232
	// avoids IP fragmentation on any path (DNS Flag Day 2020).
	ednsSize = 1232
	// maxCNAMEChain bounds following an alias chain inside one answer.
	maxCNAMEChain = 8
)

// RouteError is a routing failure for Domain. Permanent ones bounce the
// recipients at once (NXDOMAIN, null MX, private-only); others defer them.
type RouteError struct {
	Domain    string
	Permanent bool
	Enhanced  string // RFC 3463 code for the recipients' Result
	Err       error
}

func (e *RouteError) Error() string { return fmt.Sprintf("route %s: %v", e.Domain, e.Err) }
func (e *RouteError) Unwrap() error { return e.Err }

// Permanent reports whether err is a routing failure that will not change on
// retry.
func Permanent(err error) bool {
	var re *RouteError
	return errors.As(err, &re) && re.Permanent
}

// RouteResult turns a routing error into the Result each recipient of the
// domain gets, so callers record it like an SMTP outcome.
func RouteResult(err error) Result {
	var re *RouteError
	if !errors.As(err, &re) {
		return Result{Enhanced: enhDNSTemp, Err: err}
	}
	return Result{Enhanced: re.Enhanced, Permanent: re.Permanent, Err: err}
}

// RouterOptions configure a Router.
type RouterOptions struct {
	// DNSServer is the resolver's "host:port" (MAILFERRY_DNS_SERVER); ""
	// uses the nameservers of ResolvConf.
	DNSServer string
	// ResolvConf is read when DNSServer is ""; default /etc/resolv.conf.
	ResolvConf string
	// AllowPrivate keeps loopback, private and link-local addresses
	// (MAILFERRY_ALLOW_PRIVATE_DESTINATIONS; tests only).
	AllowPrivate bool
	// LookupTimeout bounds each DNS query; default 10s.
	LookupTimeout time.Duration
	// Rand returns a number in [0, n); it shuffles MX hosts of equal
	// preference. Default math/rand/v2.IntN; tests make it deterministic.
	Rand func(n int) int
	// DNSCacheSize bounds how many answers (one per name and type) the
	// Router keeps; default 10000. The least recently used go first.
	DNSCacheSize int
	// NoDNSCache turns the answer cache off: every lookup asks the server.
	// Concurrent lookups of one name still share a query.
	NoDNSCache bool
	// Now is the clock cache lifetimes are measured with; default
	// time.Now.
	Now func() time.Time
}

// Router finds where mail for a domain goes. It is safe for concurrent use.
//
// It caches DNS answers by their TTL (dnscache.go), so a queue full of mail
// for a few domains asks about each one now and then, not per delivery. The
// cache holds addresses as published: the private-destination guard
// filters them on every Route and Resolve.
type Router struct {
	servers      []string
	allowPrivate bool
	timeout      time.Duration
	intn         func(int) int
	now          func() time.Time
	cache        *dnsCache // nil when disabled
	flight       flightGroup
}

// NewRouter checks opts and, without DNSServer, reads the system resolver
// configuration once.
func NewRouter(opts RouterOptions) (*Router, error) {
	r := &Router{allowPrivate: opts.AllowPrivate, timeout: opts.LookupTimeout, intn: opts.Rand, now: opts.Now}
	if r.timeout <= 0 {
		r.timeout = defaultLookupTimeout
	}
	if r.intn == nil {
		r.intn = rand.IntN
	}
	if r.now == nil {
		r.now = time.Now
	}
	if opts.DNSCacheSize < 0 {
		return nil, fmt.Errorf("DNS cache size %d: want 0 (default) or more", opts.DNSCacheSize)
	}
	if !opts.NoDNSCache {
		r.cache = newDNSCache(cmp.Or(opts.DNSCacheSize, defaultDNSCacheSize))
	}
	if opts.DNSServer != "" {
		if _, _, err := net.SplitHostPort(opts.DNSServer); err != nil {
			return nil, fmt.Errorf("DNS server %q: want host:port: %w", opts.DNSServer, err)
		}
		r.servers = []string{opts.DNSServer}
		return r, nil
	}
	path := cmp.Or(opts.ResolvConf, defaultResolvConf)
	cfg, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("read resolver configuration: %w", err)
	}
	for _, s := range cfg.Servers {
		r.servers = append(r.servers, net.JoinHostPort(s, cfg.Port))
	}
	if len(r.servers) == 0 {
		return nil, fmt.Errorf("read resolver configuration: %s names no nameserver", path)
	}
	return r, nil
}

// Route returns the hosts that receive mail for domain, in the order to try
// them (RFC 5321 5.1), or a *RouteError.
func (r *Router) Route(ctx context.Context, domain string) ([]Host, error) {
	name, err := canonicalName(domain)
	if err != nil {
		return nil, &RouteError{Domain: domain, Permanent: true, Enhanced: enhNoDomain, Err: err}
	}
	fail := func(permanent bool, enh string, err error) ([]Host, error) {
		return nil, &RouteError{Domain: name, Permanent: permanent, Enhanced: enh, Err: err}
	}
	ans, err := r.lookup(ctx, name, dns.TypeMX)
	if err != nil {
		return fail(false, enhDNSTemp, fmt.Errorf("MX lookup: %w", err))
	}
	switch ans.rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return fail(true, enhNoDomain, fmt.Errorf("MX lookup: %w (NXDOMAIN)", ErrNoSuchDomain))
	default:
		return fail(false, enhDNSTemp, fmt.Errorf("MX lookup: %s", dns.RcodeToString[ans.rcode]))
	}

	var hosts []Host
	mxs := ans.mxs
	if len(mxs) == 1 && mxs[0].host == "." {
		// RFC 7505 3: a single MX "." says the domain takes no mail; RFC
		// 7505 4.1: do not try the implicit MX, bounce now.
		return fail(true, enhNullMX, ErrNullMX)
	}
	seen := make(map[string]bool)
	for _, mx := range mxs {
		host := strings.ToLower(strings.TrimSuffix(mx.host, "."))
		if host == "" || seen[host] {
			continue // "." beside real MX records is not usable; duplicates add nothing
		}
		seen[host] = true
		hosts = append(hosts, Host{Name: host, Preference: mx.pref})
	}
	implicit := len(mxs) == 0
	if implicit {
		// RFC 5321 5.1: no MX records (NOERROR, no data) → the domain itself
		// is the only host, "implicit MX" with preference 0.
		hosts = []Host{{Name: name}}
	}
	r.order(hosts)

	var (
		tempErr error
		dropped []string
		usable  []Host
	)
	for i, res := range r.resolveAll(ctx, hosts) {
		if res.err != nil && len(res.addrs) == 0 {
			tempErr = cmp.Or(tempErr, res.err)
			continue
		}
		h := hosts[i]
		h.Addrs, dropped = r.filter(res.addrs, dropped)
		if len(h.Addrs) > 0 {
			usable = append(usable, h)
		}
	}
	switch {
	case len(usable) > 0:
		return usable, nil
	case tempErr != nil:
		return fail(false, enhDNSTemp, tempErr)
	case len(dropped) > 0:
		return fail(true, enhNoRoute, fmt.Errorf("%w: %s", ErrPrivateOnly, strings.Join(dropped, "; ")))
	case implicit:
		// Neither MX nor address records: nothing will ever take the mail.
		return fail(true, enhNoRoute, fmt.Errorf("%w: no MX and no A/AAAA records", ErrNoAddress))
	default:
		// MX hosts that do not resolve may be a zone being fixed: retry.
		return fail(false, enhNoRouteTemp, fmt.Errorf("%w: MX hosts do not resolve", ErrNoAddress))
	}
}

// Resolve returns name's addresses as one Host, for a host named by
// configuration rather than by MX (a smarthost). The guard applies unless
// the Router allows private addresses.
func (r *Router) Resolve(ctx context.Context, name string) (Host, error) {
	n, err := canonicalName(name)
	if err != nil {
		return Host{}, &RouteError{Domain: name, Permanent: true, Enhanced: enhNoDomain, Err: err}
	}
	res := r.resolve(ctx, n)
	if res.err != nil && len(res.addrs) == 0 {
		return Host{}, &RouteError{Domain: n, Enhanced: enhDNSTemp, Err: res.err}
	}
	h := Host{Name: n}
	var dropped []string
	h.Addrs, dropped = r.filter(res.addrs, nil)
	switch {
	case len(h.Addrs) > 0:
		return h, nil
	case len(dropped) > 0:
		return Host{}, &RouteError{Domain: n, Permanent: true, Enhanced: enhNoRoute,
			Err: fmt.Errorf("%w: %s", ErrPrivateOnly, strings.Join(dropped, "; "))}
	}
	return Host{}, &RouteError{Domain: n, Enhanced: enhNoRouteTemp, Err: fmt.Errorf("%w: no A/AAAA records", ErrNoAddress)}
}

func canonicalName(domain string) (string, error) {
	name := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(domain), "."))
	if _, ok := dns.IsDomainName(name); !ok || name == "" {
		return "", fmt.Errorf("%w: %q is not a domain name", ErrNoSuchDomain, domain)
	}
	return name, nil
}

// order sorts hosts by preference, lowest first, and shuffles hosts of
// equal preference so load spreads as their owner intends (RFC 5321 5.1:
// "randomize them to spread the load").
func (r *Router) order(hosts []Host) {
	slices.SortStableFunc(hosts, func(a, b Host) int { return cmp.Compare(a.Preference, b.Preference) })
	for start := 0; start < len(hosts); {
		end := start + 1
		for end < len(hosts) && hosts[end].Preference == hosts[start].Preference {
			end++
		}
		for i := end - 1; i > start; i-- { // Fisher–Yates within the group
			j := start + r.intn(i-start+1)
			hosts[i], hosts[j] = hosts[j], hosts[i]
		}
		start = end
	}
}

// filter keeps the addresses the guard allows and appends a note for each
// one it drops.
func (r *Router) filter(addrs []netip.Addr, dropped []string) ([]netip.Addr, []string) {
	if r.allowPrivate {
		return addrs, dropped
	}
	var kept []netip.Addr
	for _, a := range addrs {
		if reason := netguard.Reason(a); reason != "" {
			dropped = append(dropped, a.String()+" is "+reason)
			continue
		}
		kept = append(kept, a)
	}
	return kept, dropped
}

// resolved is the outcome of the A and AAAA lookups of one host.
type resolved struct {
	addrs []netip.Addr
	err   error // temporary failure; nil for NXDOMAIN or no data
}

// resolveAll looks up every host at once: one slow name must not make the
// others wait for its timeout.
func (r *Router) resolveAll(ctx context.Context, hosts []Host) []resolved {
	out := make([]resolved, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Go(func() { out[i] = r.resolve(ctx, h.Name) })
	}
	wg.Wait()
	return out
}

// resolve queries A and AAAA of name in parallel (RFC 5321 5.1: a host's
// addresses of both families are candidates). IPv4 addresses come first:
// many deployments have no IPv6 route, and each failed address costs a
// connect attempt.
func (r *Router) resolve(ctx context.Context, name string) resolved {
	var v4, v6 resolved
	var wg sync.WaitGroup
	wg.Go(func() { v4 = r.addrs(ctx, name, dns.TypeA) })
	wg.Go(func() { v6 = r.addrs(ctx, name, dns.TypeAAAA) })
	wg.Wait()
	// A new slice: the cache shares v4.addrs and v6.addrs.
	addrs := slices.Concat(v4.addrs, v6.addrs)
	return resolved{addrs: addrs, err: errors.Join(v4.err, v6.err)}
}

func (r *Router) addrs(ctx context.Context, name string, qtype uint16) resolved {
	what := dns.TypeToString[qtype] + " " + name
	ans, err := r.lookup(ctx, name, qtype)
	if err != nil {
		return resolved{err: fmt.Errorf("%s: %w", what, err)}
	}
	switch ans.rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		// NXDOMAIN for an MX target: that host is skipped.
	default:
		return resolved{err: fmt.Errorf("%s: %s", what, dns.RcodeToString[ans.rcode])}
	}
	return resolved{addrs: ans.addrs}
}

// answers returns the records of qtype for name in resp, following the
// CNAME chain the resolver put in the answer (RFC 1034 3.6.2), so that an
// aliased MX target or domain still resolves.
func answers[T dns.RR](resp *dns.Msg, name string, qtype uint16) []T {
	owner := dns.Fqdn(name)
	var out []T
	for range maxCNAMEChain {
		next := ""
		for _, rr := range resp.Answer {
			if !strings.EqualFold(rr.Header().Name, owner) {
				continue
			}
			if rr.Header().Rrtype == qtype {
				if t, ok := rr.(T); ok {
					out = append(out, t)
				}
			} else if c, ok := rr.(*dns.CNAME); ok {
				next = c.Target
			}
		}
		if len(out) > 0 || next == "" {
			return out
		}
		owner = next
	}
	return out
}

// query asks each configured server in turn until one gives an answer that
// is not SERVFAIL or REFUSED; the last server's answer is returned either
// way so the caller sees its rcode.
func (r *Router) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(ednsSize, false)
	var errs []error
	for i, server := range r.servers {
		resp, err := r.exchange(ctx, m, server, "udp")
		if err == nil && resp.Truncated {
			// RFC 7766 5 / RFC 1035 4.2.1: a truncated UDP answer is
			// retried over TCP.
			resp, err = r.exchange(ctx, m, server, "tcp")
		}
		if err == nil {
			last := i == len(r.servers)-1
			if last || (resp.Rcode != dns.RcodeServerFailure && resp.Rcode != dns.RcodeRefused) {
				return resp, nil
			}
			err = errors.New(dns.RcodeToString[resp.Rcode])
		}
		errs = append(errs, fmt.Errorf("%s: %w", server, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// exchange runs one query with its own timeout: a resolver that never
// answers must cost a known time, like every other step of a delivery. miekg/dns derives socket deadlines from ctx's deadline only, so
// an AfterFunc closes the socket when ctx is cancelled earlier.
func (r *Router) exchange(ctx context.Context, m *dns.Msg, server, network string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	c := &dns.Client{Net: network, Timeout: r.timeout, UDPSize: ednsSize}
	conn, err := c.DialContext(ctx, server)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	resp, _, err := c.ExchangeWithConnContext(ctx, m, conn)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w: %w", ctx.Err(), err)
	}
	return resp, err
}
