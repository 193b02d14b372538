package returnpath

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/google/uuid"
)

var testKey = []byte("0123456789abcdef-test-key")

func mustNew(t testing.TB, domain string) *Signer {
	t.Helper()
	s, err := New(domain, testKey)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		name   string
		domain string
		key    []byte
		ok     bool
	}{
		{"good", "bounces.example.com", testKey, true},
		{"upper case domain", "Bounces.Example.COM", testKey, true},
		{"single label", "localhost", testKey, true},
		{"empty domain", "", testKey, false},
		{"trailing dot", "bounces.example.com.", testKey, false},
		{"underscore", "b_ounces.example.com", testKey, false},
		{"address literal", "[127.0.0.1]", testKey, false},
		{"space", "bounces example.com", testKey, false},
		{"nil key", "bounces.example.com", nil, false},
		{"short key", "bounces.example.com", []byte("fifteen bytes!!"), false},
		{"16-byte key", "bounces.example.com", []byte("sixteen bytes!!!"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(tc.domain, tc.key)
			if (err == nil) != tc.ok {
				t.Fatalf("New(%q, %d bytes) = %v, %v; want ok=%v", tc.domain, len(tc.key), s, err, tc.ok)
			}
		})
	}
}

func TestNewCopiesKey(t *testing.T) {
	key := append([]byte(nil), testKey...)
	s, err := New("bounces.example.com", key)
	if err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	a := s.Address(id, 0)
	key[0] ^= 0xff
	if b := s.Address(id, 0); a != b {
		t.Fatalf("changing the caller's key slice changed the address: %q, %q", a, b)
	}
}

var shape = regexp.MustCompile(`^b-[a-z2-7]{26}-(x|0|[1-9][0-9]{0,8})-[a-z2-7]{16}@bounces\.example\.com$`)

func TestAddressShape(t *testing.T) {
	s := mustNew(t, "Bounces.Example.com")
	for _, idx := range []int{-1, 0, 1, 9, 10, 999, MaxIndex, MaxIndex + 1, -5} {
		for _, id := range []uuid.UUID{uuid.Nil, uuid.Max, uuid.MustParse("0193a5c2-7c1e-7f3a-9d2b-5e6f70819a2b")} {
			a := s.Address(id, idx)
			if !shape.MatchString(a) {
				t.Errorf("Address(%s, %d) = %q: not of the documented shape", id, idx, a)
			}
			local := a[:strings.LastIndexByte(a, '@')]
			if len(local) > 64 {
				t.Errorf("Address(%s, %d): local part %d octets > 64 (RFC 5321 4.5.3.1.1)", id, idx, len(local))
			}
			gotID, gotIdx, err := s.Parse(a)
			want := idx
			if idx < 0 || idx > MaxIndex {
				want = -1
			}
			if err != nil || gotID != id || gotIdx != want {
				t.Errorf("Parse(%q) = %s, %d, %v; want %s, %d", a, gotID, gotIdx, err, id, want)
			}
		}
	}
}

