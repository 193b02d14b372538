package domains

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// FuzzMergeSPF: the merged record is one SPF record that includes the
// operator's domain exactly once, and merging again changes nothing.
func FuzzMergeSPF(f *testing.F) {
	for _, s := range []string{"", "v=spf1 -all", "v=spf1 mx include:spf.relay.test ~all", "V=SPF1 a:x.test/24 redirect=y.test", "v=spf1 ?include:SPF.relay.test."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rec string) {
		if rec != "" && !isSPF(rec) {
			return
		}
		m := mergeSPF(rec, "spf.relay.test")
		if !isSPF(m) {
			t.Fatalf("merge(%q) = %q: not an SPF record", rec, m)
		}
		if !hasInclude(m, "spf.relay.test") {
			t.Fatalf("merge(%q) = %q lacks the include", rec, m)
		}
		if again := mergeSPF(m, "spf.relay.test"); again != m {
			t.Fatalf("merge not idempotent: %q then %q", m, again)
		}
		if strings.Count(strings.ToLower(m), "v=spf1") != strings.Count(strings.ToLower(rec), "v=spf1")+btoi(rec == "") {
			t.Fatalf("merge(%q) = %q added a version", rec, m)
		}
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// FuzzUnescapeTXT: a TXT string packed and unpacked by miekg/dns (which
// escapes it for presentation) reads back as the bytes published.
func FuzzUnescapeTXT(f *testing.F) {
	for _, s := range []string{"v=DKIM1; p=abc", "a\tb", `back\slash`, "\"quoted\"", "\x00\xff"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) > 255 {
			return
		}
		// Build the wire form by hand: one character-string.
		rr := &dns.TXT{Hdr: dns.RR_Header{Name: "x.test.", Rrtype: dns.TypeTXT, Class: dns.ClassINET}}
		wire := make([]byte, 0, 64)
		hdr := make([]byte, 512)
		n, err := dns.PackRR(&dns.TXT{Hdr: rr.Hdr, Txt: []string{""}}, hdr, 0, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		wire = append(wire, hdr[:n-1]...) // header with rdlength 1, minus the empty string's length byte
		rdlen := len(raw) + 1
		wire[len(wire)-2], wire[len(wire)-1] = byte(rdlen>>8), byte(rdlen)
		wire = append(wire, byte(len(raw)))
		wire = append(wire, raw...)
		got, _, err := dns.UnpackRR(wire, 0)
		if err != nil {
			t.Fatalf("unpack: %v", err)
		}
		txt := got.(*dns.TXT).Txt
		if len(txt) == 0 { // miekg/dns drops a lone empty string
			if len(raw) != 0 {
				t.Fatalf("no strings unpacked from %q", raw)
			}
			return
		}
		if s := unescapeTXT(txt[0]); s != string(raw) {
			t.Fatalf("unescape(%q) = %q, want %q", txt[0], s, raw)
		}
	})
}
