// Package returnpath makes and checks VERP return paths: the envelope sender
// of each transaction is an address at the bounce domain whose local part
// names the message and the recipient, with an HMAC tag so that a bounce or
// complaint can be trusted to concern a message Mailferry sent.
//
// The local part is
//
//	b-<message id>-<recipient index or "x">-<tag>
//
// with the message id as 26 lower-case base32 characters (RFC 4648 6, no
// padding), the recipient index in decimal without leading zeros ("x" when
// the transaction has several recipients), and the tag the first 80 bits of
// HMAC-SHA256 over the domain, the id and the index, also in base32. At most
// 55 octets, within RFC 5321 4.5.3.1.1's 64; letters, digits and '-' only,
// which no MTA quotes, rewrites or splits (no '+', '=' or '.'). Some MTAs
// change the case of a local part, so Parse folds it.
//
// The package does no I/O; a Signer is safe for concurrent use.
package returnpath

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/mail"
)

// Kinds of Parse error, matched with errors.Is.
var (
	// ErrNotOurs: the address is at another domain or is not shaped as a
	// return path of this package.
	ErrNotOurs = errors.New("not a return path of ours")
	// ErrForged: shaped as ours, but the tag does not match the id and index.
	ErrForged = errors.New("return path tag does not match")
)

const (
	prefix = "b-"
	// MinKeyLen is the shortest key New accepts, in bytes.
	MinKeyLen = 16
	// MaxIndex is the largest recipient index an address names; a larger
	// one is written as "x", like a transaction of several recipients.
	MaxIndex = 999_999_999
	idLen    = 26 // base32 of 16 octets, no padding
	tagBytes = 10 // 80 bits of HMAC-SHA256
	tagLen   = 16 // base32 of 10 octets
	// maxLocal is the RFC 5321 4.5.3.1.1 limit; ours is at most
	// 2 + 26 + 1 + 9 + 1 + 16 = 55.
	maxLocal = 64
)

// b32 is RFC 4648 6 base32 without padding.
var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// Signer makes and checks return paths at one domain with one key.
type Signer struct {
	domain string // lower case
	key    []byte
}

// New returns a Signer for return paths at domain (a host name, as
// mail.IsDomainName spells it; case does not matter) keyed by key, which
// must be at least MinKeyLen bytes.
func New(domain string, key []byte) (*Signer, error) {
	if !mail.IsDomainName(domain) {
		return nil, fmt.Errorf("returnpath: bounce domain %q is not a host name (RFC 5321 4.1.2 Domain)", domain)
	}
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("returnpath: the key is %d bytes; at least %d are needed", len(key), MinKeyLen)
	}
	return &Signer{domain: strings.ToLower(domain), key: append([]byte(nil), key...)}, nil
}

// Domain returns the bounce domain in lower case.
func (s *Signer) Domain() string { return s.domain }

// Address returns the return path for recipient rcptIdx of message
// messageID; rcptIdx < 0 (or > MaxIndex) when the transaction has several
// recipients.
func (s *Signer) Address(messageID uuid.UUID, rcptIdx int) string {
	return s.address(s.domain, messageID, rcptIdx)
}

// CustomPrefix is the label a sending domain's custom return path domain
// starts with: bounces.<domain>, a CNAME to the bounce domain (README
// "Onboarding a sending domain").
const CustomPrefix = "bounces."

// CustomDomain is the custom return path domain of sending domain d.
func CustomDomain(d string) string { return CustomPrefix + strings.ToLower(d) }

// AddressAt is Address at sending domain's custom return path domain
// (CustomDomain), so that SPF checks a name under the From domain and
// aligns with it (RFC 7489 3.1.2). The tag binds that domain: an address
// moved to another domain does not verify.
func (s *Signer) AddressAt(sending string, messageID uuid.UUID, rcptIdx int) string {
	return s.address(CustomDomain(sending), messageID, rcptIdx)
}

func (s *Signer) address(domain string, messageID uuid.UUID, rcptIdx int) string {
	idx := indexText(rcptIdx)
	id := strings.ToLower(b32.EncodeToString(messageID[:]))
	return prefix + id + "-" + idx + "-" + s.tag(domain, messageID, idx) + "@" + domain
}

// Parse checks addr (local@domain, without angle brackets) and returns the
// message id and recipient index it names; the index is -1 when the return
// path names none. The error wraps ErrNotOurs when addr is at another
// domain or not shaped as ours, ErrForged when the tag does not match.
func (s *Signer) Parse(addr string) (messageID uuid.UUID, rcptIdx int, err error) {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 || !strings.EqualFold(addr[at+1:], s.domain) {
		return uuid.UUID{}, 0, fmt.Errorf("return path %q: %w", addr, ErrNotOurs)
	}
	return s.parse(addr, s.domain)
}

