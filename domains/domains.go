// Package domains onboards a tenant's sending domains: it makes their DKIM
// keys, says which DNS records to publish, checks them live through
// MAILFERRY_DNS_SERVER, re-checks them on a schedule (announcing changes as
// domain.verified and domain.failed events), and rotates DKIM keys,
// switching signing only once the new key shows in DNS.
package domains

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/store"
)

// Ledger is the part of the store domains use.
type Ledger interface {
	CreateDomain(ctx context.Context, d store.Domain, keys []store.DKIMKey) (store.Domain, error)
	GetDomain(ctx context.Context, tenant, name string) (store.Domain, error)
	ListDomains(ctx context.Context, tenant string) ([]store.Domain, error)
	DeleteDomain(ctx context.Context, tenant, name string) error
	DueDomains(ctx context.Context, cutoff time.Time, limit int) ([]store.Domain, error)
	SaveDomainCheck(ctx context.Context, c store.DomainCheck) error
	DomainKeys(ctx context.Context, domain string) ([]store.DomainKey, error)
	StartRotation(ctx context.Context, domain string, keys []store.DKIMKey) error
	PromoteKeys(ctx context.Context, domain string, retireAt time.Time) (bool, error)
	RetireKeys(ctx context.Context, now time.Time) (int64, error)
}

// DefaultRetireAfter is MAILFERRY_DKIM_RETIRE_AFTER's default: a week,
// longer than any retry schedule keeps a signed message queued.
const DefaultRetireAfter = 7 * 24 * time.Hour

// checkTimeout bounds one check of a domain, every lookup included.
const checkTimeout = 15 * time.Second

// DefaultCheckEvery is MAILFERRY_DOMAIN_CHECK_INTERVAL's default.
const DefaultCheckEvery = time.Hour

// Options configures a Service.
type Options struct {
	Ledger Ledger
	Sealer *dkim.Sealer // seals new private keys
	// DNSServer is MAILFERRY_DNS_SERVER; "" reads /etc/resolv.conf.
	DNSServer string
	// DKIMZone is MAILFERRY_DKIM_ZONE: when set, new domains delegate
	// their DKIM records to it by CNAME.
	DKIMZone string
	// SPFInclude is MAILFERRY_SPF_INCLUDE.
	SPFInclude string
	// BounceDomain is MAILFERRY_BOUNCE_DOMAIN.
	BounceDomain string
	// RetireAfter is MAILFERRY_DKIM_RETIRE_AFTER; default 168h.
	RetireAfter time.Duration
	// RotateEvery is MAILFERRY_DKIM_ROTATE_EVERY; 0: no automatic rotation.
	RotateEvery time.Duration
	// CheckEvery is how often Sweep re-checks a domain; default 1h.
	CheckEvery    time.Duration
	LookupTimeout time.Duration // per DNS query; default 5s
	Logger        *slog.Logger
	Now           func() time.Time
	Random        io.Reader // key material; default crypto/rand
}

// Service manages sending domains.
type Service struct {
	opts Options
	c    *checker
}

// Errors the API maps to statuses.
var (
	ErrInvalid = errors.New("invalid domain name")
	// ErrRetiring: delegated mode's other slot still holds the keys of
	// the previous rotation.
	ErrRetiring = errors.New("the previous keys are still retiring")
)

// New checks opts.
func New(opts Options) (*Service, error) {
	if opts.Ledger == nil || opts.Sealer == nil {
		return nil, errors.New("domains: Ledger and Sealer are required")
	}
	if opts.RetireAfter <= 0 {
		opts.RetireAfter = DefaultRetireAfter
	}
	if opts.CheckEvery <= 0 {
		opts.CheckEvery = DefaultCheckEvery
	}
	if opts.LookupTimeout <= 0 {
		opts.LookupTimeout = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Random == nil {
		opts.Random = rand.Reader
	}
	opts.DKIMZone = strings.ToLower(strings.TrimSuffix(opts.DKIMZone, "."))
	opts.SPFInclude = strings.ToLower(strings.TrimSuffix(opts.SPFInclude, "."))
	opts.BounceDomain = strings.ToLower(strings.TrimSuffix(opts.BounceDomain, "."))
	r, err := newResolver(opts.DNSServer, opts.LookupTimeout)
	if err != nil {
		return nil, fmt.Errorf("domains: %w", err)
	}
	return &Service{opts: opts, c: &checker{r: r, zone: opts.DKIMZone, spfInclude: opts.SPFInclude, bounceDomain: opts.BounceDomain}}, nil
}

// View is a domain as the API shows it.
type View struct {
	Name       string     `json:"name"`
	Status     string     `json:"status"`
	DKIMMode   string     `json:"dkim_mode"`
	Records    []Record   `json:"records"`
	CheckedAt  *time.Time `json:"checked_at"`
	VerifiedAt *time.Time `json:"verified_at"`
	CreatedAt  time.Time  `json:"created_at"`
}

func view(d store.Domain) View {
	v := View{Name: d.Name, Status: d.Status, DKIMMode: d.DKIMMode, CheckedAt: utc(d.CheckedAt),
		VerifiedAt: utc(d.VerifiedAt), CreatedAt: d.CreatedAt.UTC(), Records: []Record{}}
	_ = json.Unmarshal(d.Records, &v.Records) // written by save; [] when never checked
	return v
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// Normalize checks a domain name as a sending domain: at least two
// labels of letters, digits and hyphens (RFC 1123 2.1), lower case.
func Normalize(name string) (string, error) {
	n := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(name), "."))
	labels := strings.Split(n, ".")
	if len(n) > 200 || len(labels) < 2 {
		return "", fmt.Errorf("%w: %q: want a domain like example.com", ErrInvalid, name)
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return "", fmt.Errorf("%w: %q: bad label %q", ErrInvalid, name, l)
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return "", fmt.Errorf("%w: %q: bad character %q", ErrInvalid, name, c)
			}
		}
	}
	return n, nil
}

