package domains_test

import (
	"cmp"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/domains"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/store"
)

func TestMain(m *testing.M) { testenv.Main(m) }

type fixture struct {
	t   testing.TB
	st  *store.Store
	dns *testmx.DNS
	svc *domains.Service
	now time.Time
}

func newFixture(t testing.TB, edit func(*domains.Options)) *fixture {
	t.Helper()
	st, err := store.Open(t.Context(), store.Options{URL: testenv.Database(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if _, err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	sealer, err := dkim.NewSealer(nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, st: st, dns: testmx.StartDNS(t), now: time.Now()}
	opts := domains.Options{Ledger: st, Sealer: sealer, DNSServer: f.dns.Addr(), SPFInclude: "spf.relay.test",
		LookupTimeout: 2 * time.Second, Now: func() time.Time { return f.now }}
	if edit != nil {
		edit(&opts)
	}
	if f.svc, err = domains.New(opts); err != nil {
		t.Fatal(err)
	}
	f.dns.TXT("spf.relay.test", "v=spf1 ip4:127.0.0.1 -all")
	return f
}

func (f *fixture) create(name string) domains.View {
	f.t.Helper()
	v, err := f.svc.Create(f.t.Context(), "acme", name)
	if err != nil {
		f.t.Fatalf("create %s: %v", name, err)
	}
	return v
}

func (f *fixture) check(name string) domains.View {
	f.t.Helper()
	v, err := f.svc.Check(f.t.Context(), "acme", name)
	if err != nil {
		f.t.Fatalf("check %s: %v", name, err)
	}
	return v
}

// records returns v's records of purpose.
func records(v domains.View, purpose string) []domains.Record {
	var out []domains.Record
	for _, r := range v.Records {
		if r.Purpose == purpose {
			out = append(out, r)
		}
	}
	return out
}

func one(t *testing.T, v domains.View, purpose string) domains.Record {
	t.Helper()
	rs := records(v, purpose)
	if len(rs) != 1 {
		t.Fatalf("%d %s records, want 1: %+v", len(rs), purpose, v.Records)
	}
	return rs[0]
}

// publishDKIM publishes the TXT records of v's DKIM records as they ask
// (direct mode).
func (f *fixture) publishDirect(v domains.View, state string) {
	for _, r := range records(v, domains.PurposeDKIM) {
		if state == "" || r.KeyState == state {
			f.dns.TXT(r.Name, splitTXT(r.Value)...)
		}
	}
}

// splitTXT cuts a value into 255-byte strings, as a zone file holds an
// RSA-2048 key (RFC 1035 3.3.14).
func splitTXT(v string) []string {
	var out []string
	for len(v) > 255 {
		out = append(out, v[:255])
		v = v[255:]
	}
	return append(out, v)
}

func events(t *testing.T, st *store.Store) []string {
	t.Helper()
	evs, _, err := st.ListEvents(t.Context(), "acme", store.EventQuery{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}

func TestDirectDKIM(t *testing.T) {
	f := newFixture(t, nil)
	// Webhooks: acme's endpoint gets the domain events, globex's none.
	for _, tenant := range []string{"acme", "globex"} {
		if _, _, err := f.st.CreateAPIKey(t.Context(), tenant, []string{"example.test"}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := f.st.CreateWebhookEndpoint(t.Context(), store.NewWebhookEndpoint{TenantID: tenant,
			URL: "https://hooks.example/" + tenant, Events: []string{store.EventDomainVerified, store.EventDomainFailed}}); err != nil {
			t.Fatal(err)
		}
	}
	v := f.create("example.test")
	if v.DKIMMode != domains.ModeDirect || v.Status != store.DomainPending {
		t.Fatalf("mode %s status %s, want direct pending", v.DKIMMode, v.Status)
	}
	dk := records(v, domains.PurposeDKIM)
	if len(dk) != 2 {
		t.Fatalf("%d DKIM records, want 2 (RSA and Ed25519): %+v", len(dk), dk)
	}
	for _, r := range dk {
		if r.Type != "TXT" || r.Status != domains.StatusMissing || !r.Required || !strings.HasSuffix(r.Name, "._domainkey.example.test") {
			t.Errorf("new DKIM record %+v: want a required TXT, missing", r)
		}
	}

	// Wrong: a record with another key at each name.
	other, err := dkim.Generate(nil, "example.test", "x", dkim.AlgorithmEd25519)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range dk {
		f.dns.TXT(r.Name, other.DNSValue())
	}
	v = f.check("example.test")
	for _, r := range records(v, domains.PurposeDKIM) {
		if r.Status != domains.StatusWrong || len(r.Found) != 1 || !strings.Contains(r.Detail, "p= differs") {
			t.Errorf("wrong key: %+v", r)
		}
	}
	if v.Status != store.DomainPending {
		t.Errorf("status %s, want pending", v.Status)
	}

	// Right.
	for _, r := range dk {
		f.dns.Clear(r.Name)
	}
	f.publishDirect(v, "")
	v = f.check("example.test")
	for _, r := range records(v, domains.PurposeDKIM) {
		if r.Status != domains.StatusVerified {
			t.Errorf("published key: %+v", r)
		}
	}
	if v.Status != store.DomainVerified || v.VerifiedAt == nil {
		t.Fatalf("status %s verified_at %v, want verified", v.Status, v.VerifiedAt)
	}
	if err := f.svc.RequireVerified(t.Context(), "acme", "example.test"); err != nil {
		t.Errorf("RequireVerified after verification: %v", err)
	}

	// A transient failure changes nothing.
	f.dns.ServFail(dk[0].Name)
	if v = f.check("example.test"); v.Status != store.DomainVerified {
		t.Errorf("after SERVFAIL status %s, want verified (unknown is not failed)", v.Status)
	}
	f.dns.Clear(dk[0].Name)

	// Gone: failed, with an event naming the record.
	v = f.check("example.test")
	if v.Status != store.DomainFailed {
		t.Fatalf("status %s after removing a key record, want failed", v.Status)
	}
	var ue *domains.UnverifiedError
	if err := f.svc.RequireVerified(t.Context(), "acme", "example.test"); !errors.As(err, &ue) || ue.Record == nil || ue.Record.Name != dk[0].Name {
		t.Errorf("RequireVerified: %v, want the record %s named", err, dk[0].Name)
	}
	if got := strings.Join(events(t, f.st), ","); got != "domain.verified,domain.failed" {
		t.Errorf("events %s, want domain.verified,domain.failed", got)
	}
	// A check that changes nothing adds no event.
	f.check("example.test")
	if got := len(events(t, f.st)); got != 2 {
		t.Errorf("%d events after an unchanged check, want 2", got)
	}
	if b, err := f.st.WebhookBacklog(t.Context()); err != nil || b.Pending != 2 {
		t.Errorf("webhook deliveries pending: %d, %v; want 2 (acme's endpoint, both events)", b.Pending, err)
	}
}

func TestDelegatedDKIM(t *testing.T) {
	const zone = "dkim.relay.test"
	f := newFixture(t, func(o *domains.Options) { o.DKIMZone = zone })
	v := f.create("example.test")
	dk := records(v, domains.PurposeDKIM)
	if v.DKIMMode != domains.ModeDelegated || len(dk) != 4 {
		t.Fatalf("mode %s, %d DKIM records; want delegated, 4 CNAMEs (two slots, RSA and Ed25519)", v.DKIMMode, len(dk))
	}
	for _, r := range dk {
		want := domains.DelegatedTarget(r.Selector, "example.test", zone)
		if r.Type != "CNAME" || r.Value != want || r.Status != domains.StatusMissing {
			t.Errorf("record %+v: want CNAME to %s, missing", r, want)
		}
	}
	// Wrong target.
	f.dns.CNAME(dk[0].Name, "elsewhere.test")
	v = f.check("example.test")
	if r := records(v, domains.PurposeDKIM)[0]; r.Status != domains.StatusWrong || r.Found[0] != "elsewhere.test" {
		t.Errorf("wrong CNAME: %+v", r)
	}
	f.dns.Clear(dk[0].Name)
	// Right CNAMEs, but the operator's zone does not serve the keys yet.
	for _, r := range dk {
		f.dns.CNAME(r.Name, r.Value)
	}
	v = f.check("example.test")
	for _, r := range records(v, domains.PurposeDKIM) {
		switch r.KeyState {
		case "active":
			if r.Status != domains.StatusMissing || !strings.Contains(r.Detail, "does not serve the key") {
				t.Errorf("CNAME right, key not served: %+v", r)
			}
		case "":
			if r.Status != domains.StatusVerified {
				t.Errorf("spare slot with its CNAME: %+v", r)
			}
		}
	}
	if v.Status != store.DomainPending {
		t.Errorf("status %s, want pending", v.Status)
	}
	// The operator publishes the keys in its zone.
	f.publishZone("example.test", zone)
	v = f.check("example.test")
	if v.Status != store.DomainVerified {
		t.Fatalf("status %s, want verified: %+v", v.Status, records(v, domains.PurposeDKIM))
	}
}

// publishZone publishes every key of domain in the operator's zone, as
// `mailferry dkim zone` prints them.
func (f *fixture) publishZone(domain, zone string) {
	f.t.Helper()
	keys, err := f.st.DomainKeys(f.t.Context(), domain)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, k := range keys {
		name := domains.DelegatedTarget(k.Selector, domain, zone)
		f.dns.Clear(name)
		f.dns.TXT(name, splitTXT(dkim.Key{Domain: domain, Selector: k.Selector, Algorithm: dkim.Algorithm(k.Algorithm), PublicKey: k.PublicKey}.DNSValue())...)
	}
}

func TestSPF(t *testing.T) {
	tests := []struct {
		name    string
		publish []string // TXT records at the domain
		nested  int      // extra includes each costing one lookup
		status  string
		value   string
		detail  string
	}{
		{name: "missing", status: domains.StatusMissing, value: "v=spf1 include:spf.relay.test ~all"},
		{name: "other TXT only", publish: []string{"google-site-verification=abc"}, status: domains.StatusMissing, value: "v=spf1 include:spf.relay.test ~all"},
		{name: "merge", publish: []string{"v=spf1 mx -all"}, status: domains.StatusWrong, value: "v=spf1 include:spf.relay.test mx -all", detail: "add it to the existing record"},
		{name: "two records", publish: []string{"v=spf1 mx -all", "v=spf1 a -all"}, status: domains.StatusWrong, detail: "2 SPF records"},
		{name: "right", publish: []string{"v=spf1 mx include:spf.relay.test -all"}, status: domains.StatusVerified, value: "v=spf1 mx include:spf.relay.test -all"},
		{name: "right, case", publish: []string{"V=SPF1 include:SPF.relay.test -all"}, status: domains.StatusVerified},
		{name: "10 lookups", publish: []string{"v=spf1 mx a include:spf.relay.test include:n.test -all"}, nested: 6, status: domains.StatusVerified},
		{name: "11 lookups", publish: []string{"v=spf1 mx a include:spf.relay.test include:n.test -all"}, nested: 7, status: domains.StatusWrong, detail: "SPF has 11 DNS lookups, over RFC 7208's 10"},
		{name: "merge over the limit", publish: []string{"v=spf1 mx a include:n.test -all"}, nested: 7, status: domains.StatusWrong, detail: "SPF has 11 DNS lookups"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			for _, p := range tc.publish {
				f.dns.TXT("example.test", p)
			}
			// n.test includes nested-1 more names, each a leaf with a
			// lookup of its own (a): 1 + (nested-1)*... kept simple: n.test
			// costs nested lookups of "a" terms.
			if tc.nested > 0 {
				f.dns.TXT("n.test", "v=spf1"+strings.Repeat(" a", tc.nested)+" -all")
			}
			v := f.create("example.test")
			r := one(t, v, domains.PurposeSPF)
			if r.Status != tc.status || tc.value != "" && r.Value != tc.value || !strings.Contains(r.Detail, tc.detail) {
				t.Errorf("got %+v\nwant status %s value %q detail ~%q", r, tc.status, tc.value, tc.detail)
			}
			if r.Type != "TXT" || r.Name != "example.test" {
				t.Errorf("record %s %s, want TXT example.test", r.Type, r.Name)
			}
			if strings.Count(r.Value, "v=spf1") > 1 {
				t.Errorf("value %q holds two records", r.Value)
			}
		})
	}
}

func TestDMARC(t *testing.T) {
	tests := []struct {
		name    string
		bounce  string // MAILFERRY_BOUNCE_DOMAIN
		publish []string
		dkim    bool   // publish the DKIM keys first
		cname   string // bounces.<domain>'s CNAME, "" for none
		status  string
		detail  string
		// domain is the sending domain (default example.test), orgRecord
		// the DMARC record of org (default example.test) when domain is
		// a subdomain of it.
		domain, org, orgRecord string
	}{
		{name: "missing", status: domains.StatusMissing, detail: "no DMARC record"},
		{name: "not DMARC", publish: []string{"v=spf1 -all"}, status: domains.StatusMissing},
		{name: "two", publish: []string{"v=DMARC1; p=none", "v=DMARC1; p=reject"}, status: domains.StatusWrong, detail: "more than one"},
		{name: "no policy", publish: []string{"v=DMARC1; rua=mailto:d@example.test"}, dkim: true, status: domains.StatusWrong, detail: "p= is missing"},
		{name: "aligned by SPF, DKIM not yet", publish: []string{"v=DMARC1; p=reject"}, status: domains.StatusVerified, detail: "SPF only"},
		{name: "aligned by both", publish: []string{"v=DMARC1; p=reject"}, dkim: true, status: domains.StatusVerified, detail: "DKIM (d=example.test) and SPF"},
		{name: "bounce domain elsewhere, no DKIM", bounce: "bounces.relay.test", publish: []string{"v=DMARC1; p=quarantine"}, status: domains.StatusWrong, detail: "will not align"},
		{name: "bounce domain elsewhere, DKIM", bounce: "bounces.relay.test", publish: []string{"v=DMARC1; p=quarantine"}, dkim: true, status: domains.StatusVerified, detail: "SPF does not align"},
		{name: "bounce subdomain, relaxed", bounce: "mf.example.test", publish: []string{"v=DMARC1; p=quarantine"}, status: domains.StatusVerified, detail: "SPF only"},
		{name: "inherited from the organizational domain", domain: "mail.example.test", orgRecord: "v=DMARC1; p=reject; sp=none", status: domains.StatusVerified, detail: "_dmarc.example.test applies"},
		// The public suffix list decides where the organization starts:
		// co.uk is a suffix, so example.co.uk is the organization and
		// another co.uk domain is not the same one.
		{name: "inherited under a two-label suffix", domain: "mail.example.co.uk", org: "example.co.uk", orgRecord: "v=DMARC1; p=reject", status: domains.StatusVerified, detail: "_dmarc.example.co.uk applies"},
		{name: "bounce domain of another co.uk organization", domain: "shop.co.uk", bounce: "bounces.relay.co.uk", publish: []string{"v=DMARC1; p=quarantine"}, status: domains.StatusWrong, detail: "will not align"},
		{name: "bounce subdomain under a two-label suffix", domain: "example.co.uk", bounce: "mf.example.co.uk", publish: []string{"v=DMARC1; p=quarantine"}, status: domains.StatusVerified, detail: "SPF only"},
		{name: "bounce subdomain, strict", bounce: "mf.example.test", publish: []string{"v=DMARC1; p=quarantine; aspf=s"}, status: domains.StatusWrong, detail: "will not align"},
		{name: "custom return path verified", bounce: "bounces.relay.test", cname: "bounces.relay.test", publish: []string{"v=DMARC1; p=quarantine"}, status: domains.StatusVerified, detail: "SPF only"},
		{name: "custom return path verified, strict", bounce: "bounces.relay.test", cname: "bounces.relay.test", publish: []string{"v=DMARC1; p=quarantine; aspf=s"}, status: domains.StatusWrong, detail: "return path is at bounces.example.test"},
		{name: "custom return path wrong", bounce: "bounces.relay.test", cname: "other.test", publish: []string{"v=DMARC1; p=quarantine"}, status: domains.StatusWrong, detail: "return path is at bounces.relay.test"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(o *domains.Options) { o.BounceDomain = tc.bounce })
			domain := cmp.Or(tc.domain, "example.test")
			for _, p := range tc.publish {
				f.dns.TXT("_dmarc."+domain, p)
			}
			if tc.orgRecord != "" {
				f.dns.TXT("_dmarc."+cmp.Or(tc.org, "example.test"), tc.orgRecord)
			}
			if tc.cname != "" {
				f.dns.CNAME("bounces."+domain, tc.cname)
			}
			v := f.create(domain)
			if tc.dkim {
				f.publishDirect(v, "")
				v = f.check(domain)
			}
			r := one(t, v, domains.PurposeDMARC)
			if r.Status != tc.status || !strings.Contains(r.Detail, tc.detail) {
				t.Errorf("got %+v\nwant status %s detail ~%q", r, tc.status, tc.detail)
			}
			if r.Status == domains.StatusMissing && !strings.HasPrefix(r.Value, "v=DMARC1; p=none") {
				t.Errorf("suggested %q, want a p=none record", r.Value)
			}
		})
	}
}

func TestReturnPath(t *testing.T) {
	tests := []struct {
		name, bounce, cname, status string
	}{
		{"no bounce domain", "", "", domains.StatusInfo},
		{"missing", "bounces.relay.test", "", domains.StatusMissing},
		{"wrong", "bounces.relay.test", "other.test", domains.StatusWrong},
		{"right", "bounces.relay.test", "bounces.relay.test", domains.StatusVerified},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(o *domains.Options) { o.BounceDomain = tc.bounce })
			if tc.cname != "" {
				f.dns.CNAME("bounces.example.test", tc.cname)
			}
			r := one(t, f.create("example.test"), domains.PurposeReturnPath)
			if r.Status != tc.status || tc.status == domains.StatusVerified && !strings.Contains(r.Detail, "return paths are at bounces.example.test") {
				t.Errorf("got %+v, want %s", r, tc.status)
			}
		})
	}
}

