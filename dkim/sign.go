package dkim

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// SignOptions configures a Signer.
type SignOptions struct {
	// Now stamps t=; nil means time.Now.
	Now func() time.Time
	// Expiration adds x= that far after t= (RFC 6376 3.5); 0 means no x=.
	// The worker signs once and resends the same bytes on every retry, so
	// it must exceed the maximum queue age or late deliveries fail to verify.
	Expiration time.Duration
}

// maxCachedKeys bounds the parsed-key cache; keys are few (a couple per
// sending domain), so reaching it means churn and the cache starts over.
const maxCachedKeys = 1024

// Signer makes DKIM signatures. It is safe for concurrent use and keeps
// parsed private keys, so each Key's PKCS#8 is parsed once.
type Signer struct {
	now        func() time.Time
	expiration time.Duration

	mu     sync.RWMutex
	parsed map[string]parsedKey // by PKCS#8 DER
}

// NewSigner returns a Signer. A negative Expiration is a programming error
// and panics.
func NewSigner(opts SignOptions) *Signer {
	if opts.Expiration < 0 {
		panic(fmt.Sprintf("dkim: negative SignOptions.Expiration %v", opts.Expiration))
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Signer{now: opts.Now, expiration: opts.Expiration, parsed: make(map[string]parsedKey)}
}

// Sign returns the DKIM-Signature header fields for message, one per key,
// folded and CRLF-terminated, to prepend to it. message is a complete RFC
// 5322 message with CRLF line endings; it is not modified. Two keys for a
// domain, RSA and Ed25519, give two signatures (RFC 8463 6).
//
// Canonicalization is relaxed/relaxed. Signed: From, listed once more than
// present (RFC 6376 8.15), and To, Cc, Subject, Date, Message-ID, Reply-To,
// MIME-Version, Content-Type, Content-Transfer-Encoding, List-Unsubscribe
// and List-Unsubscribe-Post when present.
func (s *Signer) Sign(ctx context.Context, keys []Key, message []byte) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if len(keys) == 0 {
		return "", errors.New("sign: no keys")
	}
	signers := make([]crypto.Signer, len(keys))
	for i, k := range keys {
		for _, prev := range keys[:i] {
			if prev.Domain == k.Domain && prev.Selector == k.Selector {
				return "", fmt.Errorf("sign: key %s given twice", k.DNSName())
			}
		}
		p, err := s.key(k)
		if err != nil {
			return "", fmt.Errorf("sign: %w", err)
		}
		signers[i] = p
	}

	fields, body, err := splitMessage(message)
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	names, canonHeaders, err := selectFields(fields)
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	// One body hash serves every key: all use relaxed and SHA-256.
	h := sha256.New()
	if err := hashBodyRelaxed(h, body, len(message)-len(body)); err != nil {
		return "", fmt.Errorf("sign: body: %w", err)
	}
	bh := base64.StdEncoding.EncodeToString(h.Sum(nil))

	t := s.now().Unix()
	var x int64
	if s.expiration > 0 {
		// RFC 6376 3.5: x= MUST be greater than t=; round up to a second.
		x = t + int64((s.expiration+time.Second-1)/time.Second)
	}

	var out strings.Builder
	for i, k := range keys {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		w := newHeaderWriter()
		w.tag("v=1;")
		w.tag("a=" + k.Algorithm.keyType() + "-sha256;")
		w.tag("c=relaxed/relaxed;")
		w.tag("d=" + k.Domain + ";")
		w.tag("s=" + k.Selector + ";")
		w.tag("t=" + strconv.FormatInt(t, 10) + ";")
		if x != 0 {
			w.tag("x=" + strconv.FormatInt(x, 10) + ";")
		}
		w.list("h=", names)
		w.tag("bh=" + bh + ";")
		w.startB()

		// RFC 6376 3.7: the signed fields, then this field with an empty
		// b= value and no trailing CRLF, all canonicalized.
		h.Reset()
		h.Write(canonHeaders)
		self := relaxHeader(make([]byte, 0, len(w.buf)), w.buf)
		h.Write(self[:len(self)-2])
		digest := h.Sum(nil)

		var opts crypto.SignerOpts = crypto.SHA256
		if k.Algorithm == AlgorithmEd25519 {
			// RFC 8463 3: PureEdDSA over the SHA-256 digest, not Ed25519ph.
			opts = crypto.Hash(0)
		}
		sig, err := signers[i].Sign(rand.Reader, digest, opts)
		if err != nil {
			return "", fmt.Errorf("sign with key %s: %w", k.DNSName(), err)
		}
		w.fill(base64.StdEncoding.EncodeToString(sig))
		out.Write(w.buf)
	}
	return out.String(), nil
}

