package main

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestParseRecords(t *testing.T) {
	long := "v=DKIM1; k=rsa; p=" + strings.Repeat("A", 400)
	text := `# comment
example.com TXT v=spf1 include:spf.example.net ~all
rsa._domainkey.example.com TXT ` + long + `
mf1-rsa._domainkey.example.com CNAME mf1-rsa.example.com.dkim.localhost
example.com MX 10 mx.example.com
mf1-ed25519.example.com.dkim.localhost. IN TXT ( "v=DKIM1; k=ed25519; " "p=abc" )
bad line here
`
	rrs, errs := parseRecords(text)
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "line 7") {
		t.Errorf("errors %v, want one for line 7", errs)
	}
	txt := func(name string) string {
		for _, rr := range rrs[name] {
			if r, ok := rr.(*dns.TXT); ok {
				for _, s := range r.Txt {
					if len(s) > 255 {
						t.Errorf("%s: a string of %d bytes", name, len(s))
					}
				}
				return strings.Join(r.Txt, "")
			}
		}
		return ""
	}
	for name, want := range map[string]string{
		"example.com.":                            "v=spf1 include:spf.example.net ~all",
		"rsa._domainkey.example.com.":             long,
		"mf1-ed25519.example.com.dkim.localhost.": "v=DKIM1; k=ed25519; p=abc",
	} {
		if got := txt(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if c, ok := rrs["mf1-rsa._domainkey.example.com."][0].(*dns.CNAME); !ok || c.Target != "mf1-rsa.example.com.dkim.localhost." {
		t.Errorf("CNAME %v", rrs["mf1-rsa._domainkey.example.com."])
	}
}

// FuzzParseRecords: any file parses without panicking, and every TXT
// line of the simple form reads back as its value.
func FuzzParseRecords(f *testing.F) {
	f.Add("a.test TXT hello world")
	f.Add("a.test. IN TXT \"x\" \"y\"")
	f.Add("a.test MX 10 b.test")
	f.Fuzz(func(t *testing.T, value string) {
		if strings.ContainsAny(value, "\r\n") || strings.TrimSpace(value) != value || value == "" {
			return
		}
		parseRecords(value) // any line: no panic
		rrs, _ := parseRecords("x.test TXT " + value)
		for _, rr := range rrs["x.test."] {
			if r, ok := rr.(*dns.TXT); ok && strings.Join(r.Txt, "") != value {
				t.Fatalf("TXT %q read back as %q", value, strings.Join(r.Txt, ""))
			}
		}
	})
}
