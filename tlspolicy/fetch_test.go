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