// key returns k's parsed private key, from the cache when k was seen
// before. Names, algorithm and public key are checked on every call: they
// are cheap to check and not part of the cache key.
func (s *Signer) key(k Key) (crypto.Signer, error) {
	if err := k.checkNames(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	p, ok := s.parsed[string(k.PrivateKey)]
	s.mu.RUnlock()
	if !ok {
		var err error
		if p, err = parsePrivateKey(k.DNSName(), k.PrivateKey); err != nil {
			return nil, err
		}
		s.mu.Lock()
		if len(s.parsed) >= maxCachedKeys {
			clear(s.parsed)
		}
		s.parsed[string(k.PrivateKey)] = p
		s.mu.Unlock()
	}
	if err := k.match(p); err != nil {
		return nil, err
	}
	return p.signer, nil
}

// maxLine is the line length RFC 5322 2.1.1 says SHOULD NOT be exceeded.
const maxLine = 78

// headerWriter lays out a DKIM-Signature field, folding at tag boundaries,
// after colons in h= and inside base64 values, all places where RFC 6376
// 3.5 allows FWS. A value that cannot be broken (a long d=) overflows; RFC
// 5322's hard limit of 998 is far beyond any legal tag.
type headerWriter struct {
	buf []byte
	col int
}

func newHeaderWriter() *headerWriter {
	w := &headerWriter{buf: make([]byte, 0, 768)}
	w.buf = append(w.buf, "DKIM-Signature:"...)
	w.col = len(w.buf)
	return w
}

// fold starts a continuation line.
func (w *headerWriter) fold() {
	w.buf = append(w.buf, "\r\n "...)
	w.col = 1
}

// tag writes an unbreakable token after a space or a fold.
func (w *headerWriter) tag(t string) {
	if w.col+1+len(t) > maxLine && w.col > 1 {
		w.fold()
	} else {
		w.buf = append(w.buf, ' ')
		w.col++
	}
	w.buf = append(w.buf, t...)
	w.col += len(t)
}

// list writes name followed by items separated by colons, folding after a
// colon when the next item does not fit.
func (w *headerWriter) list(name string, items []string) {
	for i, item := range items {
		t := item + ":"
		if i == len(items)-1 {
			t = item + ";"
		}
		if i == 0 {
			w.tag(name + t)
			continue
		}
		if w.col+len(t) > maxLine {
			w.fold()
		}
		w.buf = append(w.buf, t...)
		w.col += len(t)
	}
}

// startB writes "b=" on a line of its own; the field up to here is what
// the signature covers.
func (w *headerWriter) startB() {
	w.fold()
	w.buf = append(w.buf, "b="...)
	w.col += 2
}

// fill writes the b= value, filling each line, and ends the field.
func (w *headerWriter) fill(v string) {
	for v != "" {
		if w.col >= maxLine {
			w.fold()
		}
		n := min(maxLine-w.col, len(v))
		w.buf = append(w.buf, v[:n]...)
		w.col += n
		v = v[n:]
	}
	w.buf = append(w.buf, '\r', '\n')
}
