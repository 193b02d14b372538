package mail

import (
	"strings"
	"testing"
)

func TestIsDomainName(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	for _, tc := range []struct {
		d    string
		want bool
	}{
		{"example.com", true},
		{"Mail.Example.COM", true},
		{"xn--bcher-kva.example", true},
		{"a-b.c1", true},
		{"localhost", true},
		{label63 + ".example", true},
		{strings.Repeat("a.", 126) + "a", true}, // 253 octets
		{"", false},
		{"example.com.", false},
		{".example.com", false},
		{"exa mple.com", false},
		{"-a.example", false},
		{"a-.example", false},
		{"a..example", false},
		{label63 + "a.example", false},
		{strings.Repeat("a.", 127) + "a", false}, // 255 octets
		{"bücher.example", false},
		{"[127.0.0.1]", false},
		{"evil.example\r\nX-Injected: 1", false},
	} {
		if got := IsDomainName(tc.d); got != tc.want {
			t.Errorf("IsDomainName(%q) = %v, want %v", tc.d, got, tc.want)
		}
	}
}