func TestInformational(t *testing.T) {
	f := newFixture(t, nil)
	f.dns.MX("example.test", 10, "mx.example.test")
	f.dns.TXT("_mta-sts.example.test", "v=STSv1; id=20260101")
	v := f.create("example.test")
	mx := one(t, v, domains.PurposeMX)
	if mx.Status != domains.StatusInfo || len(mx.Found) != 1 || mx.Found[0] != "10 mx.example.test" {
		t.Errorf("MX %+v", mx)
	}
	if r := one(t, v, domains.PurposeMTASTS); r.Status != domains.StatusInfo || len(r.Found) != 1 {
		t.Errorf("MTA-STS %+v", r)
	}
	if r := one(t, v, domains.PurposeTLSRPT); r.Status != domains.StatusInfo || len(r.Found) != 0 {
		t.Errorf("TLS-RPT %+v", r)
	}
}

func TestCreateConflicts(t *testing.T) {
	f := newFixture(t, nil)
	f.create("example.test")
	if _, err := f.svc.Create(t.Context(), "acme", "Example.TEST."); !errors.Is(err, store.ErrExists) {
		t.Errorf("again: %v, want ErrExists", err)
	}
	if _, err := f.svc.Create(t.Context(), "other", "example.test"); !errors.Is(err, store.ErrTaken) {
		t.Errorf("another tenant: %v, want ErrTaken", err)
	}
	if _, err := f.svc.Check(t.Context(), "other", "example.test"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("another tenant's check: %v, want ErrNotFound", err)
	}
	if err := f.svc.Delete(t.Context(), "other", "example.test"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("another tenant's delete: %v, want ErrNotFound", err)
	}
	for _, bad := range []string{"", "localhost", "a..b", "-a.test", "ex ample.test", "é.test"} {
		if _, err := f.svc.Create(t.Context(), "acme", bad); !errors.Is(err, domains.ErrInvalid) {
			t.Errorf("Create(%q): %v, want ErrInvalid", bad, err)
		}
	}
}

