// Package config reads Mailferry's settings from the environment once, at
// start, into typed values. Every bad variable is reported, not just the
// first, each naming the variable and what is wrong with it.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mailferry/mailferry/lease"
)

// Config is every setting of the mailferry binary. Field comments name the
// environment variable and its default.
type Config struct {
	HTTPAddr    string   // MAILFERRY_HTTP_ADDR, ":8080"
	RedisURL    *url.URL // MAILFERRY_REDIS_URL, "redis://127.0.0.1:6379/0"; in cluster mode seeds in addr= parameters
	RedisMode   string   // MAILFERRY_REDIS_MODE, "single" or "cluster"
	DatabaseURL *url.URL // MAILFERRY_DATABASE_URL, "postgres://127.0.0.1:5432/mailferry"
	Hostname    string   // MAILFERRY_HOSTNAME, the host name
	DNSServer   string   // MAILFERRY_DNS_SERVER, "" = system resolver
	SMTPPort    int      // MAILFERRY_SMTP_PORT, 25
	Smarthost   *url.URL // MAILFERRY_SMARTHOST, nil = direct MX delivery

	// TLS policy (README.md, TLS policy).
	MTASTS bool // MAILFERRY_MTA_STS, true: apply recipient domains' MTA-STS policies (RFC 8461)
	DNSSEC bool // MAILFERRY_DNSSEC, false: trust the AD bit of MAILFERRY_DNS_SERVER and apply DANE (RFC 7672)
	// TLSRPTFrom is MAILFERRY_TLSRPT_FROM, none: the sender of the daily
	// TLS-RPT reports (RFC 8460); "" sends none.
	TLSRPTFrom string

	AllowPrivateDestinations bool            // MAILFERRY_ALLOW_PRIVATE_DESTINATIONS, false
	RetrySchedule            []time.Duration // MAILFERRY_RETRY_SCHEDULE, 1m,5m,15m,30m,1h,2h,4h
	MaxQueueAge              time.Duration   // MAILFERRY_MAX_QUEUE_AGE, 120h
	MaxMessageBytes          int64           // MAILFERRY_MAX_MESSAGE_BYTES, 26214400
	MaxRecipients            int             // MAILFERRY_MAX_RECIPIENTS, 1000
	MaxBatch                 int             // MAILFERRY_MAX_BATCH, 100 messages per POST /v1/messages/batch
	MaxBytesInFlight         int64           // MAILFERRY_MAX_BYTES_IN_FLIGHT, 134217728 (128 MiB), message bytes held by API and submission at once
	WorkerConcurrency        int             // MAILFERRY_WORKER_CONCURRENCY, 256
	WorkerPerDomain          int             // MAILFERRY_WORKER_PER_DOMAIN, 32: per destination (next hop)
	SmarthostConnections     int             // MAILFERRY_SMARTHOST_CONNECTIONS, 50
	RateLimit                int             // MAILFERRY_RATE_LIMIT, 100 requests (API) and messages (SMTP) a second per API key, shared by the fleet (burst 2×); 0 = off
	SecretKey                []byte          // MAILFERRY_SECRET_KEY, none

	SubmissionAddr       string // MAILFERRY_SUBMISSION_ADDR, ":587"
	SubmissionsAddr      string // MAILFERRY_SUBMISSIONS_ADDR, ":465"
	TLSCert              string // MAILFERRY_TLS_CERT
	TLSKey               string // MAILFERRY_TLS_KEY
	SubmissionHideClient bool   // MAILFERRY_SUBMISSION_HIDE_CLIENT, false: the Received field leaves out the client's address
	SubmissionMaxPerIP   int    // MAILFERRY_SUBMISSION_MAX_PER_IP, 10 open connections from one client address (IPv6: /64)
	HTTPMaxConnections   int    // MAILFERRY_HTTP_MAX_CONNECTIONS, 4096 open connections on MAILFERRY_HTTP_ADDR

	BounceDomain string // MAILFERRY_BOUNCE_DOMAIN, none: VERP return paths at this domain; "" = envelope sender as stored
	InboundAddr  string // MAILFERRY_INBOUND_ADDR, ":25": listener for DSNs and complaints; "" = off
	FBLAddress   string // MAILFERRY_FBL_ADDRESS, none: address at BounceDomain that takes ARF complaints
	BounceRules  string // MAILFERRY_BOUNCE_RULES, none: file of classification rules tried before the embedded ones

	AutoMigrate bool   // MAILFERRY_AUTO_MIGRATE, true
	LogLevel    string // MAILFERRY_LOG_LEVEL, "info"
	LogFormat   string // MAILFERRY_LOG_FORMAT, "json" (or "text")
	QueueShards int    // MAILFERRY_QUEUE_SHARDS, 1

	VisibilityTimeout time.Duration // MAILFERRY_VISIBILITY_TIMEOUT, 30s
	// Leases are every lease timing, derived from VisibilityTimeout and
	// checked here, once, for every command.
	Leases            lease.Timing
	ReconcileInterval time.Duration // MAILFERRY_RECONCILE_INTERVAL, 5m
	AttemptRetention  time.Duration // MAILFERRY_ATTEMPT_RETENTION, 2160h (90 days)

	SoftBounceLimit int // MAILFERRY_SOFT_BOUNCE_LIMIT, 5 soft failures in a row across messages suppress an address; 0 = never

	WebhookRetrySchedule []time.Duration // MAILFERRY_WEBHOOK_RETRY_SCHEDULE, 5s,5m,30m,2h,5h,10h,10h
	EventRetention       time.Duration   // MAILFERRY_EVENT_RETENTION, 720h (30 days)

	// Sending domains (README.md, Onboarding a sending domain).
	DKIMZone              string        // MAILFERRY_DKIM_ZONE, none: DKIM delegated by CNAME to this zone; "" = direct TXT records
	DKIMZoneAddr          string        // MAILFERRY_DKIM_ZONE_ADDR, none: serve MAILFERRY_DKIM_ZONE authoritatively on this host:port (UDP and TCP)
	SPFInclude            string        // MAILFERRY_SPF_INCLUDE, none: the include: tenants add to their SPF record
	RequireVerifiedDomain bool          // MAILFERRY_REQUIRE_VERIFIED_DOMAIN, false
	DKIMRetireAfter       time.Duration // MAILFERRY_DKIM_RETIRE_AFTER, 168h
	DKIMRotateEvery       time.Duration // MAILFERRY_DKIM_ROTATE_EVERY, 0 = never
	DomainCheckInterval   time.Duration // MAILFERRY_DOMAIN_CHECK_INTERVAL, 1h
	// Scale-out: poolers, fleet-wide limits, shaping (README.md, Scale-out).
	DatabasePooler    string   // MAILFERRY_DATABASE_POOLER, "none" (or "pgbouncer": transaction pooling in front of PostgreSQL)
	DatabaseDirectURL *url.URL // MAILFERRY_DATABASE_DIRECT_URL, none: PostgreSQL itself, for LISTEN; unset behind a pooler, key revocation is polled
	TenantDailyQuota  int      // MAILFERRY_TENANT_DAILY_QUOTA, 0 = none: messages a tenant may send a UTC day
	ShapingFile       string   // MAILFERRY_SHAPING_FILE, none: YAML of per-destination limits, merged over the built-in ones
}

