package smtpclient

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/mail"
)

// TestPathAddresses: the client sends every address mail.ParseAddress
// accepts, quoted local parts too, and refuses before the wire the ones
// it refuses, with 5.1.3 for a recipient and 5.1.7 for the sender
// (issue 18 item 11: "a<b"@example.com was accepted, then bounced here).
func TestPathAddresses(t *testing.T) {
	for _, tc := range []struct {
		name     string
		from     string
		to       []string
		want     []string
		received []string // RCPT TO as go-smtp's server hands it over: unquoted
	}{
		{"quoted with a space", "alice@example.com", []string{`"a b"@example.net`}, []string{"delivered 250 2.0.0"}, []string{"a b@example.net"}},
		{"quoted with an escaped quote", "alice@example.com", []string{`"a\"b"@example.net`}, []string{"delivered 250 2.0.0"}, []string{`a"b@example.net`}},
		{"quoted sender", `"a b"@example.com`, []string{"bob@example.net"}, []string{"delivered 250 2.0.0"}, []string{"bob@example.net"}},
		{"quoted with <", "alice@example.com", []string{`"a<b"@example.com`, "bob@example.net"}, []string{"bounced 0 5.1.3", "delivered 250 2.0.0"}, []string{"bob@example.net"}},
		{"quoted with >", "alice@example.com", []string{`"x>y"@example.net`}, []string{"bounced 0 5.1.3"}, nil},
		{"sender quoted with <", `"a<b"@example.com`, []string{"bob@example.net"}, []string{"bounced 0 5.1.7"}, nil},
		{"sender with CR LF", "alice@example.com\r\nRCPT TO:<x@evil.test>", []string{"bob@example.net"}, []string{"bounced 0 5.1.7"}, nil},
		{"empty recipient", "alice@example.com", []string{"", "bob@example.net"}, []string{"bounced 0 5.1.3", "delivered 250 2.0.0"}, []string{"bob@example.net"}},
		{"domain not a host name", "alice@example.com", []string{"bob@exa_mple.net"}, []string{"bounced 0 5.1.3"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, lns := testmx.Listen(t, "127.0.0.2")
			srv := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
			env := envelope(tc.to...)
			env.From = tc.from
			a := newClient(t, port, nil).Deliver(context.Background(), []Host{host("mx1.example.net", "127.0.0.2")}, env)
			if got := statuses(a); !slices.Equal(got, tc.want) {
				t.Errorf("results %q, want %q", got, tc.want)
				for _, r := range a.Results {
					t.Logf("  %+v", r)
				}
			}
			msgs := srv.Messages()
			if tc.received == nil {
				if len(msgs) != 0 {
					t.Errorf("server received %d messages, want none", len(msgs))
				}
				return
			}
			if len(msgs) != 1 || !slices.Equal(msgs[0].To, tc.received) {
				t.Errorf("server received %+v, want one message to %q", msgs, tc.received)
			}
		})
	}
}

// FuzzPathAgreement: whatever mail.ParseAddress (or mail.ParsePath)
// accepts, the client sends; an address is never accepted and then bounced as bad syntax.
// What the client refuses, ParseAddress refuses too, when given in the
// same form.
func FuzzPathAgreement(f *testing.F) {
	for _, s := range []string{
		"alice@example.com", `"a b"@example.com`, `"a<b"@example.com`, `"x>y"@example.net`, `Bob <"a>b"@example.net>`,
		`"a\"b"@example.com`, `"a\\b"@example.com`, `"\<"@example.com`, "bøb@bücher.de", `"ø ø"@example.com`,
		`"abc"@example.com`, "a.b@example.com", `"a..b"@example.com`, `"@"@example.com`, `"a@b"@example.com`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if p, err := mail.ParsePath(s); err == nil {
			if bad := badAddr(p.Addr); bad != "" {
				t.Fatalf("ParsePath(%q) = %q, which the client refuses: %s", s, p.Addr, bad)
			}
		}
		a, err := mail.ParseAddress(s)
		if err != nil {
			if strings.ContainsAny(s, " \t()<>,;:[]") || !strings.Contains(s, "@") {
				return // not an addr-spec alone: the client never sees this form
			}
			if bad := badAddr(s); bad == "" && strings.Contains(s[strings.LastIndexByte(s, '@'):], ".") {
				// The client would send what the parser refuses: only a
				// domain's form may differ (case, a single label, U-labels).
				if _, _, ok := strings.Cut(err.Error(), "domain"); !ok {
					t.Fatalf("ParseAddress(%q): %v, but the client would send it", s, err)
				}
			}
			return
		}
		if bad := badAddr(a.Addr); bad != "" {
			t.Fatalf("ParseAddress(%q) = %q, which the client refuses: %s", s, a.Addr, bad)
		}
	})
}
