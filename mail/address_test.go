package mail

import (
	"strings"
	"testing"
)

func TestParseAddress(t *testing.T) {
	good := func(in, name, addr string) struct{ in, name, addr string } {
		return struct{ in, name, addr string }{in, name, addr}
	}
	for _, tc := range []struct{ in, name, addr string }{
		good("alice@example.com", "", "alice@example.com"),
		good("Alice <alice@example.com>", "Alice", "alice@example.com"),
		good("<alice@example.com>", "", "alice@example.com"),
		good("  Alice   Smith  <alice@example.com>  ", "Alice Smith", "alice@example.com"),
		good(`"Smith, Alice" <alice@example.com>`, "Smith, Alice", "alice@example.com"),
		good(`"Alice \"A\" Smith" <a@example.com>`, `Alice "A" Smith`, "a@example.com"),
		good("J. R. Smith <jr@example.com>", "J. R. Smith", "jr@example.com"),
		good("=?utf-8?q?J=C3=B6rg_M=C3=BCller?= <j@example.de>", "Jörg Müller", "j@example.de"),
		good("=?utf-8?b?SsO2cmc=?= =?utf-8?q?_M=C3=BCller?= <j@example.de>", "Jörg Müller", "j@example.de"),
		good("=?iso-8859-1?q?J=F6rg?= <j@example.de>", "Jörg", "j@example.de"),
		good("Jörg <j@example.de>", "Jörg", "j@example.de"),
		good("Alice <alice@EXAMPLE.Com>", "Alice", "alice@example.com"),
		good("Alice@Example.COM", "", "Alice@example.com"), // the local part keeps its case (RFC 5321 2.4)
		good("bob@bücher.de", "", "bob@xn--bcher-kva.de"),
		good("bob@BÜCHER.de", "", "bob@xn--bcher-kva.de"),
		good("bob@xn--bcher-kva.de", "", "bob@xn--bcher-kva.de"),
		good("用户@例子.广告", "", "用户@xn--fsqu00a.xn--4rr70v"),
		good(`"john doe"@example.com`, "", `"john doe"@example.com`),
		good(`"john.doe"@example.com`, "", "john.doe@example.com"), // RFC 5321 4.1.2: dot-atom when possible
		good(`"a\"b"@example.com`, "", `"a\"b"@example.com`),
		good("a.b+tag@sub.example.co.uk", "", "a.b+tag@sub.example.co.uk"),
		good("alice@example.com (Alice)", "", "alice@example.com"),
		good("(comment) Alice (more) <alice@example.com> (end)", "Alice", "alice@example.com"),
		good("< alice@example.com >", "", "alice@example.com"),
		good(`"" <alice@example.com>`, "", "alice@example.com"),
		good("!#$%&'*+-/=?^_`{|}~@example.com", "", "!#$%&'*+-/=?^_`{|}~@example.com"),
		good(strings.Repeat("a", 64)+"@example.com", "", strings.Repeat("a", 64)+"@example.com"),
		good("a@"+strings.Repeat("b", 63)+"."+strings.Repeat("c", 63)+"."+strings.Repeat("d", 63)+"."+strings.Repeat("e", 57), "",
			"a@"+strings.Repeat("b", 63)+"."+strings.Repeat("c", 63)+"."+strings.Repeat("d", 63)+"."+strings.Repeat("e", 57)),
	} {
		t.Run(tc.in, func(t *testing.T) {
			a, err := ParseAddress(tc.in)
			if err != nil {
				t.Fatalf("ParseAddress(%q): %v", tc.in, err)
			}
			if a.Name != tc.name || a.Addr != tc.addr {
				t.Fatalf("ParseAddress(%q) = %+v, want name %q addr %q", tc.in, a, tc.name, tc.addr)
			}
			b, err := ParseAddress(a.String())
			if err != nil || b != a {
				t.Fatalf("String() %q parses to %+v, %v; want %+v", a.String(), b, err, a)
			}
		})
	}

	bad := func(in, why string) struct{ in, why string } { return struct{ in, why string }{in, why} }
	for _, tc := range []struct{ in, why string }{
		bad("", "missing"),
		bad("alice", `missing "@domain"`),
		bad("Alice Smith", `missing "@domain"`),
		bad("@example.com", "missing local part"),
		bad(`""@example.com`, "empty local part"),
		bad("alice@", "missing domain"),
		bad("alice@localhost", "no dot"),
		bad("alice@[192.0.2.1]", "address literals"),
		bad("alice@[IPv6:2001:db8::1]", "address literals"),
		bad("alice@192.0.2.1", "IP address"),
		bad("a@b.c, d@e.f", "only one address"),
		bad("Friends: a@example.com, b@example.com;", "groups"),
		bad("Friends: a@example.com;", "groups"),
		bad("undisclosed-recipients:;", "groups"),
		bad("Bob\r\nBcc: x@evil.test", "CR, LF or NUL"),
		bad("bob@example.com\nBcc: x@evil.test", "CR, LF or NUL"),
		bad("bob@example.com\r", "CR, LF or NUL"),
		bad("bob\x00@example.com", "CR, LF or NUL"),
		bad("bob@example.com\xff", "UTF-8"),
		bad(".alice@example.com", "misplaced dot"),
		bad("alice.@example.com", "misplaced dot"),
		bad("a..b@example.com", "misplaced dot"),
		bad("alice@example..com", "misplaced dot"),
		bad("alice@example.com.", "misplaced dot"),
		bad("alice@exa_mple.com", "not a valid host name"),
		bad("alice@-example.com", "not a valid host name"),
		bad(strings.Repeat("a", 65)+"@example.com", "RFC 5321 4.5.3.1.1"),
		bad(`"`+strings.Repeat("a ", 32)+`"@example.com`, "RFC 5321 4.5.3.1.1"),
		bad("a@"+strings.Repeat("b", 64)+".com", "63"),
		bad(strings.Repeat("a", 64)+"@"+strings.Repeat(strings.Repeat("b", 60)+".", 3)+strings.Repeat("c", 20), "RFC 5321 4.5.3.1.3"),
		bad("Alice <alice@example.com", `missing ">"`),
		bad("Alice alice@example.com>", ""),
		bad(`"Alice <alice@example.com>`, "unclosed quoted string"),
		bad("(Alice <alice@example.com>", "unclosed comment"),
		bad("alice@example.com bob", "unexpected"),
		bad("<@relay.example:alice@example.com>", "missing local part"),
		bad("\"a\tb\"@example.com", "tab"),
		// Issue 18 item 11: quoted, RFC 5322 allows them; receivers do not.
		bad(`"a<b"@example.com`, `"<" or ">"`),
		bad(`"x>y"@example.net`, `"<" or ">"`),
		bad(`Bob <"a\>b"@example.net>`, `"<" or ">"`),
		bad(`"<bob@evil.test>"@example.com`, `"<" or ">"`),
		bad("=?utf-8?q?a=0D=0ABcc=3A_x=40evil.test?= <a@example.com>", "CR, LF or NUL"),
		bad(strings.Repeat("x", 3000)+" <a@example.com>", "longer than"),
	} {
		t.Run(tc.in, func(t *testing.T) {
			a, err := ParseAddress(tc.in)
			if err == nil {
				t.Fatalf("ParseAddress(%q) = %+v, want an error", tc.in, a)
			}
			if !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("ParseAddress(%q): %v; want it to say %q", tc.in, err, tc.why)
			}
		})
	}
}

