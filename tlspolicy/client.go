package tlspolicy

import (
	"bufio"
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailferry/mailferry/smtpclient"
	"github.com/mailferry/mailferry/store"
)

// Values of tls_policy, per attempt.
const (
	PolicyNone       = "none"
	PolicyMTASTS     = "mta-sts"
	PolicyDANE       = "dane"
	PolicyRequireTLS = "requiretls"
)

// Inner is the SMTP client the policy layer wraps (*smtpclient.Client).
type Inner interface {
	Deliver(ctx context.Context, hosts []smtpclient.Host, env smtpclient.Envelope) smtpclient.Attempt
	CloseIdle()
	SweepIdle()
}

// Cache is where policies and TLS-RPT counts live (*store.Store): shared
// by every worker.
type Cache interface {
	STSPolicy(ctx context.Context, domain string) (*store.STSPolicy, error)
	RefreshSTSPolicy(ctx context.Context, domain string, refresh func(*store.STSPolicy) (*store.STSPolicy, error)) (*store.STSPolicy, error)
	AddTLSResultCounts(ctx context.Context, counts []store.TLSResultCount) error
	STSPoliciesDue(ctx context.Context, now time.Time, refresh time.Duration, limit int) ([]string, error)
}

// Options configure a Client.
type Options struct {
	// Inner delivers; it may be nil in a Client used only to Refresh.
	Inner Inner
	Cache Cache
	// MTASTS turns MTA-STS on (MAILFERRY_MTA_STS, default true).
	MTASTS bool
	// DNSSEC turns DANE on (MAILFERRY_DNSSEC, default false): DNSServer
	// must then be a validating resolver on a trusted path (dane.go).
	DNSSEC bool
	// DNSServer is "host:port" (MAILFERRY_DNS_SERVER); "" reads ResolvConf
	// (default /etc/resolv.conf).
	DNSServer, ResolvConf string
	// AllowPrivate lets policy fetches reach private addresses (tests).
	AllowPrivate bool
	// RootCAs verify policy servers; nil is the system pool (SSL_CERT_FILE).
	RootCAs *x509.CertPool
	// HTTPSPort, unless 0, replaces 443 for policy fetches (tests).
	HTTPSPort int
	// FetchTimeout bounds a policy fetch and each DNS query; default 20s.
	FetchTimeout time.Duration
	// Refresh is how long a cached policy is used before it is fetched
	// again although its id did not change (RFC 8461 10.2: refresh before
	// max_age runs out); default 24h, capped at half of max_age.
	Refresh time.Duration
	// Memo is how long one process reuses a domain's MTA-STS lookup
	// (memo.go); default 1m, negative: every attempt looks.
	Memo   time.Duration
	Logger *slog.Logger
	// Registerer takes mailferry_tls_policy_total; nil: not registered.
	Registerer prometheus.Registerer
	Now        func() time.Time
}

// Client applies TLS policies around an SMTP client; it implements
// relay.Client.
type Client struct {
	opts   Options
	res    *resolver
	fetch  *fetcher
	counts *prometheus.CounterVec
	memo   *memo
	tally  tally // TLS-RPT results not yet written: FlushCounts, RunCounts
}

// New checks opts.
func New(opts Options) (*Client, error) {
	if opts.Cache == nil {
		return nil, errors.New("tlspolicy: Cache is required")
	}
	if opts.FetchTimeout <= 0 {
		opts.FetchTimeout = 20 * time.Second
	}
	if opts.Refresh <= 0 {
		opts.Refresh = 24 * time.Hour
	}
	if opts.Memo == 0 {
		opts.Memo = time.Minute
	}
	if opts.ResolvConf == "" {
		opts.ResolvConf = "/etc/resolv.conf"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	res, err := newResolver(opts.DNSServer, opts.ResolvConf, opts.FetchTimeout)
	if err != nil {
		return nil, fmt.Errorf("tlspolicy: %w", err)
	}
	c := &Client{opts: opts, res: res, fetch: newFetcher(res, opts.AllowPrivate, opts.RootCAs, opts.HTTPSPort, opts.FetchTimeout),
		memo: newMemo(opts.Memo, 100_000),
		counts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailferry_tls_policy_total",
			Help: "Delivery attempts by TLS policy and result: success (TLS as the policy asks), failure (a host refused or, in MTA-STS testing mode, a host that would have been).",
		}, []string{"policy", "result"})}
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(c.counts); err != nil {
			return nil, fmt.Errorf("tlspolicy: register metrics: %w", err)
		}
	}
	return c, nil
}

