package dkim

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Algorithm names a key type as the CLI's --algorithm flag spells it.
type Algorithm string

const (
	AlgorithmRSA2048 Algorithm = "rsa2048"
	AlgorithmEd25519 Algorithm = "ed25519"
)

// rsaBits is the size Generate uses; RFC 8301 3.2 requires at least 1024
// and recommends 2048.
const rsaBits = 2048

// ParseAlgorithm returns the Algorithm named s, or an error listing the
// accepted names.
func ParseAlgorithm(s string) (Algorithm, error) {
	switch a := Algorithm(s); a {
	case AlgorithmRSA2048, AlgorithmEd25519:
		return a, nil
	}
	return "", fmt.Errorf("unknown algorithm %q: want %q or %q", s, AlgorithmRSA2048, AlgorithmEd25519)
}

// keyType is the k= tag of the key record and the first half of a= in a
// signature (RFC 6376 3.6.1, RFC 8463 4).
func (a Algorithm) keyType() string {
	if a == AlgorithmEd25519 {
		return "ed25519"
	}
	return "rsa"
}

// Key is a signing key as the ledger stores it.
type Key struct {
	Domain    string // lower-case ASCII (A-label)
	Selector  string // lower-case
	Algorithm Algorithm
	// PrivateKey is PKCS#8 DER. It is plaintext in memory only; seal it with
	// a Sealer before storing it.
	PrivateKey []byte
	// PublicKey is what the key record publishes: PKIX DER for RSA, the raw
	// 32 bytes for Ed25519 (RFC 8463 4.2).
	PublicKey []byte
	CreatedAt time.Time
}

// Generate creates a key for domain and selector. Both are lower-cased (DNS
// names are case-insensitive) and validated. random is used for Ed25519
// (nil means crypto/rand); since Go 1.26 crypto/rsa always uses its own secure
// source and ignores it.
func Generate(random io.Reader, domain, selector string, alg Algorithm) (Key, error) {
	domain, err := normalizeDomain(domain)
	if err != nil {
		return Key{}, err
	}
	selector, err = normalizeSelector(selector)
	if err != nil {
		return Key{}, err
	}
	if _, err := ParseAlgorithm(string(alg)); err != nil {
		return Key{}, err
	}
	if len(selector)+len("._domainkey.")+len(domain) > 253 {
		return Key{}, fmt.Errorf("key name %s._domainkey.%s is longer than 253 characters", selector, domain)
	}

	var priv crypto.Signer
	var pub []byte
	switch alg {
	case AlgorithmEd25519:
		p, k, err := ed25519.GenerateKey(random)
		if err != nil {
			return Key{}, fmt.Errorf("generate ed25519 key: %w", err)
		}
		priv, pub = k, p
	case AlgorithmRSA2048:
		k, err := rsa.GenerateKey(random, rsaBits)
		if err != nil {
			return Key{}, fmt.Errorf("generate rsa key: %w", err)
		}
		if pub, err = x509.MarshalPKIXPublicKey(&k.PublicKey); err != nil {
			return Key{}, fmt.Errorf("marshal rsa public key: %w", err)
		}
		priv = k
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return Key{}, fmt.Errorf("marshal %s private key: %w", alg, err)
	}
	return Key{
		Domain:     domain,
		Selector:   selector,
		Algorithm:  alg,
		PrivateKey: der,
		PublicKey:  pub,
		// Microseconds: what PostgreSQL keeps, so a stored key reads back equal.
		CreatedAt: time.Now().UTC().Truncate(time.Microsecond),
	}, nil
}

// DNSName is where the key record is published: "<selector>._domainkey.<domain>"
// (RFC 6376 3.6.2.1).
func (k Key) DNSName() string {
	return k.Selector + "._domainkey." + k.Domain
}

// DNSValue is the TXT record text: "v=DKIM1; k=rsa; p=<base64 PKIX>" or
// "v=DKIM1; k=ed25519; p=<base64 raw key>" (RFC 6376 3.6.1, RFC 8463 4).
// An RSA-2048 value is longer than the 255 bytes one TXT string can hold;
// see TXTStrings.
func (k Key) DNSValue() string {
	// RFC 6376 3.6.1: v= MUST be the first tag when present.
	return "v=DKIM1; k=" + k.Algorithm.keyType() + "; p=" + base64.StdEncoding.EncodeToString(k.PublicKey)
}

// TXTStrings splits DNSValue into the character-strings of one TXT record,
// each at most 255 bytes (RFC 1035 3.3.14); a verifier concatenates them
// (RFC 6376 3.6.2.2). For zone files and DNS consoles that want them quoted
// separately.
func (k Key) TXTStrings() []string {
	v := k.DNSValue()
	var out []string
	for len(v) > 255 {
		out = append(out, v[:255])
		v = v[255:]
	}
	return append(out, v)
}

// DNSRecord is what `mailferry dkim keygen --json` prints.
type DNSRecord struct {
	Domain    string `json:"domain"`
	Selector  string `json:"selector"`
	Algorithm string `json:"algorithm"`
	DNSName   string `json:"dns_name"`
	DNSValue  string `json:"dns_value"`
}

