package submission

import (
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
)

func TestLooksLikeCredential(t *testing.T) {
	random := func(n int) string {
		b := make([]byte, n)
		_, _ = rand.Read(b)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	key := "mf_kabcdefghijkl_" + random(32)
	tests := []struct {
		user string
		want bool
	}{
		{"acme", false},
		{"", false},
		{"globex-production", false},
		{"customer-production-eu-west-1", false},
		{"AcmeCorp2024Production", false},
		{"team.billing+alerts@example.com", false},
		{"Tenant_Number_42_Of_Many", true}, // a false positive: mixed short runs
		{"prod-2024-11-eu-central-1-billing", false},
		{"ACME_CORPORATION_EUROPE_GMBH_2024", false},
		{"averyveryverylongtenantnamewithoutbreaks", false},
		{key, true},
		{key[:30], true},                               // cut short
		{" " + key, true},                              // with a space before it
		{key[len("mf_kabcdefghijkl_"):], true},         // the random part alone
		{"Zq8Xw3Lp9Tk2Mv7Rb4Ny", true},                 // 20 characters of mixed classes
		{"0123456789abcdef0123456789abcdef", true},     // hex token
		{"3f2a1c9e-8b7d-4e6f-a5c4-b3a2918f7e6d", true}, // a UUID
		{"sk_live_" + random(24), true},
		{"ghp_" + random(27), true},
	}
	for _, tt := range tests {
		if got := looksLikeCredential(tt.user); got != tt.want {
			t.Errorf("looksLikeCredential(%q) = %v, want %v (entropy %.2f)", tt.user, got, tt.want, entropy(tt.user))
		}
		red := redactUser(tt.user)
		if tt.want && (strings.Contains(red, tt.user) || !strings.HasPrefix(red, "[redacted")) {
			t.Errorf("redactUser(%q) = %q", tt.user, red)
		}
		if !tt.want && red != tt.user {
			t.Errorf("redactUser(%q) = %q, want it unchanged", tt.user, red)
		}
	}
	// Random tokens of our secrets' size, many times over: none slips
	// through.
	for range 5000 {
		if tok := random(32); !looksLikeCredential(tok) {
			t.Fatalf("random token %q (entropy %.2f) not taken for a credential", tok, entropy(tok))
		}
	}
}
