package inbound

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/mailferry/mailferry/domains"
	"github.com/mailferry/mailferry/store"
)

// domain stores tenant's sending domain with a last check whose return
// path record has status.
func (e *env) domain(tenant, name, status string) {
	e.t.Helper()
	if _, err := e.st.CreateDomain(e.t.Context(), store.Domain{Name: name, TenantID: tenant, DKIMMode: domains.ModeDirect}, nil); err != nil {
		e.t.Fatal(err)
	}
	e.recheck(name, status)
}

// recheck saves a check of name whose return path record has status.
func (e *env) recheck(name, status string) {
	e.t.Helper()
	recs, err := json.Marshal([]domains.Record{{Type: "CNAME", Name: "bounces." + name, Value: bounceDomain,
		Purpose: domains.PurposeReturnPath, Status: status}})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.st.SaveDomainCheck(e.t.Context(), store.DomainCheck{Name: name, Status: store.DomainPending, Records: recs, At: time.Now()}); err != nil {
		e.t.Fatal(err)
	}
}

// TestCustomReturnPaths: RCPT takes a return path at bounces.<domain>
// only when its tag verifies for that very domain and the domain has its
// custom return path verified; a DSN sent there bounces the recipient as
// one sent to the bounce domain does.
func TestCustomReturnPaths(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.domain("acme", "sender.example", domains.StatusVerified)
	e.domain("acme", "pending.example", domains.StatusMissing)
	custom := store.NewReturnPathCache(e.st, store.ReturnPathCacheOptions{FreshNegatives: true})
	addr := e.listen(func(o *ServerOptions) { o.CustomReturnPaths = custom })
	without := e.listen(nil)
	p := e.processor(nil)

	m := e.message(2, 2)
	good := e.signer.AddressAt("sender.example", m.ID, 1)
	local := good[:strings.IndexByte(good, '@')]
	baseLocal := e.signer.Address(m.ID, 1)
	baseLocal = baseLocal[:strings.IndexByte(baseLocal, '@')]
	altered := []byte(local)
	if last := len(altered) - 1; altered[last] == 'a' {
		altered[last] = 'b'
	} else {
		altered[last] = 'a'
	}
	tests := []struct {
		name, addr, rcpt, want string
	}{
		{"verified domain", addr, good, ""},
		{"verified domain, upper case", addr, strings.ToUpper(good), ""},
		{"bounce domain still", addr, e.signer.Address(m.ID, 1), ""},
		{"forged tag", addr, string(altered) + "@bounces.sender.example", "550 5.7.1"},
		{"bounce domain's tag at the custom domain", addr, baseLocal + "@bounces.sender.example", "550 5.7.1"},
		{"tag moved to another custom domain", addr, local + "@bounces.pending.example", "550 5.7.1"},
		{"domain without the record verified", addr, e.signer.AddressAt("pending.example", m.ID, 1), "550 5.7.1"},
		{"unknown domain", addr, e.signer.AddressAt("unknown.example", m.ID, 1), "550 5.7.1"},
		{"relay attempt at a custom domain", addr, "victim@bounces.sender.example", "550 5.7.1"},
		{"listener without custom return paths", without, good, "550 5.7.1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := send(tc.addr, "", []string{tc.rcpt}, dsn(good, "user1@dest.example", "failed", "5.1.1", "550 5.1.1 no"))
			if got := code(err); got != tc.want {
				t.Fatalf("RCPT TO:<%s>: %q, want %q", tc.rcpt, got, tc.want)
			}
		})
	}

	// Refused just now, taken as soon as the check verifies the domain:
	// the listener does not keep a "no", since a worker may switch to the
	// domain's return paths before it would have expired.
	e.recheck("pending.example", domains.StatusVerified)
	if err := send(addr, "", []string{e.signer.AddressAt("pending.example", m.ID, 1)}, dsn(good, "user1@dest.example", "failed", "5.1.1", "550 5.1.1 no")); err != nil {
		t.Fatalf("RCPT at a domain verified since the last refusal: %v", err)
	}

	// Four reports were taken above (both spellings of good, the bounce
	// domain's address and the one just verified); each bounces
	// recipient 1 of m.
	for {
		n, err := p.RunOnce(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	if n := e.count(`SELECT count(*) FROM inbound_messages WHERE status = 'processed'`); n != 4 {
		t.Errorf("%d reports processed, want 4", n)
	}
	if n := e.count(`SELECT count(*) FROM recipients WHERE message_id = $1 AND idx = 1 AND status = 'bounced' AND bounce_async
		AND bounce_class = 'invalid_recipient'`, m.ID); n != 1 {
		t.Error("recipient 1 is not bounced asynchronously")
	}
	if n := e.count(`SELECT count(*) FROM recipients WHERE message_id = $1 AND idx = 0 AND status = 'delivered'`, m.ID); n != 1 {
		t.Error("recipient 0 changed")
	}
}

// TestCustomReturnPathLookupFails: when the ledger cannot say whether the
// domain is verified, RCPT answers 451 so the report comes again.
func TestCustomReturnPathLookupFails(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.domain("acme", "sender.example", domains.StatusVerified)
	closed, err := store.Open(t.Context(), store.Options{URL: e.stack.DatabaseURL})
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	addr := e.listen(func(o *ServerOptions) {
		o.CustomReturnPaths = store.NewReturnPathCache(closed, store.ReturnPathCacheOptions{FreshNegatives: true})
	})
	m := e.message(1, 1)
	rp := e.signer.AddressAt("sender.example", m.ID, 0)
	if got := code(send(addr, "", []string{rp}, dsn(rp, "user0@dest.example", "failed", "5.1.1", "550 5.1.1 no"))); got != "451 4.3.0" {
		t.Fatalf("RCPT with the ledger down: %q, want 451 4.3.0", got)
	}
}
