package smtpclient

import (
	"crypto/x509"
	"errors"
	"testing"

	"github.com/mailferry/mailferry/internal/testmx"
)

// TestPolicyReuse: a connection pooled by opportunistic mail (unverified
// certificate) is not used for an envelope with a TLSRequirement, and a
// verified one is, with REQUIRETLS on MAIL.
func TestPolicyReuse(t *testing.T) {
	ca := testmx.NewCA(t)
	good := ca.Issue(t, "mx.good.test")
	self := testmx.SelfSigned(t, "mx.self.test")
	port, lns := testmx.Listen(t, "127.0.0.2", "127.0.0.3")
	goodSrv := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{Cert: &good, RequireTLS: true})
	selfSrv := testmx.StartSMTP(t, lns[1], testmx.SMTPOptions{Cert: &self})
	c := newClient(t, port, func(o *Options) { o.RootCAs = ca.Pool })
	t.Cleanup(c.CloseIdle)

	// Opportunistic first: both pool a connection.
	for _, h := range []Host{host("mx.self.test", "127.0.0.3"), host("mx.good.test", "127.0.0.2")} {
		if a := c.Deliver(t.Context(), []Host{h}, envelope("bob@example.net")); a.Results[0].Err != nil {
			t.Fatalf("%s: %v", h.Name, a.Results[0].Err)
		}
	}
	acceptedSelf, _ := selfSrv.Connections()
	acceptedGood, _ := goodSrv.Connections()

	req := envelope("bob@example.net")
	req.TLS = &TLSRequirement{RequireTLS: true}
	a := c.Deliver(t.Context(), []Host{host("mx.self.test", "127.0.0.3")}, req)
	var te *TLSError
	if r := a.Results[0]; !r.Permanent || r.Enhanced != enhRequireTLS || !errors.As(r.Err, &te) || te.Type != TLSCertNotTrusted {
		t.Errorf("self-signed under REQUIRETLS: %+v, want 5.7.30 certificate-not-trusted", r)
	}
	if n, _ := selfSrv.Connections(); n != acceptedSelf+1 {
		t.Errorf("self-signed host: %d connections, want a fresh one (%d)", n, acceptedSelf+1)
	}
	a = c.Deliver(t.Context(), []Host{host("mx.good.test", "127.0.0.2")}, req)
	if a.Results[0].Err != nil || !a.TLS.Verified {
		t.Fatalf("verified host: %v", a.Results[0].Err)
	}
	if n, _ := goodSrv.Connections(); n != acceptedGood {
		t.Errorf("verified host: %d connections, want the pooled one reused (%d)", n, acceptedGood)
	}
	msgs := goodSrv.Messages()
	if !msgs[len(msgs)-1].RequireTLS || msgs[0].RequireTLS {
		t.Errorf("REQUIRETLS on MAIL: first %v, last %v; want only the last", msgs[0].RequireTLS, msgs[len(msgs)-1].RequireTLS)
	}

	// A custom verifier (DANE) decides instead of WebPKI.
	req = envelope("bob@example.net")
	req.TLS = &TLSRequirement{Verify: func(host string, chain []*x509.Certificate) error { return nil }}
	if a := c.Deliver(t.Context(), []Host{host("mx.self.test", "127.0.0.3")}, req); a.Results[0].Err != nil || !a.TLS.Verified {
		t.Errorf("custom verifier: %v, verified %v", a.Results[0].Err, a.TLS != nil && a.TLS.Verified)
	}
}