// Create makes tenant's domain with an RSA-2048 and an Ed25519 key that
// sign at once, checks its records and returns them.
func (s *Service) Create(ctx context.Context, tenant, name string) (View, error) {
	name, err := Normalize(name)
	if err != nil {
		return View{}, err
	}
	mode := ModeDirect
	if s.opts.DKIMZone != "" {
		mode = ModeDelegated
	}
	keys, err := s.newKeys(name, mode, s.slotFor(mode, nil), store.KeyActive)
	if err != nil {
		return View{}, err
	}
	if _, err := s.opts.Ledger.CreateDomain(ctx, store.Domain{Name: name, TenantID: tenant, DKIMMode: mode}, keys); err != nil {
		return View{}, err
	}
	return s.Check(ctx, tenant, name)
}

// slotFor picks the selectors of the next keys: in delegated mode the slot
// the signing keys do not hold; in direct mode new names.
func (s *Service) slotFor(mode string, keys []store.DomainKey) string {
	if mode != ModeDelegated {
		return ""
	}
	for _, k := range keys {
		if k.State == store.KeyActive && strings.HasPrefix(k.Selector, delegatedSlots[0]+"-") {
			return delegatedSlots[1]
		}
	}
	return delegatedSlots[0]
}

func (s *Service) newKeys(domain, mode, slot, state string) ([]store.DKIMKey, error) {
	now := s.opts.Now().UTC()
	var tag [3]byte
	if _, err := io.ReadFull(s.opts.Random, tag[:]); err != nil {
		return nil, fmt.Errorf("selector: %w", err)
	}
	suffix := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(tag[:]))
	var out []store.DKIMKey
	for _, alg := range []dkim.Algorithm{dkim.AlgorithmRSA2048, dkim.AlgorithmEd25519} {
		sel := slotSelector(slot, alg)
		if mode == ModeDirect {
			// Unique per rotation: the tenant publishes each new key.
			prefix := "rsa"
			if alg == dkim.AlgorithmEd25519 {
				prefix = "ed"
			}
			sel = prefix + now.Format("20060102") + "-" + suffix
		}
		k, err := dkim.Generate(s.opts.Random, domain, sel, alg)
		if err != nil {
			return nil, fmt.Errorf("generate %s key: %w", alg, err)
		}
		sealed, err := s.opts.Sealer.Seal(k.PrivateKey)
		if err != nil {
			return nil, fmt.Errorf("seal %s key: %w", alg, err)
		}
		out = append(out, store.DKIMKey{Domain: domain, Selector: sel, Algorithm: string(alg),
			PrivateKey: sealed, PublicKey: k.PublicKey, CreatedAt: k.CreatedAt, State: state})
	}
	return out, nil
}

// Get returns tenant's domain as stored (no DNS lookup).
func (s *Service) Get(ctx context.Context, tenant, name string) (View, error) {
	d, err := s.opts.Ledger.GetDomain(ctx, tenant, strings.ToLower(name))
	if err != nil {
		return View{}, err
	}
	return view(d), nil
}

// List returns tenant's domains as last checked.
func (s *Service) List(ctx context.Context, tenant string) ([]View, error) {
	ds, err := s.opts.Ledger.ListDomains(ctx, tenant)
	if err != nil {
		return nil, err
	}
	out := make([]View, len(ds))
	for i, d := range ds {
		out[i] = view(d)
	}
	return out, nil
}

