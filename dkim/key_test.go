package dkim

import (
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

// parseKeyRecord parses a DKIM key record the way RFC 6376 3.6.1 and 3.2
// describe it: tag=value pairs separated by semicolons, v= first.
func parseKeyRecord(t *testing.T, rec string) map[string]string {
	t.Helper()
	tags := map[string]string{}
	for i, spec := range strings.Split(rec, ";") {
		spec = strings.TrimSpace(spec)
		if spec == "" {
			continue
		}
		name, value, ok := strings.Cut(spec, "=")
		if !ok {
			t.Fatalf("record %q: tag %q has no '='", rec, spec)
		}
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if _, dup := tags[name]; dup {
			t.Fatalf("record %q: duplicate tag %q", rec, name)
		}
		if name == "v" && i != 0 {
			t.Fatalf("record %q: v= is not the first tag", rec)
		}
		tags[name] = value
	}
	return tags
}

func TestGenerate(t *testing.T) {
	for _, alg := range []Algorithm{AlgorithmEd25519, AlgorithmRSA2048} {
		t.Run(string(alg), func(t *testing.T) {
			k, err := Generate(nil, "Mail.Example.COM.", "MF2026", alg)
			if err != nil {
				t.Fatal(err)
			}
			if k.Domain != "mail.example.com" || k.Selector != "mf2026" || k.Algorithm != alg {
				t.Errorf("got %s/%s/%s, want mail.example.com/mf2026/%s", k.Domain, k.Selector, k.Algorithm, alg)
			}
			if k.CreatedAt.IsZero() {
				t.Error("CreatedAt is zero")
			}
			if err := k.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
			if got, want := k.DNSName(), "mf2026._domainkey.mail.example.com"; got != want {
				t.Errorf("DNSName = %q, want %q", got, want)
			}

			tags := parseKeyRecord(t, k.DNSValue())
			if tags["v"] != "DKIM1" {
				t.Errorf("v=%q, want DKIM1", tags["v"])
			}
			p, err := base64.StdEncoding.DecodeString(tags["p"])
			if err != nil {
				t.Fatalf("p= is not base64: %v", err)
			}
			if string(p) != string(k.PublicKey) {
				t.Error("p= is not the public key")
			}
			switch alg {
			case AlgorithmEd25519:
				if tags["k"] != "ed25519" || len(p) != ed25519.PublicKeySize {
					t.Errorf("k=%q, %d-byte key; want ed25519, 32 bytes (RFC 8463 4.2)", tags["k"], len(p))
				}
			case AlgorithmRSA2048:
				pub, err := x509.ParsePKIXPublicKey(p)
				if err != nil {
					t.Fatalf("p= is not PKIX: %v", err)
				}
				if tags["k"] != "rsa" || pub.(*rsa.PublicKey).N.BitLen() != 2048 {
					t.Errorf("k=%q, want rsa with a 2048-bit key", tags["k"])
				}
			}
			if _, err := x509.ParsePKCS8PrivateKey(k.PrivateKey); err != nil {
				t.Errorf("private key is not PKCS#8: %v", err)
			}

			for i, s := range k.TXTStrings() {
				if len(s) > 255 {
					t.Errorf("TXT string %d is %d bytes, want <= 255", i, len(s))
				}
			}
			if got := strings.Join(k.TXTStrings(), ""); got != k.DNSValue() {
				t.Errorf("TXTStrings joined = %q, want DNSValue", got)
			}
		})
	}
}

func TestRecordJSON(t *testing.T) {
	k := testEd25519Key(t)
	b, err := json.Marshal(k.Record())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"domain":"example.com","selector":"mf2026","algorithm":"ed25519",` +
		`"dns_name":"mf2026._domainkey.example.com","dns_value":"` + k.DNSValue() + `"}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
}

func TestGenerateRefuses(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		name, domain, selector string
		alg                    Algorithm
		want                   string
	}{
		{"empty domain", "", "s1", AlgorithmEd25519, "invalid domain"},
		{"single label", "localhost", "s1", AlgorithmEd25519, "registered domain"},
		{"underscore in domain", "ex_ample.com", "s1", AlgorithmEd25519, "only letters"},
		{"space in domain", "example .com", "s1", AlgorithmEd25519, "only letters"},
		{"empty label", "example..com", "s1", AlgorithmEd25519, "empty label"},
		{"leading hyphen", "-example.com", "s1", AlgorithmEd25519, "hyphen"},
		{"label too long", long + ".com", "s1", AlgorithmEd25519, "longer than 63"},
		{"U-label", "bücher.example", "s1", AlgorithmEd25519, "A-label"},
		{"at sign", "alice@example.com", "s1", AlgorithmEd25519, "only letters"},
		{"empty selector", "example.com", "", AlgorithmEd25519, "invalid selector"},
		{"selector underscore", "example.com", "_s1", AlgorithmEd25519, "invalid selector"},
		{"selector trailing hyphen", "example.com", "s1-", AlgorithmEd25519, "hyphen"},
		{"selector trailing dot", "example.com", "s1.", AlgorithmEd25519, "empty label"},
		{"selector semicolon", "example.com", "s1;x=1", AlgorithmEd25519, "invalid selector"},
		{"name too long", strings.Repeat("a.", 120) + "com", strings.Repeat("b", 20), AlgorithmEd25519, "253"},
		{"unknown algorithm", "example.com", "s1", "rsa1024", "unknown algorithm"},
		{"empty algorithm", "example.com", "s1", "", "unknown algorithm"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Generate(nil, tt.domain, tt.selector, tt.alg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestSelectorWithDots(t *testing.T) {
	// RFC 6376 3.1: a selector may have several labels.
	k, err := Generate(nil, "example.com", "2026.mailferry", AlgorithmEd25519)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := k.DNSName(), "2026.mailferry._domainkey.example.com"; got != want {
		t.Errorf("DNSName = %q, want %q", got, want)
	}
}

func TestValidateRefuses(t *testing.T) {
	good := testEd25519Key(t)
	other, err := Generate(nil, "example.com", "mf2026", AlgorithmEd25519)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		change func(k *Key)
		want   string
	}{
		{"upper-case domain", func(k *Key) { k.Domain = "Example.com" }, "not normalized"},
		{"bad selector", func(k *Key) { k.Selector = "a b" }, "invalid selector"},
		{"algorithm mismatch", func(k *Key) { k.Algorithm = AlgorithmRSA2048 }, "algorithm says rsa2048"},
		{"no private key", func(k *Key) { k.PrivateKey = nil }, "no private key"},
		{"garbage private key", func(k *Key) { k.PrivateKey = []byte("nope") }, "parse private key"},
		{"public key of another key", func(k *Key) { k.PublicKey = other.PublicKey }, "does not match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := good
			tt.change(&k)
			err := k.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestParseAlgorithm(t *testing.T) {
	for _, s := range []string{"rsa2048", "ed25519"} {
		if a, err := ParseAlgorithm(s); err != nil || string(a) != s {
			t.Errorf("ParseAlgorithm(%q) = %q, %v", s, a, err)
		}
	}
	if _, err := ParseAlgorithm("RSA"); err == nil || !strings.Contains(err.Error(), `"rsa2048" or "ed25519"`) {
		t.Errorf("ParseAlgorithm(RSA) err = %v, want the accepted names", err)
	}
}
