package submission

import (
	"crypto/sha256"
	"encoding/hex"
	"math"
	"strings"
	"unicode"
)

// redactUser is an AUTH user name as it may appear in a log line. A user
// name is the tenant, which operators choose and want to see; but a
// client that swaps user and password, or pastes its key in both, sends
// the API key as the user name, and a log must never hold a key. A name
// that looks like a credential is replaced by a short fingerprint, enough
// to tell repeated attempts apart and useless for logging in.
func redactUser(user string) string {
	if !looksLikeCredential(user) {
		return user
	}
	sum := sha256.Sum256([]byte(user))
	return "[redacted credential-shaped user name, sha256 " + hex.EncodeToString(sum[:4]) + "]"
}

// looksLikeCredential reports whether s is shaped like a secret: one of
// our API keys ("mf_" + key id + "_" + base64url, see store/keys.go),
// whole or cut; a long hex token (hex keys, UUIDs); or a long token that
// reads like random text rather than words (base64 keys, other services'
// tokens). A tenant name that trips this only loses its readability in
// the log.
func looksLikeCredential(s string) bool {
	if strings.Contains(s, "mf_") {
		return true
	}
	if len(s) < 20 || strings.IndexFunc(s, unicode.IsSpace) >= 0 {
		return false
	}
	hexDigits := 0
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' {
			hexDigits++
		}
	}
	if hexDigits >= 32 && hexDigits+strings.Count(s, "-") == len(s) {
		return true
	}
	// Names are mostly runs of letters or digits four or longer (words,
	// years); random base64 seldom has such runs. 32 random bytes in
	// base64, our secrets' size, always pass one test or the other.
	return wordy(s) < 0.5 || entropy(s) >= 4.3
}

// class is a byte's kind for wordy: upper, lower, digit or other (0).
func class(c byte) int {
	switch {
	case c >= 'A' && c <= 'Z':
		return 1
	case c >= 'a' && c <= 'z':
		return 2
	case c >= '0' && c <= '9':
		return 3
	}
	return 0
}

// wordy is the share of s in runs of four or more upper-case letters,
// lower-case letters or digits.
func wordy(s string) float64 {
	in := 0
	for i := 0; i < len(s); {
		j := i + 1
		for j < len(s) && class(s[j]) == class(s[i]) {
			j++
		}
		if class(s[i]) != 0 && j-i >= 4 {
			in += j - i
		}
		i = j
	}
	return float64(in) / float64(len(s))
}

// entropy is the Shannon entropy of s in bits per byte: over 4.3 for
// random base64 of 32 bytes or more, under 4 for most names.
func entropy(s string) float64 {
	var counts [256]int
	for i := 0; i < len(s); i++ {
		counts[s[i]]++
	}
	var h float64
	n := float64(len(s))
	for _, c := range counts {
		if c > 0 {
			p := float64(c) / n
			h -= p * math.Log2(p)
		}
	}
	return h
}
