package dkim

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func newSealer(t *testing.T, secret string) *Sealer {
	t.Helper()
	s, err := NewSealer([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSealRoundTrip(t *testing.T) {
	k := testEd25519Key(t)
	tests := []struct {
		name, secret string
		sealed       bool
	}{
		{"with secret", "0123456789abcdef0123456789abcdef", true},
		{"plaintext mode", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSealer(t, tt.secret)
			if s.Encrypts() != tt.sealed {
				t.Errorf("Encrypts() = %v, want %v", s.Encrypts(), tt.sealed)
			}
			blob, err := s.Seal(k.PrivateKey)
			if err != nil {
				t.Fatal(err)
			}
			if IsSealed(blob) != tt.sealed {
				t.Errorf("IsSealed = %v, want %v", IsSealed(blob), tt.sealed)
			}
			if tt.sealed && bytes.Contains(blob, k.PrivateKey[len(k.PrivateKey)-32:]) {
				t.Error("sealed blob contains the private key")
			}
			got, err := s.Open(blob)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, k.PrivateKey) {
				t.Error("Open(Seal(x)) != x")
			}
		})
	}
}

func TestSealNonceIsRandom(t *testing.T) {
	s := newSealer(t, "secret-secret-secret-secret-1234")
	a, _ := s.Seal([]byte("same"))
	b, _ := s.Seal([]byte("same"))
	if bytes.Equal(a, b) {
		t.Error("two seals of the same plaintext are equal")
	}
}

func TestOpenRefuses(t *testing.T) {
	secret := "0123456789abcdef0123456789abcdef"
	sealed, err := newSealer(t, secret).Seal([]byte("private key bytes"))
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		b := bytes.Clone(sealed)
		b[i] ^= 1
		return b
	}
	tests := []struct {
		name    string
		secret  string
		blob    []byte
		wantErr error
		want    string
	}{
		{"wrong secret", "another secret, 32 bytes long...", sealed, ErrSecretMismatch, "does not match"},
		{"no secret", "", sealed, ErrSecretRequired, "no secret key is configured"},
		{"ciphertext tampered", secret, flip(len(sealed) - 20), ErrCorrupt, "tampered"},
		{"tag tampered", secret, flip(len(sealed) - 1), ErrCorrupt, "tampered"},
		{"nonce tampered", secret, flip(len(v1Prefix) + keyIDLen), ErrCorrupt, "tampered"},
		{"truncated", secret, sealed[:len(v1Prefix)+keyIDLen+10], ErrCorrupt, "too short"},
		{"key id tampered", secret, flip(len(v1Prefix)), ErrSecretMismatch, "does not match"},
		{"unknown format", secret, []byte("v9:whatever"), nil, "unknown private key format"},
		{"raw DER", "", []byte{0x30, 0x2e, 0x02, 0x01}, nil, "unknown private key format"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newSealer(t, tt.secret).Open(tt.blob)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want errors.Is %v", err, tt.wantErr)
			}
		})
	}
}

func TestOpenPlainWithSecret(t *testing.T) {
	// Keys stored before a secret was configured stay usable.
	plain, _ := newSealer(t, "").Seal([]byte("key"))
	got, err := newSealer(t, "0123456789abcdef0123456789abcdef").Open(plain)
	if err != nil || string(got) != "key" {
		t.Fatalf("Open = %q, %v; want key", got, err)
	}
}

func TestSealFormat(t *testing.T) {
	s := newSealer(t, "0123456789abcdef0123456789abcdef")
	blob, _ := s.Seal([]byte("abc"))
	// "v1:" | key id | nonce | ciphertext | tag
	if want := len("v1:") + 8 + 12 + 3 + 16; len(blob) != want || !bytes.HasPrefix(blob, []byte("v1:")) {
		t.Errorf("blob %q: %d bytes, want v1: prefix and %d bytes", blob, len(blob), want)
	}
	plain, _ := newSealer(t, "").Seal([]byte("abc"))
	if string(plain) != "plain:abc" {
		t.Errorf("plain blob = %q, want plain:abc", plain)
	}
}