// ParseAny is Parse for an address at the bounce domain or at any custom
// return path domain (bounces.<sending domain>, as AddressAt writes it).
// sending is the sending domain in lower case, "" at the bounce domain.
// Whether that domain has its custom return path verified is the
// caller's question; a tag that verifies means this Signer's key made the
// address, for that very domain.
func (s *Signer) ParseAny(addr string) (sending string, messageID uuid.UUID, rcptIdx int, err error) {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return "", uuid.UUID{}, 0, fmt.Errorf("return path %q: %w", addr, ErrNotOurs)
	}
	domain := strings.ToLower(addr[at+1:])
	if domain != s.domain {
		d, ok := strings.CutPrefix(domain, CustomPrefix)
		if !ok || !mail.IsDomainName(d) {
			return "", uuid.UUID{}, 0, fmt.Errorf("return path %q: %w", addr, ErrNotOurs)
		}
		sending = d
	}
	messageID, rcptIdx, err = s.parse(addr, domain)
	if err != nil {
		return "", uuid.UUID{}, 0, err
	}
	return sending, messageID, rcptIdx, nil
}

// parse checks addr's local part against domain (lower case), which the
// caller matched to addr's.
func (s *Signer) parse(addr, domain string) (messageID uuid.UUID, rcptIdx int, err error) {
	at := strings.LastIndexByte(addr, '@')
	local := addr[:at]
	if len(local) > maxLocal {
		return uuid.UUID{}, 0, fmt.Errorf("return path %q: %w", addr, ErrNotOurs)
	}
	local = strings.ToLower(local)
	rest, ok := strings.CutPrefix(local, prefix)
	if !ok {
		return uuid.UUID{}, 0, fmt.Errorf("return path %q: %w", addr, ErrNotOurs)
	}
	parts := strings.Split(rest, "-")
	if len(parts) != 3 || len(parts[0]) != idLen || len(parts[2]) != tagLen {
		return uuid.UUID{}, 0, fmt.Errorf("return path %q: %w", addr, ErrNotOurs)
	}
	raw, err := decode(parts[0])
	if err != nil || len(raw) != len(messageID) {
		return uuid.UUID{}, 0, fmt.Errorf("return path %q: message id: %w", addr, ErrNotOurs)
	}
	copy(messageID[:], raw)
	idx, ok := parseIndex(parts[1])
	if !ok {
		return uuid.UUID{}, 0, fmt.Errorf("return path %q: recipient index: %w", addr, ErrNotOurs)
	}
	got, err := decode(parts[2])
	if err != nil || len(got) != tagBytes {
		return uuid.UUID{}, 0, fmt.Errorf("return path %q: tag: %w", addr, ErrNotOurs)
	}
	if !hmac.Equal(got, s.mac(domain, messageID, parts[1])) { // constant time
		return uuid.UUID{}, 0, fmt.Errorf("return path %q: %w", addr, ErrForged)
	}
	return messageID, idx, nil
}

// tag is the base32 text of mac.
func (s *Signer) tag(domain string, id uuid.UUID, idx string) string {
	return strings.ToLower(b32.EncodeToString(s.mac(domain, id, idx)))
}

// mac is the truncated HMAC over the domain, id and index text. The NUL
// separators keep the fields apart; the domain binds a tag to the domain
// of the address (the bounce domain or a custom one), so a key shared by
// two deployments does not share tags and a tag does not move between
// domains.
func (s *Signer) mac(domain string, id uuid.UUID, idx string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte("mailferry-verp-1\x00"))
	m.Write([]byte(domain))
	m.Write([]byte{0})
	m.Write(id[:])
	m.Write([]byte{0})
	m.Write([]byte(idx))
	return m.Sum(nil)[:tagBytes]
}

// decode reads lower-case base32 and refuses any spelling other than the
// one EncodeToString gives: 26 characters carry 130 bits for 128, and a
// change to the 2 spare bits of the last one must not name the same id.
func decode(s string) ([]byte, error) {
	up := strings.ToUpper(s)
	b, err := b32.DecodeString(up)
	if err != nil {
		return nil, err
	}
	if b32.EncodeToString(b) != up {
		return nil, errors.New("non-canonical base32")
	}
	return b, nil
}

func indexText(i int) string {
	if i < 0 || i > MaxIndex {
		return "x"
	}
	return strconv.Itoa(i)
}

// parseIndex reads the index as indexText writes it: "x", "0", or digits
// without a leading zero, so each index has one spelling.
func parseIndex(s string) (int, bool) {
	if s == "x" {
		return -1, true
	}
	if s == "" || len(s) > 9 || (s[0] == '0' && len(s) > 1) {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}