// signing returns the selectors that sign mail from domain now.
func signing(t *testing.T, st *store.Store, domain string) []string {
	t.Helper()
	keys, err := st.ActiveDKIMKeys(t.Context(), domain)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range keys {
		out = append(out, k.Selector)
	}
	return out
}

func TestRotationDelegated(t *testing.T) {
	const zone = "dkim.relay.test"
	f := newFixture(t, func(o *domains.Options) { o.DKIMZone = zone; o.RetireAfter = time.Hour })
	v := f.create("example.test")
	for _, r := range records(v, domains.PurposeDKIM) {
		f.dns.CNAME(r.Name, r.Value)
	}
	f.publishZone("example.test", zone)
	if v = f.check("example.test"); v.Status != store.DomainVerified {
		t.Fatalf("status %s", v.Status)
	}
	before := signing(t, f.st, "example.test")
	if strings.Join(before, ",") != "mf1-ed25519,mf1-rsa" {
		t.Fatalf("signing with %v, want the mf1 slot", before)
	}
	v, err := f.svc.Rotate(t.Context(), "acme", "example.test")
	if err != nil {
		t.Fatal(err)
	}
	// Not in the zone yet: the old keys still sign, the domain stays
	// verified (the new keys do not decide it).
	if got := signing(t, f.st, "example.test"); strings.Join(got, ",") != "mf1-ed25519,mf1-rsa" {
		t.Errorf("after rotate, before DNS: signing with %v", got)
	}
	if v.Status != store.DomainVerified {
		t.Errorf("status %s during rotation, want verified", v.Status)
	}
	if _, err := f.svc.Rotate(t.Context(), "acme", "example.test"); !errors.Is(err, store.ErrRotating) {
		t.Errorf("second rotation: %v, want ErrRotating", err)
	}
	// The operator's zone serves the new keys; the tenant changes nothing.
	f.publishZone("example.test", zone)
	if n, err := f.svc.Sweep(t.Context()); err != nil || n != 1 {
		t.Fatalf("sweep: %d, %v; want the pending domain checked", n, err)
	}
	if got := signing(t, f.st, "example.test"); strings.Join(got, ",") != "mf2-ed25519,mf2-rsa" {
		t.Fatalf("after DNS: signing with %v, want the mf2 slot", got)
	}
	v = f.check("example.test")
	for _, r := range records(v, domains.PurposeDKIM) {
		if strings.HasPrefix(r.Selector, "mf1") && (r.KeyState != "retiring" || r.Status != domains.StatusVerified) {
			t.Errorf("old key record %+v: want retiring, still published", r)
		}
	}
	// The slot is busy until the old keys retire.
	if _, err := f.svc.Rotate(t.Context(), "acme", "example.test"); !errors.Is(err, domains.ErrRetiring) {
		t.Errorf("rotation while retiring: %v, want ErrRetiring", err)
	}
	f.now = f.now.Add(time.Hour + time.Second)
	if _, err := f.svc.Sweep(t.Context()); err != nil {
		t.Fatal(err)
	}
	keys, err := f.st.DomainKeys(t.Context(), "example.test")
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 {
		t.Errorf("%d keys after retirement, want 2", len(keys))
	}
	if _, err := f.svc.Rotate(t.Context(), "acme", "example.test"); err != nil {
		t.Errorf("rotation after retirement: %v", err)
	}
}

