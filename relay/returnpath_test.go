package relay

import (
	"strings"
	"testing"
	"time"

	"github.com/mailferry/mailferry/domains"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/returnpath"
	"github.com/mailferry/mailferry/store"
)

// TestCustomReturnPath: the return path is at bounces.<From domain> once
// the domain's CNAME to the bounce domain is verified by the domain
// checker (through the test DNS), and only for the tenant owning the
// domain; otherwise it stays at the bounce domain. The lookup goes through
// the store with no cache, so each step sees the last check.
func TestCustomReturnPath(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		const bounceDomain = "bounces.mailferry.test"
		p := newPipeline(t)
		mx := p.mx("example.org", "127.0.0.3", testmx.SMTPOptions{})
		signer, err := returnpath.New(bounceDomain, []byte("0123456789abcdef0123456789abcdef"))
		if err != nil {
			t.Fatal(err)
		}
		svc, err := domains.New(domains.Options{Ledger: p.st, Sealer: p.opts.Sealer, DNSServer: p.dns.Addr(),
			BounceDomain: bounceDomain, LookupTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		p.start("w1", func(o *WorkerOptions) {
			o.ReturnPaths = signer
			o.CustomReturnPaths = p.st
		})
		ctx := t.Context()
		steps := []struct {
			name    string
			setup   func()
			sending string // "" for the bounce domain
		}{
			{"no domain", func() {}, ""},
			{"domain without the record", func() {
				if _, err := svc.Create(ctx, "acme", "example.com"); err != nil {
					t.Fatal(err)
				}
			}, ""},
			{"CNAME elsewhere", func() {
				p.dns.CNAME("bounces.example.com", "bounces.elsewhere.test")
				check(t, svc, "acme", domains.StatusWrong)
			}, ""},
			{"record verified", func() {
				p.dns.Clear("bounces.example.com")
				p.dns.CNAME("bounces.example.com", bounceDomain)
				check(t, svc, "acme", domains.StatusVerified)
			}, "example.com"},
			{"verified, owned by another tenant", func() {
				if err := svc.Delete(ctx, "acme", "example.com"); err != nil {
					t.Fatal(err)
				}
				if _, err := svc.Create(ctx, "other", "example.com"); err != nil {
					t.Fatal(err)
				}
				check(t, svc, "other", domains.StatusVerified)
			}, ""},
		}
		for i, step := range steps {
			t.Run(step.name, func(t *testing.T) {
				step.setup()
				id := p.send(mail.Draft{From: "Alice <alice@Example.COM>", To: []string{"bob@example.org"}, Subject: step.name, Text: "hi"})
				v := p.wait(id, 20*time.Second)
				if r := rcpt(t, v, "bob@example.org"); r.Status != store.RecipientDelivered {
					t.Fatalf("bob@example.org: %s", r.Status)
				}
				msgs := mx.Messages()
				if len(msgs) != i+1 {
					t.Fatalf("%d messages at the MX, want %d", len(msgs), i+1)
				}
				from := msgs[i].From
				wantDomain := bounceDomain
				if step.sending != "" {
					wantDomain = returnpath.CustomDomain(step.sending)
				}
				if !strings.HasSuffix(from, "@"+wantDomain) {
					t.Fatalf("MAIL FROM %q, want an address at %s", from, wantDomain)
				}
				sending, gotID, gotIdx, err := signer.ParseAny(from)
				if err != nil || sending != step.sending || gotID != id || gotIdx != 0 {
					t.Fatalf("ParseAny(%q) = %q, %s, %d, %v; want %q, %s, 0", from, sending, gotID, gotIdx, err, step.sending, id)
				}
			})
		}
	})
}

// check re-checks example.com for tenant and fails unless its return
// path record has status want.
func check(t *testing.T, svc *domains.Service, tenant, want string) {
	t.Helper()
	v, err := svc.Check(t.Context(), tenant, "example.com")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range v.Records {
		if r.Purpose == domains.PurposeReturnPath {
			if r.Status != want {
				t.Fatalf("return path record %s: %s (%s), want %s", r.Name, r.Status, r.Detail, want)
			}
			return
		}
	}
	t.Fatal("no return path record")
}