// CloseIdle and SweepIdle pass through to the inner client.
func (c *Client) CloseIdle() { c.opts.Inner.CloseIdle() }
func (c *Client) SweepIdle() { c.opts.Inner.SweepIdle() }

// TrimIdle passes through to the inner client when it has the method
// (*smtpclient.Client does): relay's destination leases count idle
// connections through it.
func (c *Client) TrimIdle(hosts []string, keep int) {
	if t, ok := c.opts.Inner.(interface{ TrimIdle([]string, int) }); ok {
		t.TrimIdle(hosts, keep)
	}
}

// Deliver looks up the destination's policy, narrows the hosts and sets
// the TLS requirement, then delivers through the inner client.
func (c *Client) Deliver(ctx context.Context, hosts []smtpclient.Host, env smtpclient.Envelope) smtpclient.Attempt {
	domain := domainOf(env.To)
	requireTLS := env.TLS != nil && env.TLS.RequireTLS
	// RFC 8689 5: with REQUIRETLS the TLS-Required header is ignored.
	optOut := !requireTLS && tlsRequiredNo(env.Body)
	log := c.opts.Logger.With("domain", domain)
	if optOut {
		log.InfoContext(ctx, "TLS-Required: No: MTA-STS and DANE set aside for this message (RFC 8689 5)")
	}
	label, rptType := PolicyNone, ""
	if c.opts.DNSSEC && !optOut && domain != "" {
		tlsa, err := c.daneHosts(ctx, domain, hosts)
		if err != nil {
			// RFC 7672 2.1: a bogus or failed lookup is no licence to
			// send without DANE; wait for the zone or resolver to recover.
			enh, typ := "4.4.3", ""
			if errors.Is(err, errBogus) {
				enh, typ = "4.7.5", resultDNSSECInvalid
			}
			att := deferAll(env, enh, &smtpclient.TLSError{Type: cmp.Or(typ, smtpclient.TLSValidationFailure), Err: fmt.Errorf("DANE lookup for %s: %w", domain, err)})
			att.TLSPolicy, att.TLSFailure = PolicyDANE, typ
			c.record(ctx, log, domain, PolicyDANE, "tlsa", att, firstHost(hosts))
			return att
		}
		if len(tlsa) > 0 {
			// RFC 8461 2: DANE takes precedence over MTA-STS. Only the hosts
			// with usable TLSA records are used, each verified against them
			// (stricter than RFC 7672 2.2, which lets a host without TLSA
			// records take mail opportunistically).
			var kept []smtpclient.Host
			for _, h := range hosts {
				if tlsa[h.Name] != nil {
					kept = append(kept, h)
				}
			}
			hosts, label, rptType = kept, PolicyDANE, "tlsa"
			env.TLS = &smtpclient.TLSRequirement{RequireTLS: requireTLS, Verify: func(host string, chain []*x509.Certificate) error {
				return VerifyDANE(host, chain, tlsa[host], c.opts.Now())
			}}
		}
	}
	var pol *store.STSPolicy
	if c.opts.MTASTS && !optOut && domain != "" && label == PolicyNone {
		p, err := c.stsPolicy(ctx, domain)
		if err != nil {
			// The shared cache cannot be read: a policy may be in it, so
			// wait rather than risk plaintext.
			att := deferAll(env, "4.3.0", fmt.Errorf("MTA-STS policy of %s: %w", domain, err))
			att.TLSPolicy = PolicyMTASTS
			return att
		}
		if p != nil && p.Mode != ModeNone {
			pol = p
		}
	}
	policy := Policy{}
	if pol != nil {
		label, rptType = PolicyMTASTS, "sts"
		policy = Policy{Mode: pol.Mode, MX: pol.MX, MaxAge: pol.MaxAge}
	}
	if pol != nil && pol.Mode == ModeEnforce {
		// RFC 8461 4.1, 5: only MX hosts the policy names, only over TLS
		// whose certificate verifies for the MX name (RFC 8461 4.2).
		var kept []smtpclient.Host
		for _, h := range hosts {
			if policy.Matches(h.Name) {
				kept = append(kept, h)
			}
		}
		if len(kept) == 0 {
			att := deferAll(env, "4.7.5", &smtpclient.TLSError{Type: smtpclient.TLSValidationFailure,
				Err: fmt.Errorf("no MX host of %s matches its MTA-STS policy (RFC 8461 4.1)", domain)})
			att.TLSPolicy, att.TLSFailure = label, smtpclient.TLSValidationFailure
			c.record(ctx, log, domain, label, rptType, att, firstHost(hosts))
			return att
		}
		hosts = kept
		env.TLS = &smtpclient.TLSRequirement{RequireTLS: requireTLS}
	}
	if requireTLS && label == PolicyNone {
		label = PolicyRequireTLS // WebPKI verification, no domain policy
	}
	att := c.opts.Inner.Deliver(ctx, hosts, env)
	att.TLSPolicy, att.TLSOptOut = label, optOut
	if pol != nil && pol.Mode == ModeTesting && att.Host != "" {
		// RFC 8461 5: deliver as before, and report what enforce would
		// have refused.
		switch {
		case !policy.Matches(att.Host):
			att.TLSFailure = smtpclient.TLSValidationFailure
		case att.TLS == nil:
			att.TLSFailure = smtpclient.TLSStartTLSNotSupported
		case !att.TLS.Verified:
			att.TLSFailure = smtpclient.TLSCertNotTrusted
		}
	}
	mx := att.Host
	if mx == "" && len(att.Tried) > 0 {
		mx = att.Tried[len(att.Tried)-1].Host
	}
	c.record(ctx, log, domain, label, rptType, att, mx)
	if pol != nil && att.TLSFailure != "" {
		log.WarnContext(ctx, "MTA-STS policy failure", "mode", pol.Mode, "failure", att.TLSFailure, "mx", att.Host)
	}
	return att
}