func TestRotationDirectAndAutomatic(t *testing.T) {
	f := newFixture(t, func(o *domains.Options) { o.RotateEvery = 24 * time.Hour })
	v := f.create("example.test")
	f.publishDirect(v, "")
	f.check("example.test")
	before := signing(t, f.st, "example.test")
	// Not due: nothing happens.
	f.now = f.now.Add(2 * time.Hour) // past CheckEvery
	if _, err := f.svc.Sweep(t.Context()); err != nil {
		t.Fatal(err)
	}
	keys, _ := f.st.DomainKeys(t.Context(), "example.test")
	if len(keys) != 2 {
		t.Fatalf("%d keys before RotateEvery, want 2", len(keys))
	}
	f.now = f.now.Add(24 * time.Hour)
	if _, err := f.svc.Sweep(t.Context()); err != nil {
		t.Fatal(err)
	}
	v = f.check("example.test")
	var pending []domains.Record
	for _, r := range records(v, domains.PurposeDKIM) {
		if r.KeyState == "pending" {
			pending = append(pending, r)
			if r.Status != domains.StatusMissing || r.Required {
				t.Errorf("new direct key record %+v: want missing, not required", r)
			}
		}
	}
	if len(pending) != 2 || v.Status != store.DomainVerified {
		t.Fatalf("after RotateEvery: %d pending records, status %s", len(pending), v.Status)
	}
	if got := signing(t, f.st, "example.test"); strings.Join(got, ",") != strings.Join(before, ",") {
		t.Errorf("signing switched before the tenant published: %v", got)
	}
	f.publishDirect(v, "pending")
	f.check("example.test")
	got := signing(t, f.st, "example.test")
	if len(got) != 2 || got[0] == before[0] || got[1] == before[1] {
		t.Errorf("after publishing: signing with %v, before %v", got, before)
	}
}