func TestAddressString(t *testing.T) {
	for _, tc := range []struct {
		name string
		a    Address
		want string
	}{
		{"bare", Address{"", "a@example.com"}, "a@example.com"},
		{"atoms", Address{"Alice Smith", "a@example.com"}, "Alice Smith <a@example.com>"},
		{"specials", Address{"Smith, Alice", "a@example.com"}, `"Smith, Alice" <a@example.com>`},
		{"quote and backslash", Address{`A "B" \C`, "a@example.com"}, `"A \"B\" \\C" <a@example.com>`},
		{"dot", Address{"J. Smith", "a@example.com"}, `"J. Smith" <a@example.com>`},
		{"double space", Address{"A  B", "a@example.com"}, `"A  B" <a@example.com>`},
		{"looks encoded", Address{"=?utf-8?q?x?=", "a@example.com"}, "=?utf-8?b?PT91dGYtOD9xP3g/PQ==?= <a@example.com>"},
		{"non-ASCII", Address{"Jörg", "j@example.de"}, "=?utf-8?b?SsO2cmc=?= <j@example.de>"},
		{"quoted local", Address{"", `"a b"@example.com`}, `"a b"@example.com`},
		{"UTF-8 local", Address{"", "用户@example.com"}, "用户@example.com"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.a.String(); got != tc.want {
				t.Fatalf("String() = %q, want %q", got, tc.want)
			}
			b, err := ParseAddress(tc.want)
			if err != nil || b != tc.a {
				t.Fatalf("ParseAddress(%q) = %+v, %v; want %+v", tc.want, b, err, tc.a)
			}
		})
	}
}