// Var names one environment variable with its default, for help texts.
type Var struct{ Name, Default, Meaning string }

// Vars lists every variable Load reads.
func Vars() []Var {
	return []Var{
		{"MAILFERRY_HTTP_ADDR", ":8080", "API, /metrics, /healthz, /readyz"},
		{"MAILFERRY_REDIS_URL", "redis://127.0.0.1:6379/0", "queue"},
		{"MAILFERRY_DATABASE_URL", "postgres://127.0.0.1:5432/mailferry", "ledger"},
		{"MAILFERRY_HOSTNAME", "host name", "EHLO name, Message-ID domain"},
		{"MAILFERRY_DNS_SERVER", "system resolver", "host:port of the resolver for MX/A/AAAA/TXT"},
		{"MAILFERRY_SMTP_PORT", "25", "port dialled on recipient MX hosts"},
		{"MAILFERRY_SMARTHOST", "none", "smtp://user:pass@host:port or smtps://…: relay everything through it"},
		{"MAILFERRY_ALLOW_PRIVATE_DESTINATIONS", "false", "permit loopback/private/link-local MX addresses (tests only)"},
		{"MAILFERRY_RETRY_SCHEDULE", "1m,5m,15m,30m,1h,2h,4h", "delays between attempts; the last repeats"},
		{"MAILFERRY_MAX_QUEUE_AGE", "120h", "after this a deferred recipient bounces as expired"},
		{"MAILFERRY_MAX_MESSAGE_BYTES", "26214400", "larger messages are refused with 413"},
		{"MAILFERRY_MAX_RECIPIENTS", "1000", "recipients per message (to+cc+bcc)"},
		{"MAILFERRY_MAX_BATCH", "100", "messages per POST /v1/messages/batch; more is refused with 422"},
		{"MAILFERRY_MAX_BYTES_IN_FLIGHT", "134217728", "message bytes the API and submission hold at once (128 MiB, for a 512 MiB pod); beyond it 503 or SMTP 452 4.3.1"},
		{"MAILFERRY_WORKER_CONCURRENCY", "256", "SMTP transactions in flight per worker process"},
		{"MAILFERRY_WORKER_PER_DOMAIN", "32", "most transactions in flight to one destination (an MX host, shared by every domain it serves), over every worker"},
		{"MAILFERRY_SMARTHOST_CONNECTIONS", "50", "most transactions in flight to MAILFERRY_SMARTHOST, over every worker"},
		{"MAILFERRY_RATE_LIMIT", "100", "API requests and SMTP messages a second per key, together, in bursts of twice that, over the fleet (GCRA in Redis; 0: off); beyond it 429 or SMTP 451 4.7.0"},
		{"MAILFERRY_SECRET_KEY", "none", "encrypts DKIM private keys at rest"},
		{"MAILFERRY_SUBMISSION_ADDR", ":587", "SMTP submission with STARTTLS (empty: off)"},
		{"MAILFERRY_SUBMISSIONS_ADDR", ":465", "SMTP submission with implicit TLS (empty: off)"},
		{"MAILFERRY_TLS_CERT", "none", "certificate file for submission"},
		{"MAILFERRY_TLS_KEY", "none", "private key file for submission"},
		{"MAILFERRY_SUBMISSION_HIDE_CLIENT", "false", "leave the client's IP address out of the Received field submission adds"},
		{"MAILFERRY_SUBMISSION_MAX_PER_IP", "10", "open submission connections from one client address (IPv6: one /64); beyond it 421 4.7.0"},
		{"MAILFERRY_MTA_STS", "true", "apply recipient domains' MTA-STS policies (RFC 8461): enforce means verified TLS to listed MX hosts or no delivery"},
		{"MAILFERRY_DNSSEC", "false", "DANE (RFC 7672): trust the AD bit of MAILFERRY_DNS_SERVER, which must be a validating resolver on a trusted path (a local unbound)"},
		{"MAILFERRY_TLSRPT_FROM", "none", "sender of the daily TLS-RPT reports (RFC 8460) to recipient domains that ask for them; empty: none"},
		{"MAILFERRY_HTTP_MAX_CONNECTIONS", "4096", "open connections on MAILFERRY_HTTP_ADDR; beyond it new ones wait to be accepted (at most half the open-file limit)"},
		{"MAILFERRY_BOUNCE_DOMAIN", "none", "VERP return paths at this domain (needs MAILFERRY_SECRET_KEY); unset: envelope sender = From address"},
		{"MAILFERRY_INBOUND_ADDR", ":25", "listener for DSNs and complaints (role inbound; on by default only with a bounce domain); empty: off"},
		{"MAILFERRY_FBL_ADDRESS", "none", "address at the bounce domain that takes ARF complaints"},
		{"MAILFERRY_BOUNCE_RULES", "none", "file of extra classification rules, tried before the embedded ones"},
		{"MAILFERRY_AUTO_MIGRATE", "true", "serve applies migrations at start"},
		{"MAILFERRY_LOG_LEVEL", "info", "debug, info, warn or error"},
		{"MAILFERRY_LOG_FORMAT", "json", "json or text"},
		{"MAILFERRY_REDIS_MODE", "single", "single: one Redis server; cluster: MAILFERRY_REDIS_URL is a Redis Cluster URL, seed nodes in addr= parameters (redis://h1:6379?addr=h2:6379&addr=h3:6379)"},
		{"MAILFERRY_QUEUE_SHARDS", "1", "Redis streams the queue is spread over, each its own hash tag and so its own Cluster slot (at most 256); on a cluster a few per primary"},
		{"MAILFERRY_VISIBILITY_TIMEOUT", "30s", "a job whose worker is silent this long goes to another worker; heartbeat (1/6) and recipient lease (1/2) follow from it"},
		{"MAILFERRY_RECONCILE_INTERVAL", "5m", "how often the queue is checked against PostgreSQL for lost jobs"},
		{"MAILFERRY_ATTEMPT_RETENTION", "2160h", "attempt history older than this is dropped, a month at a time (90 days)"},
		{"MAILFERRY_SOFT_BOUNCE_LIMIT", "5", "consecutive soft failures across messages before the address is suppressed (0: never)"},
		{"MAILFERRY_WEBHOOK_RETRY_SCHEDULE", "5s,5m,30m,2h,5h,10h,10h", "delays between webhook attempts; the last repeats until the delivery is 3 days old, then it is given up"},
		{"MAILFERRY_EVENT_RETENTION", "720h", "events (the /v1/events feed, webhook deliveries and their history) older than this are deleted (30 days)"},
		{"MAILFERRY_DKIM_ZONE", "none", "zone the operator publishes DKIM keys in: tenants' DKIM records are CNAMEs to it and rotate with no change on their side; unset: direct TXT records"},
		{"MAILFERRY_DKIM_ZONE_ADDR", "none", "host:port (UDP and TCP) where serve answers for MAILFERRY_DKIM_ZONE from the ledger, as its authoritative server"},
		{"MAILFERRY_SPF_INCLUDE", "none", "domain whose SPF record lists the sending addresses; tenants merge include:<it> into their SPF record"},
		{"MAILFERRY_REQUIRE_VERIFIED_DOMAIN", "false", "refuse mail (403) from a From domain that is not a verified sending domain of the key's tenant"},
		{"MAILFERRY_DKIM_RETIRE_AFTER", "168h", "after a rotation switches signing, the old DKIM key stays published this long, then is retired"},
		{"MAILFERRY_DKIM_ROTATE_EVERY", "none", "rotate every sending domain's DKIM keys when they are this old (unset: only on request)"},
		{"MAILFERRY_DOMAIN_CHECK_INTERVAL", "1h", "how often the scheduler re-checks each sending domain's DNS records"},
		{"MAILFERRY_DATABASE_POOLER", "none", "pgbouncer: MAILFERRY_DATABASE_URL is PgBouncer in transaction pooling mode (no named prepared statements)"},
		{"MAILFERRY_DATABASE_DIRECT_URL", "none", "PostgreSQL itself, bypassing the pooler, for the LISTEN that revokes API keys at once; unset behind a pooler: revocation is polled, within 1s"},
		{"MAILFERRY_TENANT_DAILY_QUOTA", "0", "messages each tenant may send per UTC day, over the fleet (0: no quota); beyond it 429 with Retry-After at midnight UTC"},
		{"MAILFERRY_SHAPING_FILE", "none", "YAML file of per-destination limits and automation rules, over the built-in ones (mailferry shaping show)"},
	}
}

