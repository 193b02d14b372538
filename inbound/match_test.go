package inbound

import (
	"strings"
	"testing"
	"unicode"

	"github.com/mailferry/mailferry/store"
)

func TestFindRecipient(t *testing.T) {
	m := &store.ReportMessage{Recipients: []store.ReportRecipient{
		{Idx: 0, Email: "Bob@example.net"}, {Idx: 1, Email: "bob@example.net"}, {Idx: 2, Email: "carol@example.org"},
	}}
	tests := []struct {
		addr string
		idx  int
		ok   bool
	}{
		{"Bob@example.net", 0, true},
		{"bob@EXAMPLE.net", 1, true},     // local part exact first
		{"<carol@Example.ORG>", 2, true}, // in angle brackets
		{"Carol <carol@example.org>", 2, true},
		{"CAROL@example.org", 2, true}, // an MTA that changed the case
		{"dave@example.org", 0, false},
		{"", 0, false},
	}
	for _, tc := range tests {
		idx, ok := findRecipient(m, tc.addr)
		if ok != tc.ok || ok && idx != tc.idx {
			t.Errorf("findRecipient(%q) = %d %v, want %d %v", tc.addr, idx, ok, tc.idx, tc.ok)
		}
	}
}

// FuzzAddressMatch: an address matches itself however its domain is
// cased and however it is wrapped, and never another local part.
func FuzzAddressMatch(f *testing.F) {
	f.Add("bob", "Example.NET")
	f.Add("a.b+c", "xn--bcher-kva.example")
	f.Fuzz(func(t *testing.T, local, domain string) {
		// No address holds white space (RFC 5321 4.1.2), which parsing trims.
		if local == "" || domain == "" || strings.ContainsAny(local+domain, "@<>") || strings.IndexFunc(local+domain, unicode.IsSpace) >= 0 {
			return
		}
		// A domain whose case does not round-trip (dotless ı upper-cases
		// to I) names no host: host names compare case-insensitively only
		// where case is defined both ways.
		//lint:ignore SA6005 deliberate: whether lower-casing survives a round trip through upper case
		if strings.ToLower(strings.ToUpper(domain)) != strings.ToLower(domain) {
			return
		}
		addr := local + "@" + domain
		m := &store.ReportMessage{Recipients: []store.ReportRecipient{{Idx: 7, Email: store.NormalizeEmail(addr)}}}
		for _, form := range []string{addr, "<" + addr + ">", "Name <" + local + "@" + strings.ToUpper(domain) + ">"} {
			if idx, ok := findRecipient(m, form); !ok || idx != 7 {
				t.Errorf("%q does not match %q", form, m.Recipients[0].Email)
			}
		}
		if _, ok := findRecipient(m, local+"x@"+domain); ok && !strings.EqualFold(local+"x", local) {
			t.Errorf("%q matches %q", local+"x@"+domain, addr)
		}
	})
}