// Record returns the TXT record to publish for k.
func (k Key) Record() DNSRecord {
	return DNSRecord{
		Domain:    k.Domain,
		Selector:  k.Selector,
		Algorithm: string(k.Algorithm),
		DNSName:   k.DNSName(),
		DNSValue:  k.DNSValue(),
	}
}

// Validate reports whether k can sign: names and algorithm are valid, the
// private key parses as that algorithm and matches PublicKey (a mismatch
// would sign every message with a key no receiver can check).
func (k Key) Validate() error {
	if err := k.checkNames(); err != nil {
		return err
	}
	p, err := parsePrivateKey(k.DNSName(), k.PrivateKey)
	if err != nil {
		return err
	}
	return k.match(p)
}

// checkNames checks that Domain and Selector are valid and normalized, and
// Algorithm is known.
func (k Key) checkNames() error {
	if d, err := normalizeDomain(k.Domain); err != nil {
		return err
	} else if d != k.Domain {
		return fmt.Errorf("domain %q is not normalized: want %q", k.Domain, d)
	}
	if s, err := normalizeSelector(k.Selector); err != nil {
		return err
	} else if s != k.Selector {
		return fmt.Errorf("selector %q is not normalized: want %q", k.Selector, s)
	}
	_, err := ParseAlgorithm(string(k.Algorithm))
	return err
}

// parsedKey is a private key ready to sign, with what it was parsed as.
type parsedKey struct {
	signer crypto.Signer
	alg    Algorithm
	pub    []byte // as Key.PublicKey holds it
}

// parsePrivateKey parses PKCS#8 DER; name is for errors.
func parsePrivateKey(name string, der []byte) (parsedKey, error) {
	if len(der) == 0 {
		return parsedKey{}, fmt.Errorf("key %s: no private key", name)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return parsedKey{}, fmt.Errorf("key %s: parse private key: %w", name, err)
	}
	switch p := parsed.(type) {
	case ed25519.PrivateKey:
		return parsedKey{signer: p, alg: AlgorithmEd25519, pub: p.Public().(ed25519.PublicKey)}, nil
	case *rsa.PrivateKey:
		// Sign with what the algorithm name promises; RFC 8301 3.2 makes
		// receivers reject anything under 1024 bits.
		if bits := p.N.BitLen(); bits != rsaBits {
			return parsedKey{}, fmt.Errorf("key %s: rsa key has %d bits, want %d", name, bits, rsaBits)
		}
		pub, err := x509.MarshalPKIXPublicKey(&p.PublicKey)
		if err != nil {
			return parsedKey{}, fmt.Errorf("key %s: marshal public key: %w", name, err)
		}
		return parsedKey{signer: p, alg: AlgorithmRSA2048, pub: pub}, nil
	}
	return parsedKey{}, fmt.Errorf("key %s: unsupported private key type %T", name, parsed)
}

// match checks that p is k's private key.
func (k Key) match(p parsedKey) error {
	if p.alg != k.Algorithm {
		return fmt.Errorf("key %s: private key is %s, algorithm says %s", k.DNSName(), p.alg, k.Algorithm)
	}
	if !bytes.Equal(p.pub, k.PublicKey) {
		return fmt.Errorf("key %s: private key does not match the published public key", k.DNSName())
	}
	return nil
}

var errEmptyName = errors.New("is empty")

// normalizeDomain lower-cases domain, drops one trailing dot and checks it is
// a host name of at least two labels in A-label form.
func normalizeDomain(domain string) (string, error) {
	d := strings.TrimSuffix(strings.ToLower(domain), ".")
	if err := checkName(d); err != nil {
		return "", fmt.Errorf("invalid domain %q: %w", domain, err)
	}
	if len(d) > 253 {
		return "", fmt.Errorf("invalid domain %q: longer than 253 characters", domain)
	}
	if !strings.Contains(d, ".") {
		return "", fmt.Errorf("invalid domain %q: want a registered domain such as example.com", domain)
	}
	return d, nil
}

// normalizeSelector lower-cases selector and checks RFC 6376 3.1:
// selector = sub-domain *( "." sub-domain ).
func normalizeSelector(selector string) (string, error) {
	s := strings.ToLower(selector)
	if err := checkName(s); err != nil {
		return "", fmt.Errorf("invalid selector %q: %w", selector, err)
	}
	return s, nil
}

// checkName checks dot-separated labels against RFC 5321 4.1.2 sub-domain:
// Let-dig [Ldh-str], at most 63 octets each (RFC 1035 2.3.4).
func checkName(name string) error {
	if name == "" {
		return errEmptyName
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" {
			return errors.New("has an empty label")
		}
		if len(label) > 63 {
			return fmt.Errorf("label %q is longer than 63 characters", label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			case c == '-':
				if i == 0 || i == len(label)-1 {
					return fmt.Errorf("label %q starts or ends with a hyphen", label)
				}
			case c >= 0x80:
				return errors.New("is not ASCII; use the A-label (xn--) form")
			default:
				return fmt.Errorf("has %q; only letters, digits, hyphens and dots are allowed", c)
			}
		}
	}
	return nil
}
