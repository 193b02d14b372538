package submission_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/domains"
	"github.com/mailferry/mailferry/internal/testmx"
)

// With MAILFERRY_REQUIRE_VERIFIED_DOMAIN, submission refuses a From domain
// whose DKIM records are not published, naming the record, as the API does.
func TestRequireVerifiedDomain(t *testing.T) {
	t.Parallel()
	dns := testmx.StartDNS(t)
	var svc *domains.Service // set before the first session
	h := newHarness(t, harnessOptions{requireVerified: func(ctx context.Context, tenant, domain string) (string, error) {
		err := svc.RequireVerified(ctx, tenant, domain)
		var ue *domains.UnverifiedError
		if errors.As(err, &ue) {
			return ue.Error(), nil
		}
		return "", err
	}})
	sealer, err := dkim.NewSealer(nil)
	if err != nil {
		t.Fatal(err)
	}
	svc, err = domains.New(domains.Options{Ledger: h.store, Sealer: sealer, DNSServer: dns.Addr(), LookupTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	msg := "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: Hi\r\n\r\nHello Bob.\r\n"
	c := h.login()
	_, err = send(c, "alice@example.com", []string{"bob@example.net"}, msg)
	se := wantSMTPError(t, "unknown domain", err, 550, smtp.EnhancedCode{5, 7, 1})
	if !strings.Contains(se.Message, "POST /v1/domains") {
		t.Errorf("reply %q does not say how to add the domain", se.Message)
	}
	v, err := svc.Create(t.Context(), tenant, "example.com")
	if err != nil {
		t.Fatal(err)
	}
	c = h.login()
	_, err = send(c, "alice@example.com", []string{"bob@example.net"}, msg)
	se = wantSMTPError(t, "unverified domain", err, 550, smtp.EnhancedCode{5, 7, 1})
	if !strings.Contains(se.Message, "._domainkey.example.com is missing") {
		t.Errorf("reply %q does not name the DKIM record", se.Message)
	}
	for _, r := range v.Records {
		if r.Purpose == domains.PurposeDKIM {
			var parts []string
			for val := r.Value; ; val = val[255:] {
				if len(val) <= 255 {
					parts = append(parts, val)
					break
				}
				parts = append(parts, val[:255])
			}
			dns.TXT(r.Name, parts...)
		}
	}
	if v, err = svc.Check(t.Context(), tenant, "example.com"); err != nil || v.Status != "verified" {
		t.Fatalf("check: %v %s", err, v.Status)
	}
	c = h.login()
	if _, err := send(c, "alice@example.com", []string{"bob@example.net"}, msg); err != nil {
		t.Fatalf("verified domain: %v", err)
	}
	if n := h.messageCount(); n != 1 {
		t.Errorf("%d messages stored, want 1 (the refused ones none)", n)
	}
}
