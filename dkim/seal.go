package dkim

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
)

// Errors from Sealer.Open; match them with errors.Is.
var (
	// ErrSecretRequired: the blob is sealed and the Sealer has no secret.
	ErrSecretRequired = errors.New("private key is encrypted but no secret key is configured")
	// ErrSecretMismatch: the blob was sealed under a different secret.
	ErrSecretMismatch = errors.New("secret key does not match the one the private key was encrypted with")
	// ErrCorrupt: the blob is damaged or was altered after sealing.
	ErrCorrupt = errors.New("encrypted private key is corrupt or was tampered with")
)

// Blob formats. The prefix names the format so it can change later and so
// that Open can tell a sealed blob from a plain one.
const (
	plainPrefix = "plain:"
	// "v1:" | key id (8) | nonce (12) | AES-256-GCM ciphertext and tag (16).
	v1Prefix = "v1:"
	keyIDLen = 8
)

// HKDF info strings (RFC 5869 3.2): one secret, independent keys per use.
const (
	v1EncInfo = "mailferry dkim private key v1 aes-256-gcm"
	v1IDInfo  = "mailferry dkim private key v1 key id"
)

// Sealer encrypts private keys at rest under the operator's secret
// (MAILFERRY_SECRET_KEY). It is safe for concurrent use.
type Sealer struct {
	aead  cipher.AEAD // nil in plaintext mode
	keyID []byte      // tells a wrong secret from a damaged blob
}

// NewSealer derives the encryption key from secret with HKDF-SHA256. An
// empty secret gives a Sealer in plaintext mode: Seal marks blobs as plain
// and Open refuses sealed ones. The secret should be at least 32 random
// bytes: HKDF does not stretch a weak password.
func NewSealer(secret []byte) (*Sealer, error) {
	if len(secret) == 0 {
		return &Sealer{}, nil
	}
	key, err := hkdf.Key(sha256.New, secret, nil, v1EncInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("derive encryption key: %w", err)
	}
	id, err := hkdf.Key(sha256.New, secret, nil, v1IDInfo, keyIDLen)
	if err != nil {
		return nil, fmt.Errorf("derive key id: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("aes cipher: %w", err)
	}
	// Random 96-bit nonce, prepended by Seal. Far fewer than 2^32 keys will
	// ever be sealed under one secret.
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, fmt.Errorf("gcm: %w", err)
	}
	return &Sealer{aead: aead, keyID: id}, nil
}

// Encrypts reports whether s has a secret; without one, Seal stores
// plaintext.
func (s *Sealer) Encrypts() bool { return s.aead != nil }

// Seal returns plaintext encrypted, or marked as plain when s has no secret.
func (s *Sealer) Seal(plaintext []byte) ([]byte, error) {
	if s.aead == nil {
		return append([]byte(plainPrefix), plaintext...), nil
	}
	head := s.header()
	out := make([]byte, len(head), len(head)+len(plaintext)+s.aead.Overhead())
	copy(out, head)
	// The header is additional data: changing the version or key id fails.
	return s.aead.Seal(out, nil, plaintext, head), nil
}

// Open returns the plaintext of a blob made by Seal. A plain blob opens
// with or without a secret, so keys stored before a secret was configured
// stay usable.
func (s *Sealer) Open(blob []byte) ([]byte, error) {
	switch {
	case bytes.HasPrefix(blob, []byte(plainPrefix)):
		return bytes.Clone(blob[len(plainPrefix):]), nil
	case bytes.HasPrefix(blob, []byte(v1Prefix)):
		if s.aead == nil {
			return nil, ErrSecretRequired
		}
		head := len(v1Prefix) + keyIDLen
		if len(blob) < head+s.aead.Overhead() {
			return nil, fmt.Errorf("%w: %d bytes is too short", ErrCorrupt, len(blob))
		}
		if subtle.ConstantTimeCompare(blob[len(v1Prefix):head], s.keyID) != 1 {
			return nil, ErrSecretMismatch
		}
		pt, err := s.aead.Open(nil, nil, blob[head:], blob[:head])
		if err != nil {
			return nil, ErrCorrupt
		}
		return pt, nil
	}
	return nil, errors.New("unknown private key format: not made by Sealer.Seal")
}

// IsSealed reports whether blob is encrypted (as opposed to stored plain).
func IsSealed(blob []byte) bool {
	return bytes.HasPrefix(blob, []byte(v1Prefix))
}

func (s *Sealer) header() []byte {
	return append([]byte(v1Prefix), s.keyID...)
}