func TestParse(t *testing.T) {
	s := mustNew(t, "bounces.example.com")
	id := uuid.MustParse("0193a5c2-7c1e-7f3a-9d2b-5e6f70819a2b")
	good := s.Address(id, 3)
	local, _, _ := strings.Cut(good, "@")
	parts := strings.Split(local, "-") // b, id, idx, tag
	other := mustNew(t, "bounces.example.net")
	otherKey, err := New("bounces.example.com", []byte("another key of enough length"))
	if err != nil {
		t.Fatal(err)
	}
	swapLast := func(s string) string {
		c := s[len(s)-1]
		if c == 'a' {
			c = 'b'
		} else {
			c = 'a'
		}
		return s[:len(s)-1] + string(c)
	}
	for _, tc := range []struct {
		name    string
		addr    string
		want    error // nil: accepted as (id, 3)
		wantIdx int
	}{
		{"good", good, nil, 3},
		{"upper case", strings.ToUpper(good), nil, 3},
		{"mixed case domain", local + "@Bounces.EXAMPLE.com", nil, 3},
		{"several recipients", s.Address(id, -1), nil, -1},
		{"other domain", local + "@bounces.example.net", ErrNotOurs, 0},
		{"subdomain", local + "@x.bounces.example.com", ErrNotOurs, 0},
		{"no domain", local, ErrNotOurs, 0},
		{"empty", "", ErrNotOurs, 0},
		{"someone else", "postmaster@bounces.example.com", ErrNotOurs, 0},
		{"fbl-like", "fbl@bounces.example.com", ErrNotOurs, 0},
		{"wrong prefix", "c" + good[1:], ErrNotOurs, 0},
		{"extra field", "b-" + parts[1] + "-3-x-" + parts[3] + "@bounces.example.com", ErrNotOurs, 0},
		{"short id", "b-" + parts[1][1:] + "-3-" + parts[3] + "@bounces.example.com", ErrNotOurs, 0},
		{"short tag", "b-" + parts[1] + "-3-" + parts[3][1:] + "@bounces.example.com", ErrNotOurs, 0},
		{"leading zero index", "b-" + parts[1] + "-03-" + parts[3] + "@bounces.example.com", ErrNotOurs, 0},
		{"negative index", "b-" + parts[1] + "--3-" + parts[3] + "@bounces.example.com", ErrNotOurs, 0},
		{"index too long", "b-" + parts[1] + "-1234567890-" + parts[3] + "@bounces.example.com", ErrNotOurs, 0},
		{"non-base32 id", "b-" + parts[1][:25] + "1-3-" + parts[3] + "@bounces.example.com", ErrNotOurs, 0},
		{"subaddress", "b-" + parts[1] + "-3-" + parts[3] + "+x@bounces.example.com", ErrNotOurs, 0},
		{"altered index", "b-" + parts[1] + "-4-" + parts[3] + "@bounces.example.com", ErrForged, 0},
		{"index dropped", "b-" + parts[1] + "-x-" + parts[3] + "@bounces.example.com", ErrForged, 0},
		{"altered id", "b-" + swapLast(parts[1][:20]) + parts[1][20:] + "-3-" + parts[3] + "@bounces.example.com", ErrForged, 0},
		{"altered tag", "b-" + parts[1] + "-3-" + swapLast(parts[3]) + "@bounces.example.com", ErrForged, 0},
		{"other key", otherKey.Address(id, 3), ErrForged, 0},
		{"tag of other domain", strings.Replace(other.Address(id, 3), "example.net", "example.com", 1), ErrForged, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gotID, gotIdx, err := s.Parse(tc.addr)
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("Parse(%q) = %s, %d, %v; want %v", tc.addr, gotID, gotIdx, err, tc.want)
				}
				return
			}
			if err != nil || gotID != id || gotIdx != tc.wantIdx {
				t.Fatalf("Parse(%q) = %s, %d, %v; want %s, %d", tc.addr, gotID, gotIdx, err, id, tc.wantIdx)
			}
		})
	}
}

// The last id character carries two spare bits: a spelling that sets them
// decodes to the same 16 octets and must still be refused.
func TestParseNonCanonicalID(t *testing.T) {
	s := mustNew(t, "bounces.example.com")
	id := uuid.Nil
	a := s.Address(id, 0) // id is 26 'a's
	alt := strings.Replace(a, strings.Repeat("a", 26), strings.Repeat("a", 25)+"b", 1)
	if _, _, err := s.Parse(alt); err == nil {
		t.Fatalf("Parse(%q) accepted a non-canonical spelling of %q", alt, a)
	}
}

// FuzzRoundTrip: Parse(Address(id, i)) gives back (id, i), in any case, and
// any change of one character to another (ignoring case) is refused.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte("0123456789abcdef"), 0, 5, byte('q'), true)
	f.Add([]byte{0xff, 1, 2}, -1, 40, byte('7'), false)
	f.Add([]byte{}, 999999999, 0, byte('-'), true)
	s := mustNew(f, "bounces.example.com")
	f.Fuzz(func(t *testing.T, idBytes []byte, idx, pos int, repl byte, upper bool) {
		var id uuid.UUID
		copy(id[:], idBytes)
		a := s.Address(id, idx)
		want := idx
		if idx < 0 || idx > MaxIndex {
			want = -1
		}
		in := a
		if upper {
			in = strings.ToUpper(a)
		}
		gotID, gotIdx, err := s.Parse(in)
		if err != nil || gotID != id || gotIdx != want {
			t.Fatalf("Parse(%q) = %s, %d, %v; want %s, %d", in, gotID, gotIdx, err, id, want)
		}
		pos = int(uint(pos) % uint(len(a)))
		if strings.EqualFold(string(a[pos]), string(repl)) {
			return
		}
		changed := a[:pos] + string(repl) + a[pos+1:]
		if gotID, gotIdx, err := s.Parse(changed); err == nil {
			t.Fatalf("Parse(%q) (one character changed from %q) = %s, %d; want an error", changed, a, gotID, gotIdx)
		}
	})
}

