package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"
	"github.com/google/uuid"

	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/smtpclient"
	"github.com/mailferry/mailferry/store"
	"github.com/mailferry/mailferry/tlspolicy"
)

// TestTLSPolicyRecorded: the worker with the TLS policy layer delivers
// under MTA-STS and REQUIRETLS, and the ledger's status view shows the
// policy, whether the certificate verified and the failure type.
func TestTLSPolicyRecorded(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		ca := testmx.NewCA(t)
		good := ca.Issue(t, "mx.sts.test", "mx.plain-rtls.test")
		p.mx("sts.test", "127.0.0.2", testmx.SMTPOptions{Cert: &good})
		p.mx("plain-rtls.test", "127.0.0.3", testmx.SMTPOptions{Cert: &good}) // no REQUIRETLS
		self := testmx.SelfSigned(t, "mx.bad-sts.test")
		bad := p.mx("bad-sts.test", "127.0.0.4", testmx.SMTPOptions{Cert: &self})

		// The policy server for sts.test and bad-sts.test.
		ln, err := net.Listen("tcp", "127.0.0.10:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			switch r.Host {
			case "mta-sts.sts.test":
				w.Write([]byte("version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 86400\n"))
			case "mta-sts.bad-sts.test":
				w.Write([]byte("version: STSv1\nmode: enforce\nmx: mx.bad-sts.test\nmax_age: 86400\n"))
			default:
				http.NotFound(w, r)
			}
		}))
		srv.Listener.Close()
		srv.Listener = ln
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "mta-sts.sts.test", "mta-sts.bad-sts.test")}}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		for _, d := range []string{"sts.test", "bad-sts.test"} {
			p.dns.TXT("_mta-sts."+d, "v=STSv1; id=1;")
			p.dns.A("mta-sts."+d, "127.0.0.10")
		}

		p.start("w1", func(o *WorkerOptions) {
			inner, err := smtpclient.New(smtpclient.Options{Hostname: "relay.test", Port: p.port, AllowPrivate: true, RootCAs: ca.Pool,
				Timeouts: smtpclient.Timeouts{Connect: time.Second, Greeting: 2 * time.Second, Mail: 2 * time.Second}})
			if err != nil {
				t.Fatal(err)
			}
			o.Client, err = tlspolicy.New(tlspolicy.Options{Inner: inner, Cache: p.st, MTASTS: true, DNSServer: p.dns.Addr(),
				AllowPrivate: true, RootCAs: ca.Pool, HTTPSPort: ln.Addr().(*net.TCPAddr).Port, FetchTimeout: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
		})

		send := func(to string, requireTLS bool) uuid.UUID {
			msg, err := mail.Build(mail.Draft{From: "a@example.com", To: []string{to}, Subject: "s", Text: "t"},
				mail.BuildOptions{Hostname: "relay.test"})
			if err != nil {
				t.Fatal(err)
			}
			s := intake.Submission{TenantID: p.key.TenantID, APIKeyID: p.key.ID, Ingress: "api", Message: msg, RequireTLS: requireTLS}
			r, err := p.in.NewReceipt(s)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.in.Submit(context.Background(), r, s); err != nil {
				t.Fatal(err)
			}
			return r.ID
		}

		for _, tc := range []struct {
			name, to     string
			requireTLS   bool
			wantStatus   string
			wantEnh      string
			wantPolicy   string
			wantVerified bool
			wantFailure  string
		}{
			{"MTA-STS enforce, verified", "bob@sts.test", false, store.RecipientDelivered, "", "mta-sts", true, ""},
			{"REQUIRETLS, server without it", "bob@plain-rtls.test", true, store.RecipientBounced, "5.7.30", "requiretls", false, "requiretls-not-supported"},
			{"MTA-STS enforce, self-signed", "bob@bad-sts.test", false, store.RecipientDeferred, "4.7.5", "mta-sts", false, "certificate-not-trusted"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				id := send(tc.to, tc.requireTLS)
				var v *store.MessageView
				wait.Within(t, 10*time.Second, "the first attempt recorded", func() bool {
					var err error
					if v, err = p.st.GetMessage(context.Background(), p.key.TenantID, id); err != nil {
						t.Fatal(err)
					}
					return rcpt(t, v, tc.to).Attempts > 0
				})
				r := rcpt(t, v, tc.to)
				if r.Status != tc.wantStatus || deref(r.EnhancedCode) != tc.wantEnh && tc.wantEnh != "" {
					t.Fatalf("status %s %s (%s), want %s %s", r.Status, deref(r.EnhancedCode), deref(r.Response), tc.wantStatus, tc.wantEnh)
				}
				if deref(r.TLSPolicy) != tc.wantPolicy {
					t.Errorf("recipient tls_policy %q, want %q", deref(r.TLSPolicy), tc.wantPolicy)
				}
				var ev *store.Event
				for i := range v.Events {
					if v.Events[i].Attempt != nil {
						ev = &v.Events[i]
					}
				}
				if ev == nil {
					t.Fatalf("no attempt event in %+v", v.Events)
				}
				if deref(ev.TLSPolicy) != tc.wantPolicy || deref(ev.TLSFailure) != tc.wantFailure || deref(ev.TLSVerified) != tc.wantVerified {
					t.Errorf("event tls_policy %q failure %q verified %v, want %q %q %v", deref(ev.TLSPolicy), deref(ev.TLSFailure),
						deref(ev.TLSVerified), tc.wantPolicy, tc.wantFailure, tc.wantVerified)
				}
				if tc.wantStatus == store.RecipientBounced && deref(r.BounceClass) != "tls_failure" {
					t.Errorf("bounce class %q, want tls_failure", deref(r.BounceClass))
				}
			})
		}
		if n := len(bad.Messages()); n != 0 {
			t.Errorf("the self-signed MX under enforce received %d messages", n)
		}
		// The events feed (webhooks) carries the same.
		var evs []store.StoredEvent
		wait.Within(t, 10*time.Second, "the events feed", func() bool {
			var err error
			evs, _, err = p.st.ListEvents(context.Background(), p.key.TenantID, store.EventQuery{Types: []string{"message.delivered", "message.bounced"}})
			if err != nil {
				t.Fatal(err)
			}
			return len(evs) >= 2
		})
		for _, ev := range evs {
			var data struct {
				Recipient   string  `json:"recipient"`
				TLSPolicy   *string `json:"tls_policy"`
				TLSVerified *bool   `json:"tls_verified"`
				TLSFailure  *string `json:"tls_failure"`
			}
			if err := json.Unmarshal(ev.Data, &data); err != nil {
				t.Fatal(err)
			}
			want := map[string]string{"bob@sts.test": "mta-sts", "bob@plain-rtls.test": "requiretls"}[data.Recipient]
			// Verified only where a host ran the transaction; nil where none did.
			if deref(data.TLSPolicy) != want || (data.TLSVerified != nil) != (ev.Type == "message.delivered") || deref(data.TLSVerified) != (ev.Type == "message.delivered") {
				t.Errorf("%s event %s: tls_policy %q verified %v, want %q", ev.Type, data.Recipient, deref(data.TLSPolicy), data.TLSVerified, want)
			}
		}
	})
}