// The DKIM key in a record is compared by its p= tag, whatever the
// whitespace (RFC 6376 3.2 folding).
func TestKeyWhitespace(t *testing.T) {
	f := newFixture(t, nil)
	v := f.create("example.test")
	keys, _ := f.st.DomainKeys(t.Context(), "example.test")
	for _, k := range keys {
		p := base64.StdEncoding.EncodeToString(k.PublicKey)
		kt := map[string]string{"rsa2048": "rsa", "ed25519": "ed25519"}[k.Algorithm]
		f.dns.TXT(k.Selector+"._domainkey.example.test", splitTXT("v=DKIM1; k="+kt+"; p= "+p[:20]+" \t"+p[20:])...)
	}
	if v = f.check("example.test"); v.Status != store.DomainVerified {
		t.Errorf("status %s: %+v", v.Status, records(v, domains.PurposeDKIM))
	}
}

// BenchmarkRequireVerified is the cost MAILFERRY_REQUIRE_VERIFIED_DOMAIN
// adds to each send: one primary-key read of the domain row.
func BenchmarkRequireVerified(b *testing.B) {
	f := newFixture(b, nil)
	v := f.create("example.test")
	f.publishDirect(v, "")
	f.check("example.test")
	b.ResetTimer()
	for b.Loop() {
		if err := f.svc.RequireVerified(b.Context(), "acme", "example.test"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCheck is one live check of a domain (every record type, about
// ten DNS queries) against the loopback DNS server, and saving it.
func BenchmarkCheck(b *testing.B) {
	f := newFixture(b, nil)
	v := f.create("example.test")
	f.publishDirect(v, "")
	b.ResetTimer()
	for b.Loop() {
		if _, err := f.svc.Check(b.Context(), "acme", "example.test"); err != nil {
			b.Fatal(err)
		}
	}
}

// A resolver that never answers leaves the domain's status as it was and
// says so in the record.
func TestLookupTimeout(t *testing.T) {
	f := newFixture(t, func(o *domains.Options) { o.LookupTimeout = 300 * time.Millisecond })
	v := f.create("example.test")
	f.publishDirect(v, "")
	if v = f.check("example.test"); v.Status != store.DomainVerified {
		t.Fatalf("status %s", v.Status)
	}
	name := records(v, domains.PurposeDKIM)[0].Name
	f.dns.Timeout(name)
	v = f.check("example.test")
	r := records(v, domains.PurposeDKIM)[0]
	if v.Status != store.DomainVerified || !strings.Contains(r.Detail, "lookup failed") {
		t.Errorf("status %s, record %+v; want verified kept and the failure named", v.Status, r)
	}
	if got := strings.Join(events(t, f.st), ","); got != "domain.verified" {
		t.Errorf("events %s, want domain.verified only", got)
	}
}
