package smtpclient

import (
	"context"
	"crypto/tls"
	"errors"
	"slices"
	"testing"

	"github.com/mailferry/mailferry/internal/testmx"
)

// TestDeliverTLS: STARTTLS whenever offered; the version is recorded, and
// Verified only when RootCAs vouch for a certificate naming the MX host.
// Both EHLOs, before and after STARTTLS, announce our Hostname.
func TestDeliverTLS(t *testing.T) {
	ca := testmx.NewCA(t)
	for _, tc := range []struct {
		name     string
		cert     func() tls.Certificate
		roots    bool
		maxTLS   uint16
		version  string
		verified bool
	}{
		{name: "self-signed", cert: func() tls.Certificate { return testmx.SelfSigned(t, "mx1.example.net") }, roots: true, version: "TLS1.3"},
		{name: "CA-signed, CA trusted", cert: func() tls.Certificate { return ca.Issue(t, "mx1.example.net") }, roots: true, version: "TLS1.3", verified: true},
		{name: "CA-signed, CA not trusted", cert: func() tls.Certificate { return ca.Issue(t, "mx1.example.net") }, version: "TLS1.3"},
		{name: "CA-signed for another name", cert: func() tls.Certificate { return ca.Issue(t, "other.example.net") }, roots: true, version: "TLS1.3"},
		{name: "TLS 1.2", cert: func() tls.Certificate { return ca.Issue(t, "mx1.example.net") }, roots: true, maxTLS: tls.VersionTLS12, version: "TLS1.2", verified: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, lns := testmx.Listen(t, "127.0.0.2")
			cert := tc.cert()
			srv := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{Cert: &cert})
			hosts := []Host{host("mx1.example.net", "127.0.0.2")}
			c := newClient(t, port, func(o *Options) {
				if tc.roots {
					o.RootCAs = ca.Pool
				}
				if tc.maxTLS != 0 {
					o.TLSConfig = &tls.Config{MaxVersion: tc.maxTLS}
				}
			})
			a := c.Deliver(context.Background(), hosts, envelope("bob@example.net"))
			if verdict(a.Results[0]) != delivered {
				t.Fatalf("result %+v", a.Results[0])
			}
			if a.TLS == nil || a.TLS.Version != tc.version || a.TLS.Verified != tc.verified || a.TLS.Cipher == "" {
				t.Errorf("TLS = %+v, want version %s verified %v", a.TLS, tc.version, tc.verified)
			}
			msgs := srv.Messages()
			if len(msgs) != 1 || !msgs[0].TLS {
				t.Fatalf("server messages %+v, want one over TLS", msgs)
			}
			want := []testmx.Hello{{Name: ehloName, TLS: false}, {Name: ehloName, TLS: true}}
			if got := srv.Hellos(); !slices.Equal(got, want) {
				t.Errorf("EHLOs %+v, want %+v", got, want)
			}
			waitClosed(t, c, srv.Connections)
		})
	}
}

// TestTLSFallback: a failed handshake retries the same host in plaintext,
// unless TLS is required.
func TestTLSFallback(t *testing.T) {
	for _, tc := range []struct {
		name       string
		opts       testmx.SMTPOptions
		requireTLS bool
		want       string
	}{
		{name: "broken handshake, plaintext on the same host", opts: testmx.SMTPOptions{BrokenTLS: true}, want: "delivered 250 2.0.0"},
		{name: "no STARTTLS offered", opts: testmx.SMTPOptions{NoTLS: true}, want: "delivered 250 2.0.0"},
		{name: "broken handshake, TLS required", opts: testmx.SMTPOptions{BrokenTLS: true}, requireTLS: true, want: "deferred 0 4.7.0"},
		{name: "no STARTTLS offered, TLS required", opts: testmx.SMTPOptions{NoTLS: true}, requireTLS: true, want: "deferred 0 4.7.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, lns := testmx.Listen(t, "127.0.0.2")
			srv := testmx.StartSMTP(t, lns[0], tc.opts)
			c := newClient(t, port, func(o *Options) { o.RequireTLS = tc.requireTLS })
			a := c.Deliver(context.Background(), []Host{host("mx1.example.net", "127.0.0.2")}, envelope("bob@example.net"))
			if got := statuses(a); !slices.Equal(got, []string{tc.want}) {
				t.Fatalf("results %v (%v), want %s", got, a.Results[0].Err, tc.want)
			}
			msgs := srv.Messages()
			if tc.requireTLS {
				if len(msgs) != 0 || !errors.Is(a.Results[0].Err, errTLSRequired) {
					t.Errorf("TLS required: %d messages sent, err %v", len(msgs), a.Results[0].Err)
				}
			} else {
				if a.TLS != nil || a.Host != "mx1.example.net" || len(msgs) != 1 || msgs[0].TLS {
					t.Errorf("TLS %+v host %q messages %+v: want plaintext delivery on mx1", a.TLS, a.Host, msgs)
				}
				if tc.opts.BrokenTLS && (len(a.Tried) != 1 || a.Tried[0].Host != "mx1.example.net") {
					t.Errorf("Tried = %+v, want the failed handshake on mx1", a.Tried)
				}
			}
			for _, h := range srv.Hellos() {
				if h.Name != ehloName {
					t.Errorf("EHLO %q, want %q", h.Name, ehloName)
				}
			}
			waitClosed(t, c, srv.Connections)
		})
	}
}

// TestSmarthostAuth: AUTH over implicit TLS and over STARTTLS when the
// certificate verifies; never when it does not.
func TestSmarthostAuth(t *testing.T) {
	ca := testmx.NewCA(t)
	users := map[string]string{"app": "s3cret"}
	for _, tc := range []struct {
		name     string
		implicit bool
		roots    bool
		password string
		want     string
	}{
		{name: "smtps with AUTH PLAIN", implicit: true, roots: true, password: "s3cret", want: "delivered 250 2.0.0"},
		{name: "STARTTLS with AUTH PLAIN", roots: true, password: "s3cret", want: "delivered 250 2.0.0"},
		{name: "wrong password defers", implicit: true, roots: true, password: "nope", want: "deferred 535 5.7.8"},
		{name: "unverified certificate: no AUTH", implicit: true, password: "s3cret", want: "deferred 0 4.7.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, lns := testmx.Listen(t, "127.0.0.2")
			cert := ca.Issue(t, "smtp.example.net")
			srv := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{Cert: &cert, ImplicitTLS: tc.implicit, Users: users})
			c := newClient(t, port, func(o *Options) {
				o.ImplicitTLS = tc.implicit
				o.Username, o.Password = "app", tc.password
				if tc.roots {
					o.RootCAs = ca.Pool
				}
			})
			a := c.Deliver(context.Background(), []Host{host("smtp.example.net", "127.0.0.2")}, envelope("bob@example.net"))
			if got := statuses(a); !slices.Equal(got, []string{tc.want}) {
				t.Fatalf("results %v (%v), want %s", got, a.Results[0].Err, tc.want)
			}
			msgs := srv.Messages()
			if tc.want[0] == 'd' && tc.want[2] == 'l' {
				if len(msgs) != 1 || msgs[0].User != "app" || !msgs[0].TLS {
					t.Errorf("messages %+v, want one from user app over TLS", msgs)
				}
				if a.TLS == nil || !a.TLS.Verified {
					t.Errorf("TLS %+v", a.TLS)
				}
			} else if len(msgs) != 0 {
				t.Errorf("%d messages sent", len(msgs))
			}
			waitClosed(t, c, srv.Connections)
		})
	}
}