// TestTLSRPTMailSigned: a TLS-RPT report for a mailto: rua goes through
// the queue like any message and arrives DKIM-signed by the report
// sender's domain (RFC 8460 5.3).
func TestTLSRPTMailSigned(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		rcv := p.mx("rcv.test", "127.0.0.5", testmx.SMTPOptions{})
		p.dkimKey(dkim.AlgorithmEd25519, "ed1")
		p.start("w1", nil)
		day := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -1)
		if err := p.st.AddTLSResultCounts(context.Background(), []store.TLSResultCount{
			{Day: day, PolicyDomain: "reports.test", PolicyType: "sts", MXHost: "mx.reports.test", Count: 2},
			{Day: day, PolicyDomain: "reports.test", PolicyType: "sts", MXHost: "mx.reports.test", Result: "certificate-expired", Count: 1},
		}); err != nil {
			t.Fatal(err)
		}
		p.dns.TXT("_smtp._tls.reports.test", "v=TLSRPTv1; rua=mailto:tlsrpt@rcv.test")
		r, err := tlspolicy.NewReporter(tlspolicy.ReporterOptions{Store: p.st, From: "tlsrpt@example.com",
			Mailer:    tlspolicy.IntakeMailer{Intake: p.in, Store: p.st, Hostname: "relay.test"},
			DNSServer: p.dns.Addr(), AllowPrivate: true, Timeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if n, err := r.SendDay(context.Background(), day); n != 1 || err != nil {
			t.Fatalf("SendDay: %d sent, %v", n, err)
		}
		wait.Within(t, 20*time.Second, "the report delivered", func() bool { return len(rcv.Messages()) > 0 })
		msg := rcv.Messages()[0]
		if !bytes.Contains(msg.Data, []byte(`report-type="tlsrpt"`)) || msg.From != "tlsrpt@example.com" {
			t.Errorf("report mail from %s:\n%s", msg.From, msg.Data)
		}
		vs, err := msgauth.VerifyWithOptions(bytes.NewReader(msg.Data), &msgauth.VerifyOptions{LookupTXT: p.lookupTXT})
		if err != nil {
			t.Fatal(err)
		}
		if len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "example.com" {
			t.Errorf("DKIM: %+v", vs)
		}
	})
}