// Delete removes tenant's domain and its keys.
func (s *Service) Delete(ctx context.Context, tenant, name string) error {
	return s.opts.Ledger.DeleteDomain(ctx, tenant, strings.ToLower(name))
}

// Check looks tenant's domain up live, saves what it found (announcing a
// change of status), switches signing to a rotation's new keys once DNS
// shows them, and returns the domain. An empty tenant checks any domain.
func (s *Service) Check(ctx context.Context, tenant, name string) (View, error) {
	d, err := s.opts.Ledger.GetDomain(ctx, tenant, strings.ToLower(name))
	if err != nil {
		return View{}, err
	}
	v, _, err := s.check(ctx, d)
	return v, err
}

func (s *Service) check(ctx context.Context, d store.Domain) (View, bool, error) {
	for range 2 { // again after a promotion: the signing keys changed
		stored, err := s.opts.Ledger.DomainKeys(ctx, d.Name)
		if err != nil {
			return View{}, false, err
		}
		in := checkInput{domain: d.Name, mode: d.DKIMMode}
		pending := false
		for _, k := range stored {
			in.keys = append(in.keys, Key{Selector: k.Selector, Algorithm: dkim.Algorithm(k.Algorithm), PublicKey: k.PublicKey, State: k.State})
			pending = pending || k.State == store.KeyPending
		}
		// The lookups run one after another: a resolver that never answers
		// must cost a bounded time in all, not 5 s per record.
		cctx, cancel := context.WithTimeout(ctx, checkTimeout)
		res := s.c.check(cctx, in)
		cancel()
		now := s.opts.Now()
		if pending && res.pendingSeen {
			promoted, err := s.opts.Ledger.PromoteKeys(ctx, d.Name, now.Add(s.opts.RetireAfter))
			if err != nil {
				return View{}, false, err
			}
			if promoted {
				s.opts.Logger.LogAttrs(ctx, slog.LevelInfo, "dkim rotation: new keys seen in DNS, signing switched",
					slog.String("domain", d.Name), slog.Time("old_keys_retire_at", now.Add(s.opts.RetireAfter)))
				continue
			}
		}
		status := store.DomainVerified
		for _, r := range res.records {
			if r.Required && r.Status != StatusVerified {
				status = store.DomainFailed
			}
		}
		if status != store.DomainVerified && d.Status == store.DomainPending {
			status = store.DomainPending
		}
		v := view(d)
		v.Records = res.records
		if res.temporary != nil {
			// A lookup that got no answer says nothing about the records:
			// the stored status stands; the records show the failure.
			s.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "domain check incomplete", slog.String("domain", d.Name), slog.Any("error", res.temporary))
			return v, false, nil
		}
		recs, err := json.Marshal(res.records)
		if err != nil {
			return View{}, false, err
		}
		err = s.opts.Ledger.SaveDomainCheck(ctx, store.DomainCheck{Name: d.Name, Status: status, Records: recs, At: now,
			Event: func(prev string) *store.NewEvent { return changeEvent(d, prev, status, res.records) }})
		if err != nil {
			return View{}, false, err
		}
		v.Status = status
		t := now.UTC()
		v.CheckedAt = &t
		if status == store.DomainVerified && d.Status != store.DomainVerified {
			v.VerifiedAt = &t
		}
		return v, true, nil
	}
	return View{}, false, errors.New("dkim keys changed during the check")
}

// changeEvent: domain.verified when the domain becomes verified,
// domain.failed when a verified domain stops being so. A new domain that
// is not verified yet is no news.
func changeEvent(d store.Domain, prev, status string, recs []Record) *store.NewEvent {
	typ := ""
	switch {
	case status == store.DomainVerified && prev != store.DomainVerified:
		typ = store.EventDomainVerified
	case status == store.DomainFailed && prev == store.DomainVerified:
		typ = store.EventDomainFailed
	default:
		return nil
	}
	var bad []map[string]string
	for _, r := range recs {
		if r.Required && r.Status != StatusVerified {
			bad = append(bad, map[string]string{"type": r.Type, "name": r.Name, "status": r.Status, "detail": r.Detail})
		}
	}
	data := map[string]any{"domain": d.Name, "status": status}
	if len(bad) > 0 {
		data["records"] = bad
	}
	return &store.NewEvent{Type: typ, TenantID: d.TenantID, Data: data}
}