func TestAddressDomainAndSMTPUTF8(t *testing.T) {
	for _, tc := range []struct {
		in, domain string
		utf8       bool
	}{
		{"alice@Example.com", "example.com", false},
		{"alice@bücher.de", "xn--bcher-kva.de", false},
		{"jörg@example.de", "example.de", true},
		{`"a@b"@example.org`, "example.org", false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			a, err := ParseAddress(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if a.Domain() != tc.domain || a.NeedsSMTPUTF8() != tc.utf8 {
				t.Fatalf("Domain() = %q, NeedsSMTPUTF8() = %v; want %q, %v", a.Domain(), a.NeedsSMTPUTF8(), tc.domain, tc.utf8)
			}
		})
	}
}

func TestParseAddressList(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		groups   bool
		want     []string
		err      string
	}{
		{"one", "a@example.com", false, []string{"a@example.com"}, ""},
		{"several", "A <a@example.com>, \"B, b\" <b@example.com> ,c@example.com", false, []string{"a@example.com", "b@example.com", "c@example.com"}, ""},
		{"empty elements", ",a@example.com,,b@example.com,", false, []string{"a@example.com", "b@example.com"}, ""},
		{"group members", "Team: a@example.com, B <b@example.com>;, c@example.com", true, []string{"a@example.com", "b@example.com", "c@example.com"}, ""},
		{"empty group", "undisclosed-recipients:;", true, nil, ""},
		{"group refused", "Team: a@example.com;", false, nil, "groups"},
		{"no comma", "a@example.com b@example.com", false, nil, "unexpected"},
		{"unclosed group", "Team: a@example.com", true, nil, "closing"},
		{"bad member", "Team: a@localhost;", true, nil, "no dot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseAddressList(tc.in, tc.groups)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("parseAddressList(%q) = %v, %v; want error %q", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var addrs []string
			for _, a := range got {
				addrs = append(addrs, a.Addr)
			}
			if strings.Join(addrs, " ") != strings.Join(tc.want, " ") {
				t.Fatalf("got %v, want %v", addrs, tc.want)
			}
		})
	}
}

// TestCheckLocalPart: the one rule for local parts, on the form a path
// carries them in (issue 18 item 11).
func TestCheckLocalPart(t *testing.T) {
	for _, tc := range []struct {
		local string
		why   string // "" when sent
	}{
		{"alice", ""},
		{"a.b-c+d", ""},
		{"bøb", ""}, // RFC 6531 3.3
		{`"a b"`, ""},
		{`"a\"b"`, ""},
		{`"a\\b"`, ""},
		{`"a@b"`, ""},
		{`"abc"`, ""}, // quoted needlessly, but valid
		{strings.Repeat("a", 64), ""},
		{"", "empty"},
		{`""`, "empty"},
		{strings.Repeat("a", 65), "RFC 5321 4.5.3.1.1"},
		{"a..b", "neither"},
		{".a", "neither"},
		{"a b", "neither"},
		{"a<b", "neither"},
		{`"a<b"`, `"<" or ">"`},
		{`"a>b"`, `"<" or ">"`},
		{`"a\<b"`, `"<" or ">"`},
		{`"a"b"`, "escaped"},
		{`"ab`, "unclosed"},
		{`"ab\"`, "unclosed"},
		{"\"a\tb\"", "tab"},
		{"\"a\x7fb\"", "control"},
		{"\"a\\\x01b\"", "control"},
		{"\"a\xffb\"", "UTF-8"},
	} {
		t.Run(tc.local, func(t *testing.T) {
			err := CheckLocalPart(tc.local)
			switch {
			case tc.why == "" && err != nil:
				t.Fatalf("CheckLocalPart(%q): %v, want nil", tc.local, err)
			case tc.why != "" && (err == nil || !strings.Contains(err.Error(), tc.why)):
				t.Fatalf("CheckLocalPart(%q): %v, want an error saying %q", tc.local, err, tc.why)
			}
		})
	}
}