// Load reads the configuration through lookup (os.LookupEnv in main, a map
// in tests). It takes a lookup rather than a getenv because an empty
// variable differs from an unset one: MAILFERRY_SUBMISSION_ADDR="" turns
// submission off. It returns every problem found, joined.
func Load(lookup func(string) (string, bool)) (Config, error) {
	p := parser{lookup: lookup}
	host, _ := os.Hostname()
	c := Config{
		HTTPAddr:                 p.addr("MAILFERRY_HTTP_ADDR", ":8080", false),
		RedisURL:                 p.url("MAILFERRY_REDIS_URL", "redis://127.0.0.1:6379/0", "redis", "rediss"),
		RedisMode:                p.oneOf("MAILFERRY_REDIS_MODE", "single", "single", "cluster"),
		DatabaseURL:              p.url("MAILFERRY_DATABASE_URL", "postgres://127.0.0.1:5432/mailferry", "postgres", "postgresql"),
		Hostname:                 p.hostname("MAILFERRY_HOSTNAME", host),
		DNSServer:                p.addr("MAILFERRY_DNS_SERVER", "", true),
		SMTPPort:                 p.intRange("MAILFERRY_SMTP_PORT", 25, 1, 65535),
		Smarthost:                p.optionalURL("MAILFERRY_SMARTHOST", "smtp", "smtps"),
		MTASTS:                   p.boolean("MAILFERRY_MTA_STS", true),
		DNSSEC:                   p.boolean("MAILFERRY_DNSSEC", false),
		TLSRPTFrom:               p.str("MAILFERRY_TLSRPT_FROM", ""),
		AllowPrivateDestinations: p.boolean("MAILFERRY_ALLOW_PRIVATE_DESTINATIONS", false),
		RetrySchedule:            p.durations("MAILFERRY_RETRY_SCHEDULE", "1m,5m,15m,30m,1h,2h,4h"),
		MaxQueueAge:              p.duration("MAILFERRY_MAX_QUEUE_AGE", 120*time.Hour),
		MaxMessageBytes:          int64(p.intRange("MAILFERRY_MAX_MESSAGE_BYTES", 26214400, 1024, 1<<30)),
		MaxRecipients:            p.intRange("MAILFERRY_MAX_RECIPIENTS", 1000, 1, 100000),
		MaxBatch:                 p.intRange("MAILFERRY_MAX_BATCH", 100, 1, 10000),
		SoftBounceLimit:          p.intRange("MAILFERRY_SOFT_BOUNCE_LIMIT", 5, 0, 1000000),
		MaxBytesInFlight:         int64(p.intRange("MAILFERRY_MAX_BYTES_IN_FLIGHT", 128<<20, 1024, 1<<40)),
		WorkerConcurrency:        p.intRange("MAILFERRY_WORKER_CONCURRENCY", 256, 1, 100000),
		WorkerPerDomain:          p.intRange("MAILFERRY_WORKER_PER_DOMAIN", 32, 1, 10000),
		SmarthostConnections:     p.intRange("MAILFERRY_SMARTHOST_CONNECTIONS", 50, 1, 10000),
		RateLimit:                p.intRange("MAILFERRY_RATE_LIMIT", 100, 0, 1000000),
		SecretKey:                p.secret("MAILFERRY_SECRET_KEY"),
		SubmissionAddr:           p.addr("MAILFERRY_SUBMISSION_ADDR", ":587", true),
		SubmissionsAddr:          p.addr("MAILFERRY_SUBMISSIONS_ADDR", ":465", true),
		TLSCert:                  p.str("MAILFERRY_TLS_CERT", ""),
		TLSKey:                   p.str("MAILFERRY_TLS_KEY", ""),
		SubmissionHideClient:     p.boolean("MAILFERRY_SUBMISSION_HIDE_CLIENT", false),
		SubmissionMaxPerIP:       p.intRange("MAILFERRY_SUBMISSION_MAX_PER_IP", 10, 1, 100000),
		HTTPMaxConnections:       p.intRange("MAILFERRY_HTTP_MAX_CONNECTIONS", 4096, 16, 10000000),
		BounceDomain:             p.optionalHostname("MAILFERRY_BOUNCE_DOMAIN"),
		InboundAddr:              p.addr("MAILFERRY_INBOUND_ADDR", ":25", true),
		FBLAddress:               p.str("MAILFERRY_FBL_ADDRESS", ""),
		BounceRules:              p.file("MAILFERRY_BOUNCE_RULES"),
		AutoMigrate:              p.boolean("MAILFERRY_AUTO_MIGRATE", true),
		LogLevel:                 p.oneOf("MAILFERRY_LOG_LEVEL", "info", "debug", "info", "warn", "error"),
		LogFormat:                p.oneOf("MAILFERRY_LOG_FORMAT", "json", "json", "text"),
		QueueShards:              p.intRange("MAILFERRY_QUEUE_SHARDS", 1, 1, 256),
		VisibilityTimeout:        p.durationAtLeast("MAILFERRY_VISIBILITY_TIMEOUT", 30*time.Second, time.Second),
		ReconcileInterval:        p.durationAtLeast("MAILFERRY_RECONCILE_INTERVAL", 5*time.Minute, time.Second),
		// A floor of a day catches a unit typo (90m for 90 days).
		AttemptRetention:     p.durationAtLeast("MAILFERRY_ATTEMPT_RETENTION", 90*24*time.Hour, 24*time.Hour),
		WebhookRetrySchedule: p.durations("MAILFERRY_WEBHOOK_RETRY_SCHEDULE", "5s,5m,30m,2h,5h,10h,10h"),
		// A floor of an hour catches a unit typo (720m for 720h) and keeps
		// events long enough for their webhooks' first retries.
		EventRetention: p.durationAtLeast("MAILFERRY_EVENT_RETENTION", 720*time.Hour, time.Hour),

		DKIMZone:              p.optionalHostname("MAILFERRY_DKIM_ZONE"),
		DKIMZoneAddr:          p.addr("MAILFERRY_DKIM_ZONE_ADDR", "", true),
		SPFInclude:            p.optionalHostname("MAILFERRY_SPF_INCLUDE"),
		RequireVerifiedDomain: p.boolean("MAILFERRY_REQUIRE_VERIFIED_DOMAIN", false),
		// Floors catch unit typos (168m for 168h): an old key retired
		// within minutes would fail mail still queued under it.
		DKIMRetireAfter:     p.durationAtLeast("MAILFERRY_DKIM_RETIRE_AFTER", 168*time.Hour, time.Hour),
		DKIMRotateEvery:     p.duration("MAILFERRY_DKIM_ROTATE_EVERY", 0),
		DomainCheckInterval: p.durationAtLeast("MAILFERRY_DOMAIN_CHECK_INTERVAL", time.Hour, time.Minute),
	}
	if c.DKIMZoneAddr != "" && c.DKIMZone == "" {
		p.fail("MAILFERRY_DKIM_ZONE_ADDR", "needs MAILFERRY_DKIM_ZONE: the zone it answers for")
	}
	if c.DKIMRotateEvery > 0 && c.DKIMRotateEvery < c.DKIMRetireAfter {
		p.fail("MAILFERRY_DKIM_ROTATE_EVERY", "%v is shorter than MAILFERRY_DKIM_RETIRE_AFTER (%v): a rotation would wait for the last one's keys to retire", c.DKIMRotateEvery, c.DKIMRetireAfter)
	}
	c.DatabasePooler = p.oneOf("MAILFERRY_DATABASE_POOLER", "none", "none", "pgbouncer")
	c.DatabaseDirectURL = p.optionalURL("MAILFERRY_DATABASE_DIRECT_URL", "postgres", "postgresql")
	c.TenantDailyQuota = p.intRange("MAILFERRY_TENANT_DAILY_QUOTA", 0, 0, 1<<31-1)
	c.ShapingFile = p.file("MAILFERRY_SHAPING_FILE")
	if t, err := lease.New(c.VisibilityTimeout); err != nil {
		p.errs = append(p.errs, err) // names the variable itself
	} else {
		c.Leases = t
	}
	if c.MaxBytesInFlight < c.MaxMessageBytes {
		// One message of the largest size must fit, or it would be told
		// to come back later for ever.
		p.fail("MAILFERRY_MAX_BYTES_IN_FLIGHT", "must be at least MAILFERRY_MAX_MESSAGE_BYTES (%d)", c.MaxMessageBytes)
	}
	if c.TLSRPTFrom != "" && (strings.Count(c.TLSRPTFrom, "@") != 1 || strings.ContainsAny(c.TLSRPTFrom, " <>\r\n")) {
		p.fail("MAILFERRY_TLSRPT_FROM", "want an address like tlsrpt@example.com")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		p.fail("MAILFERRY_TLS_CERT", "MAILFERRY_TLS_CERT and MAILFERRY_TLS_KEY must be set together")
	}
	p.bounces(&c)
	return c, errors.Join(p.errs...)
}

