package tlspolicy

import (
	"slices"
	"testing"
	"time"
)

func TestParseRecord(t *testing.T) {
	for _, tc := range []struct {
		in, id string // id "" : invalid
	}{
		{"v=STSv1; id=20160831085700Z;", "20160831085700Z"}, // RFC 8461 3.1 example
		{"v=STSv1;id=abc", "abc"},
		{"v=STSv1; id = abc ;", "abc"},
		{"v=STSv1; id=abc; ext_1=val.ue", "abc"},
		{"v=STSv1; id=abc;;", ""},
		{"v=STSv1;", ""},
		{"v=STSv1; id=", ""},
		{"v=STSv1; id=abc-def", ""},
		{"v=STSv1; id=" + "123456789012345678901234567890123", ""}, // 33 characters
		{"v=STSv1; id=a; id=b", ""},
		{"v=STSv2; id=abc", ""},
		{" v=STSv1; id=abc", ""},
		{"v=STSv1; id=abc; bad", ""},
		{"v=STSv1; id=abc; x=a=b", ""},
	} {
		r, err := ParseRecord(tc.in)
		if tc.id == "" {
			if err == nil {
				t.Errorf("ParseRecord(%q) = %+v, want an error", tc.in, r)
			}
			continue
		}
		if err != nil || r.ID != tc.id {
			t.Errorf("ParseRecord(%q) = %+v, %v; want id %q", tc.in, r, err, tc.id)
		}
	}
}

func TestParseRecords(t *testing.T) {
	for _, tc := range []struct {
		in []string
		ok bool
	}{
		{[]string{"v=spf1 -all", "v=STSv1; id=a"}, true},
		{[]string{"v=STSv1; id=a", "v=STSv1; id=b"}, false}, // RFC 8461 3.1: not exactly one
		{[]string{"v=spf1 -all"}, false},
		{nil, false},
	} {
		if _, err := ParseRecords(tc.in); (err == nil) != tc.ok {
			t.Errorf("ParseRecords(%q): error %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}

func TestParsePolicy(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     *Policy // nil: invalid
	}{
		{"RFC 8461 3.2 example", "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmx: backupmx.example.com\nmax_age: 604800\n",
			&Policy{Mode: "enforce", MX: []string{"mail.example.com", "*.example.net", "backupmx.example.com"}, MaxAge: 604800 * time.Second}},
		{"CRLF and no final newline", "version: STSv1\r\nmode: testing\r\nmx: MX.Example.COM.\r\nmax_age: 86400",
			&Policy{Mode: "testing", MX: []string{"mx.example.com"}, MaxAge: 86400 * time.Second}},
		{"none needs no mx", "version: STSv1\nmode: none\nmax_age: 0\n", &Policy{Mode: "none"}},
		{"unknown keys ignored, first of a repeat counts", "version: STSv1\nmode: enforce\nmode: none\nfoo: bar\nmx: a.example\nmax_age: 10\n",
			&Policy{Mode: "enforce", MX: []string{"a.example"}, MaxAge: 10 * time.Second}},
		{"no version", "mode: enforce\nmx: a.example\nmax_age: 10\n", nil},
		{"wrong version", "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 10\n", nil},
		{"bad mode", "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 10\n", nil},
		{"no mx in enforce", "version: STSv1\nmode: enforce\nmax_age: 10\n", nil},
		{"no max_age", "version: STSv1\nmode: enforce\nmx: a.example\n", nil},
		{"max_age too big", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n", nil},
		{"max_age not digits", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", nil},
		{"max_age eleven digits", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 00000000001\n", nil},
		{"bad mx", "version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 10\n", nil},
		{"wildcard inside", "version: STSv1\nmode: enforce\nmx: a.*.example\nmax_age: 10\n", nil},
		{"line without colon", "version: STSv1\nmode enforce\nmx: a.example\nmax_age: 10\n", nil},
		{"empty", "", nil},
		{"HTML", "<html><body>not found</body></html>", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ParsePolicy(tc.in)
			if tc.want == nil {
				if err == nil {
					t.Fatalf("got %+v, want an error", p)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Mode != tc.want.Mode || p.MaxAge != tc.want.MaxAge || !slices.Equal(p.MX, tc.want.MX) {
				t.Fatalf("got %+v, want %+v", p, *tc.want)
			}
		})
	}
}

func TestMatches(t *testing.T) {
	p := Policy{MX: []string{"mail.example.com", "*.example.net"}}
	for _, tc := range []struct {
		host string
		want bool
	}{
		{"mail.example.com", true},
		{"MAIL.Example.COM.", true},
		{"other.example.com", false},
		{"mx1.example.net", true}, // RFC 8461 4.1: one label
		{"example.net", false},
		{"a.b.example.net", false},
		{".example.net", false},
		{"mx1.example.net.evil", false},
	} {
		if got := p.Matches(tc.host); got != tc.want {
			t.Errorf("Matches(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
}

// FuzzParsePolicy: no input panics, and what parses is within RFC 8461's
// bounds.
func FuzzParsePolicy(f *testing.F) {
	f.Add("version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 604800\n")
	f.Add("version: STSv1\r\nmode: none\r\nmax_age: 0")
	f.Add("version:STSv1\nmode:testing\nmx:*.a\nmax_age:31557600\n")
	f.Fuzz(func(t *testing.T, in string) {
		p, err := ParsePolicy(in)
		if err != nil {
			return
		}
		if p.MaxAge < 0 || p.MaxAge > maxMaxAge*time.Second {
			t.Fatalf("max_age %v out of range", p.MaxAge)
		}
		if p.Mode != ModeNone && len(p.MX) == 0 {
			t.Fatalf("mode %s without mx", p.Mode)
		}
		for _, m := range p.MX {
			p.Matches(m)
		}
	})
}

func FuzzParseRecord(f *testing.F) {
	f.Add("v=STSv1; id=20160831085700Z;")
	f.Add("v=STSv1;id=a;ext=b")
	f.Fuzz(func(t *testing.T, in string) {
		r, err := ParseRecord(in)
		if err == nil && (r.ID == "" || len(r.ID) > 32 || !alnum(r.ID)) {
			t.Fatalf("ParseRecord(%q) accepted id %q", in, r.ID)
		}
	})
}
