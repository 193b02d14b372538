// Package dkim makes and keeps Mailferry's DKIM signing keys and signs
// outbound messages with them (RFC 6376, Ed25519 per RFC 8463).
//
// Keys: [Generate] creates a [Key] for a domain and selector; [Key.Record]
// gives the TXT record to publish. The private key is PKCS#8 DER; a [Sealer]
// encrypts it for storage under MAILFERRY_SECRET_KEY.
//
// Signing: a [Signer] returns the DKIM-Signature header fields for a message,
// one per key (an RSA and an Ed25519 key for a domain give two signatures,
// RFC 8463 6). The caller prepends them to the message; the delivery worker
// signs once and stores the result so that every retry sends the same bytes.
//
// The signatures are verified in the tests by
// github.com/emersion/go-msgauth/dkim, but produced here: go-msgauth v0.7.0
// stamps t= from a package-level clock that cannot be injected (so no golden
// bytes and no x= consistent with an injected clock), folds the first line
// and h= past 78 characters, and runs a goroutine and pipe per signature.
// Computing the two hashes ourselves lets one pass over the body serve every
// signature of a message.
//
// The package does no I/O and holds no package-level state.
package dkim