// bounces checks the bounce settings against each other: the VERP tag is
// an HMAC keyed by MAILFERRY_SECRET_KEY, and complaints arrive at the
// bounce domain, whose MX is the inbound listener.
func (p *parser) bounces(c *Config) {
	if c.BounceDomain != "" && c.SecretKey == nil {
		if p.getenv("MAILFERRY_SECRET_KEY") == "" { // a short key has its own error
			p.fail("MAILFERRY_BOUNCE_DOMAIN", "needs MAILFERRY_SECRET_KEY: it keys the tag that makes return paths unforgeable")
		}
	}
	if c.FBLAddress == "" {
		return
	}
	at := strings.LastIndexByte(c.FBLAddress, '@')
	switch {
	case c.BounceDomain == "":
		p.fail("MAILFERRY_FBL_ADDRESS", "needs MAILFERRY_BOUNCE_DOMAIN: complaints arrive at the inbound listener, the bounce domain's MX")
	case at <= 0 || strings.ContainsAny(c.FBLAddress, " <>\t\r\n"):
		p.fail("MAILFERRY_FBL_ADDRESS", "%q is not an address like fbl@%s", c.FBLAddress, c.BounceDomain)
	case !strings.EqualFold(c.FBLAddress[at+1:], c.BounceDomain):
		p.fail("MAILFERRY_FBL_ADDRESS", "%q is not at MAILFERRY_BOUNCE_DOMAIN %s", c.FBLAddress, c.BounceDomain)
	default:
		// RFC 5321 2.4: the domain is case-insensitive, the local part kept.
		c.FBLAddress = c.FBLAddress[:at+1] + strings.ToLower(c.FBLAddress[at+1:])
	}
}