// record counts the attempt in the metrics and, under a policy TLS-RPT
// reports on (rptType "sts" or "tlsa", RFC 8460 4.4), in the day's counts
// against mx.
func (c *Client) record(ctx context.Context, log *slog.Logger, domain, label, rptType string, att smtpclient.Attempt, mx string) {
	result := "success"
	switch {
	case att.TLSFailure != "":
		result = "failure"
	case att.Host == "":
		return // no host reached: nothing about TLS to say
	case att.TLS == nil || label != PolicyNone && !att.TLS.Verified:
		result = "failure"
	}
	c.counts.WithLabelValues(label, result).Inc()
	if rptType == "" {
		return
	}
	result = att.TLSFailure
	if result == smtpclient.TLSNoRequireTLS {
		result = "" // the TLS session met the policy; REQUIRETLS is no TLS-RPT matter
	}
	c.count(c.opts.Now(), domain, rptType, mx, result)
}

// stsPolicy returns domain's MTA-STS policy in force, nil if none.
func (c *Client) stsPolicy(ctx context.Context, domain string) (*store.STSPolicy, error) {
	now := c.opts.Now()
	if p, ok := c.memo.get(domain, now); ok {
		return p, nil
	}
	p, err := c.lookupSTSPolicy(ctx, domain, now)
	if err != nil {
		return nil, err // not memoised: the next attempt asks again
	}
	c.memo.put(domain, p, now)
	return p, nil
}