// Rotate starts a DKIM rotation of tenant's domain: new keys are made and
// published (delegated: in the operator's zone, behind the CNAMEs the
// tenant already has; direct: the tenant publishes the new TXT records).
// Signing switches once a check sees them in DNS. An empty tenant rotates
// any domain (the CLI).
func (s *Service) Rotate(ctx context.Context, tenant, name string) (View, error) {
	d, err := s.opts.Ledger.GetDomain(ctx, tenant, strings.ToLower(name))
	if err != nil {
		return View{}, err
	}
	stored, err := s.opts.Ledger.DomainKeys(ctx, d.Name)
	if err != nil {
		return View{}, err
	}
	slot := s.slotFor(d.DKIMMode, stored)
	for _, k := range stored {
		if k.State == store.KeyRetiring && d.DKIMMode == ModeDelegated && strings.HasPrefix(k.Selector, slot+"-") {
			return View{}, fmt.Errorf("rotate %s: %w until %s", d.Name, ErrRetiring, k.RetireAt.UTC().Format(time.RFC3339))
		}
	}
	keys, err := s.newKeys(d.Name, d.DKIMMode, slot, store.KeyPending)
	if err != nil {
		return View{}, err
	}
	if err := s.opts.Ledger.StartRotation(ctx, d.Name, keys); err != nil {
		return View{}, err
	}
	s.opts.Logger.LogAttrs(ctx, slog.LevelInfo, "dkim rotation started", slog.String("domain", d.Name), slog.String("mode", d.DKIMMode))
	return s.Check(ctx, tenant, d.Name)
}

// Sweep is the scheduler's chore: it retires keys past their time,
// re-checks domains due (and every domain whose rotation waits for DNS),
// and starts automatic rotations. It returns how many domains it checked.
func (s *Service) Sweep(ctx context.Context) (int, error) {
	now := s.opts.Now()
	if n, err := s.opts.Ledger.RetireKeys(ctx, now); err != nil {
		return 0, err
	} else if n > 0 {
		s.opts.Logger.LogAttrs(ctx, slog.LevelInfo, "retired dkim keys", slog.Int64("count", n))
	}
	due, err := s.opts.Ledger.DueDomains(ctx, now.Add(-s.opts.CheckEvery), 500)
	if err != nil {
		return 0, err
	}
	checked := 0
	for _, d := range due {
		if ctx.Err() != nil {
			break
		}
		if _, _, err := s.check(ctx, d); err != nil {
			s.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "check domain", slog.String("domain", d.Name), slog.Any("error", err))
			continue
		}
		checked++
		if s.opts.RotateEvery > 0 {
			s.autoRotate(ctx, d, now)
		}
	}
	return checked, nil
}

func (s *Service) autoRotate(ctx context.Context, d store.Domain, now time.Time) {
	keys, err := s.opts.Ledger.DomainKeys(ctx, d.Name)
	if err != nil {
		return
	}
	var newest time.Time
	for _, k := range keys {
		if k.State == store.KeyPending || k.State == store.KeyRetiring {
			return // one rotation at a time
		}
		if k.CreatedAt.After(newest) {
			newest = k.CreatedAt
		}
	}
	if newest.IsZero() || now.Sub(newest) < s.opts.RotateEvery {
		return
	}
	if _, err := s.Rotate(ctx, "", d.Name); err != nil {
		s.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "automatic dkim rotation", slog.String("domain", d.Name), slog.Any("error", err))
	}
}

// UnverifiedError says why mail from a domain is refused under
// MAILFERRY_REQUIRE_VERIFIED_DOMAIN, naming the record.
type UnverifiedError struct {
	Domain string
	Record *Record // nil: not a sending domain of the tenant
}

func (e *UnverifiedError) Error() string {
	if e.Record == nil {
		return e.Domain + " is not a sending domain of this tenant: add it with POST /v1/domains and publish its records"
	}
	return fmt.Sprintf("%s is not verified: its DKIM record %s %s is %s", e.Domain, e.Record.Type, e.Record.Name, e.Record.Status)
}

// RequireVerified returns nil when tenant's domain is verified, else an
// *UnverifiedError, from the last check (no DNS lookup on the send path).
func (s *Service) RequireVerified(ctx context.Context, tenant, domain string) error {
	d, err := s.opts.Ledger.GetDomain(ctx, tenant, strings.ToLower(domain))
	if errors.Is(err, store.ErrNotFound) {
		return &UnverifiedError{Domain: strings.ToLower(domain)}
	}
	if err != nil {
		return err
	}
	if d.Status == store.DomainVerified {
		return nil
	}
	v := view(d)
	for _, r := range v.Records {
		if r.Purpose == PurposeDKIM && r.Required && r.Status != StatusVerified {
			return &UnverifiedError{Domain: d.Name, Record: &r}
		}
	}
	// Never checked yet: name the first DKIM record to publish.
	return &UnverifiedError{Domain: d.Name, Record: &Record{Type: "DKIM", Name: "*._domainkey." + d.Name, Status: StatusMissing}}
}