// TestParseAny: addresses at the bounce domain and at a custom return
// path domain (bounces.<sending>) verify, each with its own domain bound
// into the tag, so no address verifies once moved to another domain.
func TestParseAny(t *testing.T) {
	s := mustNew(t, "bounces.mailferry.test")
	id := uuid.MustParse("0193a5c2-7c1e-7f3a-9d2b-5e6f70819a2b")
	base := s.Address(id, 2)
	custom := s.AddressAt("Example.COM", id, 2)
	local := func(a string) string { l, _, _ := strings.Cut(a, "@"); return l }
	if !strings.HasSuffix(custom, "@bounces.example.com") {
		t.Fatalf("AddressAt = %q, want it at bounces.example.com", custom)
	}
	if local(custom) == local(base) {
		t.Fatalf("the custom address reuses the bounce domain's tag: %q", custom)
	}
	for _, tc := range []struct {
		name        string
		addr        string
		want        error
		wantSending string
	}{
		{"bounce domain", base, nil, ""},
		{"custom", custom, nil, "example.com"},
		{"custom, upper case", strings.ToUpper(custom), nil, "example.com"},
		{"custom moved to another sending domain", local(custom) + "@bounces.example.org", ErrForged, ""},
		{"bounce domain's tag at a custom domain", local(base) + "@bounces.example.com", ErrForged, ""},
		{"custom tag at the bounce domain", local(custom) + "@bounces.mailferry.test", ErrForged, ""},
		{"custom tag under the sending domain itself", local(custom) + "@example.com", ErrNotOurs, ""},
		{"nested custom", local(custom) + "@bounces.bounces.example.com", ErrForged, ""},
		{"no label after the prefix", local(custom) + "@bounces.", ErrNotOurs, ""},
		{"someone at a custom domain", "postmaster@bounces.example.com", ErrNotOurs, ""},
		{"no domain", local(custom), ErrNotOurs, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sending, gotID, gotIdx, err := s.ParseAny(tc.addr)
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("ParseAny(%q) = %q, %s, %d, %v; want %v", tc.addr, sending, gotID, gotIdx, err, tc.want)
				}
				return
			}
			if err != nil || sending != tc.wantSending || gotID != id || gotIdx != 2 {
				t.Fatalf("ParseAny(%q) = %q, %s, %d, %v; want %q, %s, 2", tc.addr, sending, gotID, gotIdx, err, tc.wantSending, id)
			}
		})
	}
	// Parse keeps to the bounce domain.
	if _, _, err := s.Parse(custom); !errors.Is(err, ErrNotOurs) {
		t.Errorf("Parse(%q) = %v, want ErrNotOurs", custom, err)
	}
}

// FuzzParseAny: AddressAt round-trips through ParseAny for any sending
// domain, and no input makes ParseAny accept an address it did not make.
func FuzzParseAny(f *testing.F) {
	f.Add([]byte("0123456789abcdef"), 7, "example.com", "b-aaaa@bounces.example.com")
	f.Add([]byte{1}, -1, "a.b.c.example", "")
	s := mustNew(f, "bounces.mailferry.test")
	f.Fuzz(func(t *testing.T, idBytes []byte, idx int, sending, addr string) {
		var id uuid.UUID
		copy(id[:], idBytes)
		if sendingOK(sending) {
			a := s.AddressAt(sending, id, idx)
			got, gotID, _, err := s.ParseAny(a)
			if err != nil || got != strings.ToLower(sending) || gotID != id {
				t.Fatalf("ParseAny(%q) = %q, %s, %v; want %q, %s", a, got, gotID, err, sending, id)
			}
		}
		got, gotID, gotIdx, err := s.ParseAny(addr)
		if err != nil {
			return
		}
		// Accepted: it must be exactly what the signer writes.
		var want string
		if got == "" {
			want = s.Address(gotID, gotIdx)
		} else {
			want = s.AddressAt(got, gotID, gotIdx)
		}
		if !strings.EqualFold(addr, want) {
			t.Fatalf("ParseAny accepted %q, which the signer writes as %q", addr, want)
		}
	})
}

// sendingOK: a sending domain whose custom domain is a host name.
func sendingOK(d string) bool {
	if d == "" || len(d) > 200 {
		return false
	}
	for _, l := range strings.Split(d, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
