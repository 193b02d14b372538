package tlspolicy

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mailferry/mailferry/netguard"
)

// TestFetch: what RFC 8461 3.3 and the guard refuse.
func TestFetch(t *testing.T) {
	e := newEnv(t)
	res, err := newResolver(e.dns.Addr(), "", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	open := newFetcher(res, true, nil, e.ps.port, 3*time.Second)
	guarded := newFetcher(res, false, nil, e.ps.port, 3*time.Second)
	e.dns.A("mta-sts.unsigned.test", "127.0.0.10") // the certificate does not name it
	for _, tc := range []struct {
		name, body string
		f          *fetcher
		domain     string
		wantErr    string // "" : a policy
	}{
		{"valid", enforcePolicy, open, "example.test", ""},
		{"private address refused by the guard", enforcePolicy, guarded, "example.test", "not public"},
		{"body over 64 KB", enforcePolicy + strings.Repeat("x: y\n", 14000), open, "example.test", "body over"},
		{"redirect not followed", "redirect:https://mta-sts.other.test/.well-known/mta-sts.txt", open, "example.test", "HTTP 302"},
		{"wrong media type", "<html></html>", open, "example.test", "media type"},
		{"not found", "", open, "other.test", "HTTP 404"},
		{"certificate for another name", enforcePolicy, open, "unsigned.test", "certificate"},
		{"no address", enforcePolicy, open, "nowhere.test", "no address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.body != "" {
				e.ps.set(tc.domain, tc.body)
			}
			_, err := tc.f.fetch(ctx(t), tc.domain)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatal(err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
			if tc.f == guarded && !errors.Is(err, netguard.ErrPrivateAddress) {
				t.Errorf("error %v does not wrap netguard.ErrPrivateAddress", err)
			}
		})
	}
}

// TestFetchFailuresCounted: a policy that cannot be had is a TLS-RPT
// failure of its own kind (RFC 8460 4.3.2), and delivery goes on as
// without MTA-STS (RFC 8461 5.1).
func TestFetchFailuresCounted(t *testing.T) {
	e, _ := world(t)
	c := e.client(e.store, nil)
	e.dns.A("mta-sts.unsigned.test", "127.0.0.10") // the certificate does not name it
	e.dns.TXT("_mta-sts.unsigned.test", "v=STSv1; id=1;")
	e.dns.A("mta-sts.broken.test", "127.0.0.10")
	e.dns.TXT("_mta-sts.broken.test", "v=STSv1; id=1;")
	e.ps.set("broken.test", "version: STSv1\nmode: enforce\n") // no mx, no max_age
	for domain, want := range map[string]string{"unsigned.test": "sts-webpki-invalid", "broken.test": "sts-policy-invalid"} {
		att := c.Deliver(ctx(t), hostsOf("mx1."+domain, "127.0.0.3"), envelope("", "bob@"+domain))
		if att.Results[0].Err != nil || att.TLSPolicy != PolicyNone {
			t.Errorf("%s: %v, policy %q; want delivered without a policy", domain, att.Results[0].Err, att.TLSPolicy)
		}
		if err := c.FlushCounts(t.Context()); err != nil {
			t.Fatal(err)
		}
		counts, err := e.store.TLSResultCounts(t.Context(), domain, e.now.AddDate(0, 0, -1), e.now.AddDate(0, 0, 1))
		if err != nil {
			t.Fatal(err)
		}
		if len(counts) != 1 || counts[0].Result != want {
			t.Errorf("%s: counts %+v, want one %s", domain, counts, want)
		}
	}
}
