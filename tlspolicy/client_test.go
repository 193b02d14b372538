package tlspolicy

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/smtpclient"
)

const (
	enforcePolicy = "version: STSv1\nmode: enforce\nmx: *.example.test\nmax_age: 86400\n"
	testingPolicy = "version: STSv1\nmode: testing\nmx: *.other.test\nmax_age: 86400\n"
)

// world starts the MX hosts the cases use: 127.0.0.2 with a certificate
// from the test CA, .3 self-signed, .4 without STARTTLS (as if a man in
// the middle stripped it), .5 CA-issued and offering REQUIRETLS.
func world(t *testing.T) (*env, map[string]*testmx.SMTP) {
	e := newEnv(t)
	names := []string{"mx1.example.test", "mx2.example.test", "mx3.example.test", "mx4.example.test",
		"mx1.other.test", "mx2.other.test", "mx1.elsewhere.test", "mx1.none.test", "mx4.none.test"}
	ca := testCA.Issue(t, names...)
	ca5 := testCA.Issue(t, names...)
	self := testmx.SelfSigned(t, names...)
	servers := e.mx(map[string]testmx.SMTPOptions{
		"127.0.0.2": {Cert: &ca},
		"127.0.0.3": {Cert: &self},
		"127.0.0.4": {NoTLS: true},
		"127.0.0.5": {Cert: &ca5, RequireTLS: true},
	}, "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
	e.dns.TXT("_mta-sts.example.test", "v=STSv1; id=20260101;")
	e.ps.set("example.test", enforcePolicy)
	e.dns.TXT("_mta-sts.other.test", "v=STSv1; id=1;")
	e.ps.set("other.test", testingPolicy)
	e.dns.NXDOMAIN("_mta-sts.none.test")
	return e, servers
}

func TestPolicies(t *testing.T) {
	e, servers := world(t)
	c := e.client(e.store, nil)
	for _, tc := range []struct {
		name       string
		hosts      []smtpclient.Host
		to         string
		header     string
		requireTLS bool

		want         string // delivered, deferred, bounced
		wantEnh      string
		wantPolicy   string
		wantFailure  string
		wantVerified bool
		wantAt       string // the server that must have the message; "" none may
		wantOptOut   bool
	}{
		{name: "enforce, matching MX, valid certificate", to: "bob@example.test",
			hosts: []smtpclient.Host{host("mx1.example.test", "127.0.0.2")},
			want:  "delivered", wantPolicy: PolicyMTASTS, wantVerified: true, wantAt: "127.0.0.2"},
		{name: "enforce skips a non-matching MX for a matching one", to: "bob@example.test",
			hosts: []smtpclient.Host{host("mx1.elsewhere.test", "127.0.0.3"), host("mx1.example.test", "127.0.0.2")},
			want:  "delivered", wantPolicy: PolicyMTASTS, wantVerified: true, wantAt: "127.0.0.2"},
		{name: "enforce, MX outside the policy", to: "bob@example.test",
			hosts: []smtpclient.Host{host("mx1.elsewhere.test", "127.0.0.2")},
			want:  "deferred", wantEnh: "4.7.5", wantPolicy: PolicyMTASTS, wantFailure: smtpclient.TLSValidationFailure},
		{name: "enforce, self-signed certificate", to: "bob@example.test",
			hosts: []smtpclient.Host{host("mx2.example.test", "127.0.0.3")},
			want:  "deferred", wantEnh: "4.7.5", wantPolicy: PolicyMTASTS, wantFailure: smtpclient.TLSCertNotTrusted},
		{name: "enforce, STARTTLS stripped", to: "bob@example.test",
			hosts: []smtpclient.Host{host("mx3.example.test", "127.0.0.4")},
			want:  "deferred", wantEnh: "4.7.4", wantPolicy: PolicyMTASTS, wantFailure: smtpclient.TLSStartTLSNotSupported},
		{name: "enforce, certificate for another name", to: "bob@example.test",
			hosts: []smtpclient.Host{host("mx9.example.test", "127.0.0.2")},
			want:  "deferred", wantEnh: "4.7.5", wantPolicy: PolicyMTASTS, wantFailure: smtpclient.TLSCertHostMismatch},
		{name: "testing, self-signed: delivered and counted as a failure", to: "bob@other.test",
			hosts: []smtpclient.Host{host("mx2.other.test", "127.0.0.3")},
			want:  "delivered", wantPolicy: PolicyMTASTS, wantFailure: smtpclient.TLSCertNotTrusted, wantAt: "127.0.0.3"},
		{name: "testing, valid", to: "bob@other.test",
			hosts: []smtpclient.Host{host("mx1.other.test", "127.0.0.2")},
			want:  "delivered", wantPolicy: PolicyMTASTS, wantVerified: true, wantAt: "127.0.0.2"},
		{name: "TLS-Required: No delivers despite the policy", to: "bob@example.test", header: "TLS-Required: No\r\n",
			hosts: []smtpclient.Host{host("mx3.example.test", "127.0.0.4")},
			want:  "delivered", wantPolicy: PolicyNone, wantAt: "127.0.0.4", wantOptOut: true},
		{name: "no policy: opportunistic as before", to: "bob@none.test",
			hosts: []smtpclient.Host{host("mx1.none.test", "127.0.0.3")},
			want:  "delivered", wantPolicy: PolicyNone, wantAt: "127.0.0.3"},
		{name: "REQUIRETLS to a server without it", to: "bob@none.test", requireTLS: true,
			hosts: []smtpclient.Host{host("mx1.none.test", "127.0.0.2")},
			want:  "bounced", wantEnh: "5.7.30", wantPolicy: PolicyRequireTLS, wantFailure: smtpclient.TLSNoRequireTLS},
		{name: "REQUIRETLS without verified TLS", to: "bob@none.test", requireTLS: true,
			hosts: []smtpclient.Host{host("mx1.none.test", "127.0.0.3")},
			want:  "bounced", wantEnh: "5.7.30", wantPolicy: PolicyRequireTLS, wantFailure: smtpclient.TLSCertNotTrusted},
		{name: "REQUIRETLS to a server with it, passed on", to: "bob@none.test", requireTLS: true,
			hosts: []smtpclient.Host{host("mx1.none.test", "127.0.0.2"), host("mx4.none.test", "127.0.0.5")},
			want:  "delivered", wantPolicy: PolicyRequireTLS, wantVerified: true, wantAt: "127.0.0.5"},
		{name: "REQUIRETLS beats TLS-Required: No", to: "bob@none.test", requireTLS: true, header: "TLS-Required: No\r\n",
			hosts: []smtpclient.Host{host("mx1.none.test", "127.0.0.4")},
			want:  "bounced", wantEnh: "5.7.30", wantPolicy: PolicyRequireTLS, wantFailure: smtpclient.TLSStartTLSNotSupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := map[string]int{}
			for ip, s := range servers {
				before[ip] = len(s.Messages())
			}
			env := envelope(tc.header, tc.to)
			if tc.requireTLS {
				env.TLS = &smtpclient.TLSRequirement{RequireTLS: true}
			}
			att := c.Deliver(ctx(t), tc.hosts, env)
			r := att.Results[0]
			got := "deferred"
			switch {
			case r.Permanent:
				got = "bounced"
			case r.Err == nil:
				got = "delivered"
			}
			if got != tc.want || (tc.wantEnh != "" && r.Enhanced != tc.wantEnh) {
				t.Fatalf("%s %s (%v), want %s %s", got, r.Enhanced, r.Err, tc.want, tc.wantEnh)
			}
			if att.TLSPolicy != tc.wantPolicy || att.TLSFailure != tc.wantFailure || att.TLSOptOut != tc.wantOptOut {
				t.Errorf("policy %q failure %q opt-out %v, want %q %q %v", att.TLSPolicy, att.TLSFailure, att.TLSOptOut,
					tc.wantPolicy, tc.wantFailure, tc.wantOptOut)
			}
			if verified := att.TLS != nil && att.TLS.Verified; verified != tc.wantVerified {
				t.Errorf("verified %v, want %v", verified, tc.wantVerified)
			}
			for ip, s := range servers {
				n := len(s.Messages()) - before[ip]
				want := 0
				if ip == tc.wantAt {
					want = 1
				}
				if n != want {
					t.Errorf("%s received %d messages, want %d", ip, n, want)
				}
				if n == 1 && tc.requireTLS && !s.Messages()[before[ip]].RequireTLS {
					t.Errorf("%s: REQUIRETLS not passed on in MAIL", ip)
				}
			}
		})
	}
	// Both policy domains were fetched once, however many deliveries.
	if n := e.ps.fetches.Load(); n != 2 {
		t.Errorf("%d policy fetches, want 2", n)
	}
	if n := testutil.ToFloat64(c.counts.WithLabelValues(PolicyMTASTS, "failure")); n != 5 {
		t.Errorf("mailferry_tls_policy_total{policy=mta-sts,result=failure} = %v, want 5", n)
	}
	if err := c.FlushCounts(t.Context()); err != nil {
		t.Fatal(err)
	}
	counts, err := e.store.TLSResultCounts(t.Context(), "other.test", e.now.AddDate(0, 0, -1), e.now.AddDate(0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	var failures, successes int64
	for _, c := range counts {
		if c.Result == "" {
			successes += c.Count
		} else {
			failures += c.Count
		}
	}
	if failures != 1 || successes != 1 {
		t.Errorf("TLS-RPT counts for other.test: %d failures, %d successes; want 1 and 1", failures, successes)
	}
}

// TestSharedCache: two workers, each with its own connection pool to the
// ledger, deliver to a new policy domain at once; the policy is fetched
// once and both enforce it.
func TestSharedCache(t *testing.T) {
	e, servers := world(t)
	a := e.client(e.openStore(), nil)
	b := e.client(e.openStore(), nil)
	e.ps.mu.Lock()
	hold := make(chan struct{})
	e.ps.hold = hold
	e.ps.mu.Unlock()
	var wg sync.WaitGroup
	atts := make([]smtpclient.Attempt, 2)
	for i, c := range []*Client{a, b} {
		wg.Go(func() {
			atts[i] = c.Deliver(ctx(t), []smtpclient.Host{host("mx1.example.test", "127.0.0.2")}, envelope("", "bob@example.test"))
		})
	}
	// Let the first fetch through once it has arrived; the second worker
	// is waiting on the ledger's lock by then or finds the policy cached.
	wait.For(t, "the first policy fetch", func() bool { return e.ps.fetches.Load() > 0 })
	close(hold)
	wg.Wait()
	if n := e.ps.fetches.Load(); n != 1 {
		t.Errorf("%d fetches, want 1", n)
	}
	for i, att := range atts {
		if att.Results[0].Err != nil || att.TLSPolicy != PolicyMTASTS {
			t.Errorf("worker %d: %v, policy %q", i, att.Results[0].Err, att.TLSPolicy)
		}
	}
	if n := len(servers["127.0.0.2"].Messages()); n != 2 {
		t.Errorf("%d messages, want 2", n)
	}
}

// TestCacheRules: the id-change rule and max_age (RFC 8461 5.1).
func TestCacheRules(t *testing.T) {
	e, _ := world(t)
	c := e.client(e.store, nil)
	deliver := func() smtpclient.Attempt {
		return c.Deliver(ctx(t), []smtpclient.Host{host("mx1.elsewhere.test", "127.0.0.2")}, envelope("", "bob@example.test"))
	}
	steps := []struct {
		name        string
		do          func()
		wantFetches int64
		wantPolicy  string
	}{
		{"first use fetches", func() {}, 1, PolicyMTASTS},
		{"same id: cached", func() {}, 1, PolicyMTASTS},
		{"new id within the memo: the policy in memory still applies", func() {
			e.dns.Clear("_mta-sts.example.test")
			e.dns.TXT("_mta-sts.example.test", "v=STSv1; id=2;")
			e.ps.set("example.test", strings.Replace(enforcePolicy, "*.example.test", "*.elsewhere.test", 1))
		}, 1, PolicyMTASTS},
		{"new id, policy now lists the host: fetched again once the memo ends", func() {
			e.now = e.now.Add(time.Minute)
		}, 2, PolicyMTASTS},
		{"record removed: cached policy still applies", func() {
			e.dns.Clear("_mta-sts.example.test")
			e.now = e.now.Add(time.Minute)
		}, 2, PolicyMTASTS},
		{"record removed and max_age passed: no policy", func() {
			e.now = e.now.Add(86401e9)
		}, 2, PolicyNone},
	}
	for _, st := range steps {
		st.do()
		att := deliver()
		if n := e.ps.fetches.Load(); n != st.wantFetches || att.TLSPolicy != st.wantPolicy {
			t.Errorf("%s: %d fetches, policy %q; want %d, %q", st.name, n, att.TLSPolicy, st.wantFetches, st.wantPolicy)
		}
	}
}

// TestRefresh: a cached policy is fetched again once half its max_age has
// passed, before it expires, without a delivery asking for it.
func TestRefresh(t *testing.T) {
	e, _ := world(t)
	c := e.client(e.store, nil)
	c.Deliver(ctx(t), []smtpclient.Host{host("mx1.example.test", "127.0.0.2")}, envelope("", "bob@example.test"))
	if n := e.ps.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1", n)
	}
	if n, err := c.Refresh(ctx(t)); n != 0 || err != nil {
		t.Fatalf("Refresh at once: %d, %v; want 0", n, err)
	}
	e.now = e.now.Add(12*time.Hour + time.Second) // max_age 86400: half is 12h
	if n, err := c.Refresh(ctx(t)); n != 1 || err != nil {
		t.Fatalf("Refresh after 12h: %d, %v; want 1", n, err)
	}
	if n := e.ps.fetches.Load(); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}
	p, err := e.store.STSPolicy(ctx(t), "example.test")
	if err != nil || p == nil || !p.ExpiresAt.Equal(e.now.Add(86400*time.Second).Truncate(time.Microsecond)) {
		t.Errorf("policy after refresh: %+v, %v; want it to expire a day from now", p, err)
	}
}

// TestBrokenHandshakeUnderPolicy: a failed handshake to an enforce-mode MX
// is a validation failure, never retried in plaintext.
func TestBrokenHandshakeUnderPolicy(t *testing.T) {
	e := newEnv(t)
	srv := e.mx(map[string]testmx.SMTPOptions{"127.0.0.6": {BrokenTLS: true}}, "127.0.0.6")["127.0.0.6"]
	e.dns.TXT("_mta-sts.example.test", "v=STSv1; id=1;")
	e.ps.set("example.test", enforcePolicy)
	c := e.client(e.store, nil)
	att := c.Deliver(ctx(t), []smtpclient.Host{host("mx1.example.test", "127.0.0.6")}, envelope("", "bob@example.test"))
	if r := att.Results[0]; r.Err == nil || r.Permanent || r.Enhanced != "4.7.5" || att.TLSFailure != smtpclient.TLSValidationFailure {
		t.Errorf("result %+v, failure %q; want deferred 4.7.5 validation-failure", r, att.TLSFailure)
	}
	if n := len(srv.Messages()); n != 0 {
		t.Errorf("%d messages delivered, want none (no plaintext retry)", n)
	}
}