type parser struct {
	lookup func(string) (string, bool)
	errs   []error
}

func (p *parser) getenv(name string) string {
	v, _ := p.lookup(name)
	return v
}

func (p *parser) fail(name, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
}

func (p *parser) str(name, def string) string {
	if v := strings.TrimSpace(p.getenv(name)); v != "" {
		return v
	}
	return def
}

func (p *parser) addr(name, def string, emptyOK bool) string {
	v, set := p.lookup(name)
	if !set {
		return def
	}
	v = strings.TrimSpace(v)
	if v == "" && emptyOK {
		return ""
	}
	if _, port, err := net.SplitHostPort(v); err != nil {
		p.fail(name, "%q is not host:port (%v)", v, err)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		p.fail(name, "%q has an invalid port", v)
	}
	return v
}

func (p *parser) url(name, def string, schemes ...string) *url.URL {
	v := p.str(name, def)
	u, err := url.Parse(v)
	if err != nil {
		p.fail(name, "not a URL: %v", redactErr(err))
		return nil
	}
	for _, s := range schemes {
		if u.Scheme == s {
			return u
		}
	}
	p.fail(name, "scheme %q is not one of %s", u.Scheme, strings.Join(schemes, ", "))
	return nil
}

func (p *parser) optionalURL(name string, schemes ...string) *url.URL {
	if strings.TrimSpace(p.getenv(name)) == "" {
		return nil
	}
	u := p.url(name, "", schemes...)
	if u != nil && u.Hostname() == "" {
		p.fail(name, "no host in %s", u.Redacted())
		return nil
	}
	return u
}