func TestCheckMailbox(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"alice@example.com", true},
		{`"a b"@example.com`, true},
		{`"a@b"@example.com`, true},
		{"alice@xn--bcher-kva.de", true},
		{"alice@localhost", true}, // a host name; ParseAddress wants a dot, the client need not
		{"alice", false},
		{"@example.com", false},
		{"alice@", false},
		{"alice@bücher.de", false}, // U-labels: ParseAddress gives A-labels
		{"alice@exa_mple.com", false},
		{"alice@example.com\r\nDATA", false},
		{"alice@[127.0.0.1]", false},
		{`"a<b"@example.com`, false},
		{strings.Repeat("a", 20) + "@" + strings.Repeat("b", 60) + "." + strings.Repeat("c", 60) + "." + strings.Repeat("d", 60) + "." + strings.Repeat("e", 60) + ".com", false},
	} {
		if err := CheckMailbox(tc.addr); (err == nil) != tc.ok {
			t.Errorf("CheckMailbox(%q) = %v, want ok %v", tc.addr, err, tc.ok)
		}
	}
}

// TestParsePath: the mailbox of a path as go-smtp hands it over, its
// quoted local part unquoted; no display names or comments.
func TestParsePath(t *testing.T) {
	for _, tc := range []struct {
		in, addr string // addr "" when refused
		why      string
	}{
		{"alice@Example.COM", "alice@example.com", ""},
		{"a b@example.net", `"a b"@example.net`, ""},
		{`a"b@example.net`, `"a\"b"@example.net`, ""},
		{"a@b@example.net", `"a@b"@example.net`, ""},
		{"bøb@bücher.de", "bøb@xn--bcher-kva.de", ""},
		{"a<b@example.com", "", `"<" or ">"`},
		{"Bob <bob@evil.test> (x@example.com)", "", "host name"},
		{"bob@evil.test (x@example.com)", "", "host name"},
		{"bob@[127.0.0.1]", "", "literals"},
		{"alice@localhost", "", "no dot"},
		{"@example.com", "", "empty local part"},
		{"alice", "", "@domain"},
		{"a\tb@example.com", "", "tab"},
		{"a\r\nb@example.com", "", "CR, LF or NUL"},
		{strings.Repeat("a", 63) + "@example.com", strings.Repeat("a", 63) + "@example.com", ""},
		{strings.Repeat("a", 63) + " @example.com", "", "RFC 5321 4.5.3.1.1"}, // 66 octets once quoted
	} {
		t.Run(tc.in, func(t *testing.T) {
			a, err := ParsePath(tc.in)
			switch {
			case tc.addr != "" && (err != nil || a.Addr != tc.addr || a.Name != ""):
				t.Fatalf("ParsePath(%q) = %+v, %v; want %q", tc.in, a, err, tc.addr)
			case tc.addr == "" && (err == nil || !strings.Contains(err.Error(), tc.why)):
				t.Fatalf("ParsePath(%q) = %+v, %v; want an error saying %q", tc.in, a, err, tc.why)
			}
			if err == nil {
				if err := CheckMailbox(a.Addr); err != nil {
					t.Errorf("ParsePath(%q) = %q, which the client refuses: %v", tc.in, a.Addr, err)
				}
			}
		})
	}
}