// lookupSTSPolicy asks DNS and the shared cache, and fetches the policy
// when the record's id is new or the cached copy is due (RFC 8461 3.3).
func (c *Client) lookupSTSPolicy(ctx context.Context, domain string, now time.Time) (*store.STSPolicy, error) {
	var rec Record
	haveRec := false
	txts, err := c.res.txt(ctx, "_mta-sts."+domain)
	if err == nil {
		rec, err = ParseRecords(txts)
		haveRec = err == nil
	}
	if err != nil && !errors.Is(err, errNoRecord) && !errors.Is(err, errNXDomain) {
		c.opts.Logger.DebugContext(ctx, "MTA-STS record", "domain", domain, "error", err)
	}
	cached, err := c.opts.Cache.STSPolicy(ctx, domain)
	if err != nil {
		return nil, err
	}
	valid := func(p *store.STSPolicy) bool { return p != nil && now.Before(p.ExpiresAt) }
	current := func(p *store.STSPolicy) bool {
		return valid(p) && p.ID == rec.ID && now.Sub(p.CheckedAt) < c.refreshAfter(p)
	}
	if !haveRec {
		// RFC 8461 5.1: a record that vanished (or a DNS failure) does not
		// end a cached policy before its max_age.
		if valid(cached) {
			return cached, nil
		}
		return nil, nil
	}
	if current(cached) {
		return cached, nil
	}
	p, err := c.opts.Cache.RefreshSTSPolicy(ctx, domain, func(cur *store.STSPolicy) (*store.STSPolicy, error) {
		if current(cur) {
			return nil, nil // another worker fetched it while we waited
		}
		fctx, cancel := context.WithTimeout(ctx, c.opts.FetchTimeout)
		defer cancel()
		pol, err := c.fetch.fetch(fctx, domain)
		if err != nil {
			// RFC 8461 5.1: without a new policy the cached one (if still
			// valid) applies; without either, no MTA-STS.
			c.opts.Logger.WarnContext(ctx, "MTA-STS policy fetch failed", "domain", domain, "error", err)
			c.count(now, domain, "sts", "", fetchResultType(err))
			return nil, nil
		}
		return &store.STSPolicy{Domain: domain, ID: rec.ID, Mode: pol.Mode, MX: pol.MX, MaxAge: pol.MaxAge,
			FetchedAt: now, ExpiresAt: now.Add(pol.MaxAge), CheckedAt: now}, nil
	})
	if err != nil {
		return nil, err
	}
	if valid(p) {
		return p, nil
	}
	return nil, nil
}

func (c *Client) refreshAfter(p *store.STSPolicy) time.Duration {
	return min(c.opts.Refresh, p.MaxAge/2)
}

// resultDNSSECInvalid is RFC 8460 4.3.2's result type for a bogus answer.
const resultDNSSECInvalid = "dnssec-invalid"

func firstHost(hosts []smtpclient.Host) string {
	if len(hosts) == 0 {
		return ""
	}
	return hosts[0].Name
}

func domainOf(to []string) string {
	if len(to) == 0 {
		return ""
	}
	return strings.ToLower(to[0][strings.LastIndexByte(to[0], '@')+1:])
}

// tlsRequiredNo reports whether the message header has "TLS-Required: No"
// (RFC 8689 5). Only the header is read, at most 256 KB of it.
func tlsRequiredNo(body smtpclient.Body) bool {
	if body == nil {
		return false
	}
	r, err := body()
	if err != nil {
		return false
	}
	br := bufio.NewReaderSize(r, 4096)
	read := 0
	for read < 256<<10 {
		line, err := br.ReadString('\n')
		read += len(line)
		t := strings.TrimRight(line, "\r\n")
		if t == "" {
			return false // end of header
		}
		if k, v, ok := strings.Cut(t, ":"); ok && strings.EqualFold(strings.TrimSpace(k), "TLS-Required") {
			return strings.EqualFold(strings.TrimSpace(v), "No")
		}
		if err != nil {
			return false
		}
	}
	return false
}

// deferAll is an attempt that reached no host: every recipient deferred
// with enhanced code enh.
func deferAll(env smtpclient.Envelope, enh string, err error) smtpclient.Attempt {
	att := smtpclient.Attempt{Started: time.Now(), Results: make([]smtpclient.Result, len(env.To))}
	for i := range att.Results {
		att.Results[i] = smtpclient.Result{Enhanced: enh, Err: err}
	}
	return att
}