// redactErr drops the URL from a url.Error: it may hold a password.
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func (p *parser) hostname(name, def string) string {
	v := p.str(name, def)
	if v == "" {
		p.fail(name, "not set and the system host name is unknown")
		return ""
	}
	if !validHostname(v) {
		p.fail(name, "%q is not a host name", v)
	}
	return strings.ToLower(v)
}

// validHostname checks RFC 1123 2.1 labels.
func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// optionalHostname is a host name, or "" when unset.
func (p *parser) optionalHostname(name string) string {
	v := strings.TrimSuffix(p.str(name, ""), ".")
	if v == "" {
		return ""
	}
	if !validHostname(v) || !strings.Contains(v, ".") {
		p.fail(name, "%q is not a fully qualified host name", v)
		return ""
	}
	return strings.ToLower(v)
}

// file is the path of an existing regular file, or "" when unset; its
// contents are read and checked where they are used.
func (p *parser) file(name string) string {
	v := p.str(name, "")
	if v == "" {
		return ""
	}
	fi, err := os.Stat(v)
	switch {
	case err != nil:
		p.fail(name, "%v", err)
	case !fi.Mode().IsRegular():
		p.fail(name, "%s is not a regular file", v)
	}
	return v
}

func (p *parser) intRange(name string, def, lo, hi int) int {
	v := strings.TrimSpace(p.getenv(name))
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		p.fail(name, "%q is not a whole number", v)
		return def
	}
	if n < lo || n > hi {
		p.fail(name, "%d is outside %d..%d", n, lo, hi)
		return def
	}
	return n
}

func (p *parser) boolean(name string, def bool) bool {
	v := strings.TrimSpace(p.getenv(name))
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		p.fail(name, "%q is not true or false", v)
		return def
	}
	return b
}

func (p *parser) duration(name string, def time.Duration) time.Duration {
	v := strings.TrimSpace(p.getenv(name))
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		p.fail(name, "%q is not a positive duration like 90m or 120h", v)
		return def
	}
	return d
}

// durationAtLeast is duration with a floor: below it a loop would spin or
// a lease could not be renewed in time.
func (p *parser) durationAtLeast(name string, def, floor time.Duration) time.Duration {
	d := p.duration(name, def)
	if d < floor {
		p.fail(name, "%v is shorter than the minimum %v", d, floor)
		return def
	}
	return d
}

func (p *parser) durations(name, def string) []time.Duration {
	v := p.str(name, def)
	var out []time.Duration
	for i, part := range strings.Split(v, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(part))
		if err != nil || d <= 0 {
			p.fail(name, "item %d %q is not a positive duration like 5m", i+1, strings.TrimSpace(part))
			return nil
		}
		out = append(out, d)
	}
	return out
}

func (p *parser) oneOf(name, def string, allowed ...string) string {
	v := strings.ToLower(p.str(name, def))
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	p.fail(name, "%q is not one of %s", v, strings.Join(allowed, ", "))
	return def
}

// secret accepts at least 32 bytes of key material; it is hashed into an
// AES-256 key where it is used. The value itself never reaches an error.
func (p *parser) secret(name string) []byte {
	v := p.getenv(name)
	if v == "" {
		return nil
	}
	if len(v) < 32 {
		p.fail(name, "too short: use at least 32 characters (for example `openssl rand -base64 32`)")
		return nil
	}
	return []byte(v)
}
