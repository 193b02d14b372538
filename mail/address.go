package mail

import (
	"errors"
	"fmt"
	"mime"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-message/charset"
	"golang.org/x/net/idna"
)

// Address is one mailbox. Addr is the addr-spec "local@domain" with the
// domain lower-cased in IDNA A-label form and the local part as written (it
// is case-sensitive, RFC 5321 2.4), quoted only when it is not a dot-atom.
// Name is the decoded display name; it may be "".
type Address struct {
	Name string
	Addr string
}

const (
	maxAddrLen   = 254 // RFC 5321 4.5.3.1.3: a path is 256 octets with its angle brackets
	maxLocalLen  = 64  // RFC 5321 4.5.3.1.1
	maxDomainLen = 253 // RFC 1035 2.3.4: 255 octets in wire form
	maxLabelLen  = 63  // RFC 1035 2.3.4
	// maxAddressInput bounds the work one ParseAddress call does; a longer
	// mailbox is a display name nobody needs.
	maxAddressInput = 2048
	// maxNameLen bounds the display name so that its encoded form (RFC 2047
	// can triple it) still fits maxAddressInput when read back.
	maxNameLen = 320
)

// ParseAddress parses one mailbox: "alice@example.com", "Alice
// <alice@example.com>", a quoted or RFC 2047 encoded display name. It
// refuses CR, LF and NUL, groups, lists, address literals, domains without a
// dot, and addresses over the RFC 5321 length limits.
func ParseAddress(s string) (Address, error) {
	if detail := checkHeaderText(s); detail != "" {
		return Address{}, errors.New(detail)
	}
	if len(s) > maxAddressInput {
		return Address{}, fmt.Errorf("invalid address: longer than %d octets", maxAddressInput)
	}
	p := addrParser{s: s}
	a, err := p.mailbox()
	if err != nil {
		return Address{}, err
	}
	if len(a.Name) > maxNameLen {
		return Address{}, fmt.Errorf("invalid address: display name longer than %d octets", maxNameLen)
	}
	if !p.empty() {
		if p.peek() == ',' {
			return Address{}, errors.New("invalid address: only one address is allowed here")
		}
		return Address{}, fmt.Errorf("invalid address: unexpected %q after the address", p.s)
	}
	return a, nil
}

// ParsePath parses the mailbox of an SMTP path as go-smtp's server hands
// it over: local@domain with a quoted local part already unquoted
// ("a b"@example.com arrives as a b@example.com). Unlike ParseAddress it
// takes no display name and no comment, which have no place in a path
// (RFC 5321 4.1.2), so that what a client names in RCPT TO is the mailbox
// it gets. The local part is quoted again where it needs it and held to
// CheckLocalPart, the domain to the rules of ParseAddress.
func ParsePath(s string) (Address, error) {
	if detail := checkHeaderText(s); detail != "" {
		return Address{}, errors.New("invalid address: " + detail)
	}
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return Address{}, errors.New(`invalid address: missing "@domain"`)
	}
	local, domain := s[:at], s[at+1:]
	if local == "" {
		return Address{}, errors.New("invalid address: empty local part")
	}
	if strings.HasPrefix(domain, "[") {
		// RFC 5321 4.1.3: we route by MX only and never deliver to literals.
		return Address{}, errors.New("invalid address: address literals are not accepted; use a domain name")
	}
	if domain == "" || !isDotAtom(domain) {
		return Address{}, errors.New("invalid address: the domain is not a host name")
	}
	return newAddress("", local, domain)
}

// Domain is the ASCII (A-label) domain of the address.
func (a Address) Domain() string { return domainOf(a.Addr) }

// NeedsSMTPUTF8 reports whether the local part has non-ASCII characters, so
// that the address can only travel over SMTPUTF8 (RFC 6531). The domain never
// needs it: it is kept in A-label form.
func (a Address) NeedsSMTPUTF8() bool { return !isASCII(a.Addr) }

// String is the address as an RFC 5322 header would carry it, on one line:
// a display name that is not plain ASCII becomes RFC 2047 encoded-words.
func (a Address) String() string {
	w := headerWriter{nofold: true}
	w.address(a)
	return string(w.b)
}

func domainOf(addr string) string { return addr[strings.LastIndexByte(addr, '@')+1:] }

// addrParser reads RFC 5322 3.4 mailboxes, with UTF-8 allowed where RFC 6532
// allows it. CR and LF were refused (or unfolded) before it runs.
type addrParser struct {
	s string // what is left
}

func (p *addrParser) empty() bool { return len(p.s) == 0 }
func (p *addrParser) peek() byte  { return p.s[0] }

func (p *addrParser) consume(c byte) bool {
	if len(p.s) > 0 && p.s[0] == c {
		p.s = p.s[1:]
		return true
	}
	return false
}

// skipCFWS skips white space and comments (RFC 5322 3.2.2).
func (p *addrParser) skipCFWS() error {
	for {
		p.s = strings.TrimLeft(p.s, " \t")
		if !strings.HasPrefix(p.s, "(") {
			return nil
		}
		depth, i := 0, 0
	comment:
		for ; i < len(p.s); i++ {
			switch p.s[i] {
			case '\\':
				i++ // quoted-pair
			case '(':
				depth++
			case ')':
				depth--
				if depth == 0 {
					break comment
				}
			}
		}
		if depth != 0 {
			return errors.New("invalid address: unclosed comment")
		}
		p.s = p.s[i+1:]
	}
}

// atom takes a run of atext, and of dots too when dots is set.
func (p *addrParser) atom(dots bool) string {
	i := 0
	for i < len(p.s) && (isAtext(p.s[i]) || dots && p.s[i] == '.') {
		i++
	}
	a := p.s[:i]
	p.s = p.s[i:]
	return a
}

// quotedString takes a quoted-string (RFC 5322 3.2.4) and returns its
// content without the quotes and quoted-pair backslashes.
func (p *addrParser) quotedString() (string, error) {
	var b strings.Builder
	for i := 1; i < len(p.s); i++ {
		c := p.s[i]
		switch {
		case c == '"':
			p.s = p.s[i+1:]
			return b.String(), nil
		case c == '\\':
			i++
			if i == len(p.s) {
				return "", errors.New("invalid address: unclosed quoted string")
			}
			if c = p.s[i]; c < ' ' && c != '\t' || c == 0x7f {
				return "", errors.New("invalid address: control character in a quoted string")
			}
			b.WriteByte(c)
		case c >= ' ' && c != 0x7f || c == '\t':
			b.WriteByte(c)
		default:
			return "", errors.New("invalid address: control character in a quoted string")
		}
	}
	return "", errors.New("invalid address: unclosed quoted string")
}

// addrSpec takes local-part "@" domain (RFC 5322 3.4.1).
func (p *addrParser) addrSpec() (local, domain string, err error) {
	if err := p.skipCFWS(); err != nil {
		return "", "", err
	}
	if p.empty() {
		return "", "", errors.New("invalid address: missing")
	}
	if p.peek() == '"' {
		if local, err = p.quotedString(); err != nil {
			return "", "", err
		}
		if local == "" {
			return "", "", errors.New("invalid address: empty local part")
		}
	} else {
		local = p.atom(true)
		if local == "" {
			return "", "", errors.New("invalid address: missing local part")
		}
		if !isDotAtom(local) {
			return "", "", errors.New("invalid address: the local part has a misplaced dot; quote it")
		}
	}
	if err := p.skipCFWS(); err != nil {
		return "", "", err
	}
	if !p.consume('@') {
		return "", "", errors.New(`invalid address: missing "@domain"`)
	}
	if err := p.skipCFWS(); err != nil {
		return "", "", err
	}
	if !p.empty() && p.peek() == '[' {
		// RFC 5321 4.1.3: we route by MX only and never deliver to literals.
		return "", "", errors.New("invalid address: address literals are not accepted; use a domain name")
	}
	domain = p.atom(true)
	if domain == "" {
		return "", "", errors.New("invalid address: missing domain")
	}
	if !isDotAtom(domain) {
		return "", "", errors.New("invalid address: the domain has a misplaced dot")
	}
	return local, domain, nil
}

// phrase takes a display name (RFC 5322 3.2.5) and decodes its encoded-words
// (RFC 2047 6.2). Dots are allowed in words, as obs-phrase does (RFC 5322 4.1).
func (p *addrParser) phrase() (string, error) {
	var b strings.Builder
	n, prevEncoded := 0, false
	for {
		if err := p.skipCFWS(); err != nil {
			return "", err
		}
		if p.empty() {
			break
		}
		var word string
		encoded := false
		if p.peek() == '"' {
			w, err := p.quotedString()
			if err != nil {
				return "", err
			}
			word = w
		} else {
			if word = p.atom(true); word == "" {
				break
			}
			word, encoded = decodeWord(word)
		}
		// RFC 2047 6.2: white space between adjacent encoded-words is not displayed.
		if n > 0 && !(encoded && prevEncoded) {
			b.WriteByte(' ')
		}
		b.WriteString(word)
		n++
		prevEncoded = encoded
	}
	if n == 0 {
		return "", errNoWords
	}
	return b.String(), nil
}

var errNoWords = errors.New("invalid address: missing")

// mailbox takes name-addr or addr-spec (RFC 5322 3.4) and the CFWS after it.
func (p *addrParser) mailbox() (Address, error) {
	start := p.s
	local, domain, specErr := p.addrSpec()
	if specErr == nil {
		specErr = p.skipCFWS()
		if specErr == nil && (p.empty() || p.peek() == ',' || p.peek() == ';') {
			return newAddress("", local, domain)
		}
		if specErr == nil {
			specErr = fmt.Errorf("invalid address: unexpected %q after the address", p.s)
		}
	}
	p.s = start
	if err := p.skipCFWS(); err != nil {
		return Address{}, err
	}
	var name string
	if !p.empty() && p.peek() != '<' {
		n, err := p.phrase()
		if err == errNoWords {
			return Address{}, specErr
		}
		if err != nil {
			return Address{}, err
		}
		name = n
	}
	if p.consume(':') {
		return Address{}, errors.New("invalid address: groups are not accepted here; give mailboxes")
	}
	if !p.consume('<') {
		return Address{}, specErr
	}
	local, domain, err := p.addrSpec()
	if err != nil {
		return Address{}, err
	}
	if err := p.skipCFWS(); err != nil {
		return Address{}, err
	}
	if !p.consume('>') {
		return Address{}, errors.New(`invalid address: missing ">"`)
	}
	if err := p.skipCFWS(); err != nil {
		return Address{}, err
	}
	return newAddress(name, local, domain)
}

// parseAddressList parses an address-list (RFC 5322 3.4) as found in a raw
// message's header; a group gives its members when groups is set. Empty list
// elements are skipped (RFC 5322 4.4 obs-addr-list).
func parseAddressList(s string, groups bool) ([]Address, error) {
	p := addrParser{s: s}
	var out []Address
	for {
		if err := p.skipCFWS(); err != nil {
			return nil, err
		}
		if p.empty() {
			return out, nil
		}
		if p.consume(',') {
			continue
		}
		as, err := p.address(groups)
		if err != nil {
			return nil, err
		}
		out = append(out, as...)
		if err := p.skipCFWS(); err != nil {
			return nil, err
		}
		if !p.empty() && !p.consume(',') {
			return nil, fmt.Errorf("invalid address list: expected a comma before %q", p.s)
		}
	}
}

// address takes a mailbox, or when groups is set a group's members.
func (p *addrParser) address(groups bool) ([]Address, error) {
	if groups {
		start := p.s
		if _, err := p.phrase(); err == nil && p.consume(':') {
			return p.groupList()
		}
		p.s = start
	}
	a, err := p.mailbox()
	if err != nil {
		return nil, err
	}
	return []Address{a}, nil
}

// groupList takes the members of a group and its closing ";" (RFC 5322 3.4).
func (p *addrParser) groupList() ([]Address, error) {
	var out []Address
	for {
		if err := p.skipCFWS(); err != nil {
			return nil, err
		}
		switch {
		case p.consume(';'):
			return out, nil
		case p.consume(','):
			continue
		case p.empty():
			return nil, errors.New(`invalid address list: group without its closing ";"`)
		}
		a, err := p.mailbox()
		if err != nil {
			return nil, err
		}
		out = append(out, a)
		if !p.empty() && p.peek() != ';' && !p.consume(',') {
			return nil, fmt.Errorf("invalid address list: expected a comma before %q", p.s)
		}
	}
}

// newAddress checks the parts of a mailbox against the RFC 5321 limits and
// puts them in canonical form.
func newAddress(name, local, domain string) (Address, error) {
	if !utf8.ValidString(local) || !utf8.ValidString(domain) {
		return Address{}, errors.New("invalid address: not valid UTF-8 (RFC 6532 3.1)")
	}
	if !isDotAtom(local) {
		local = quoteString(local) // RFC 5321 4.1.2: dot-atom form when it has one
	}
	// The local part as it will stand in MAIL FROM and RCPT TO: what
	// passes here is what the SMTP client will send.
	if err := CheckLocalPart(local); err != nil {
		return Address{}, err
	}
	d, err := normalizeDomain(domain)
	if err != nil {
		return Address{}, err
	}
	addr := local + "@" + d
	if len(addr) > maxAddrLen {
		return Address{}, fmt.Errorf("invalid address: %d octets; the limit is %d (RFC 5321 4.5.3.1.3)", len(addr), maxAddrLen)
	}
	// The name may come from encoded-words, which can decode to anything.
	if detail := checkHeaderText(name); detail != "" {
		return Address{}, errors.New("invalid address: the display name " + detail)
	}
	return Address{Name: name, Addr: addr}, nil
}

// CheckLocalPart says why local, a local part as it stands in an SMTP
// path (a Dot-string, or a Quoted-string with its quotes and backslashes),
// is not one Mailferry accepts or sends; nil if it is. It is the one rule
// for local parts: ParseAddress keeps only addresses that pass it, and the
// SMTP client checks every path against it (CheckMailbox) before MAIL and
// RCPT, so an address accepted is an address that can be sent.
//
// The rule is RFC 5321 4.1.2 Local-part, with UTF-8 where RFC 6531 3.3
// allows it, within RFC 5321 4.5.3.1.1's 64 octets, less two characters:
// "<" and ">" are refused even quoted. A Quoted-string may hold them, but
// a receiver that ends a path at the first ">", or that unquotes the local
// part before reading it again, reads another address or refuses this
// one; a relay need not pass on what its receivers choke on.
func CheckLocalPart(local string) error {
	switch {
	case local == "", local == `""`:
		return errors.New("invalid address: empty local part")
	case len(local) > maxLocalLen:
		return fmt.Errorf("invalid address: the local part is %d octets; the limit is %d (RFC 5321 4.5.3.1.1)", len(local), maxLocalLen)
	case !utf8.ValidString(local):
		return errors.New("invalid address: not valid UTF-8 (RFC 6532 3.1)")
	case local[0] != '"':
		if !isDotAtom(local) {
			return errors.New("invalid address: the local part is neither a dot-atom nor a quoted string (RFC 5321 4.1.2)")
		}
		return nil
	case len(local) < 2 || local[len(local)-1] != '"':
		return errors.New("invalid address: unclosed quoted string")
	}
	q := local[1 : len(local)-1]
	for i := 0; i < len(q); i++ {
		c := q[i]
		if c == '\\' { // quoted-pairSMTP = %d92 %d32-126
			if i++; i == len(q) {
				return errors.New("invalid address: unclosed quoted string")
			}
			c = q[i]
		} else if c == '"' {
			return errors.New(`invalid address: a '"' inside the quoted local part must be escaped as '\"'`)
		}
		switch {
		// RFC 5321 4.1.2: qtextSMTP and quoted-pairSMTP have no tab or controls.
		case c < ' ' || c == 0x7f:
			return errors.New("invalid address: control character or tab in the local part")
		case c == '<' || c == '>':
			return errors.New(`invalid address: the local part holds "<" or ">", which receivers misread even quoted; Mailferry does not send such addresses`)
		}
	}
	return nil
}

// CheckMailbox says why addr, local@domain as Address.Addr holds it,
// cannot be sent as the Mailbox of MAIL FROM or RCPT TO (RFC 5321 4.1.2);
// nil if it can. The local part is held to CheckLocalPart, the domain to
// IsDomainName, in the A-label form ParseAddress gives it, and the whole
// to the path limit.
func CheckMailbox(addr string) error {
	if len(addr) > maxAddrLen {
		return fmt.Errorf("invalid address: %d octets; the limit is %d (RFC 5321 4.5.3.1.3)", len(addr), maxAddrLen)
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return errors.New(`invalid address: missing "@domain"`)
	}
	if err := CheckLocalPart(addr[:at]); err != nil {
		return err
	}
	if !IsDomainName(addr[at+1:]) {
		return errors.New("invalid address: the domain is not a host name (RFC 5321 4.1.2 Domain)")
	}
	return nil
}

// normalizeDomain returns the lower-case A-label form of a mail domain, which
// must be a host name with at least one dot.
func normalizeDomain(d string) (string, error) {
	a, err := idna.Lookup.ToASCII(d)
	if err != nil {
		return "", fmt.Errorf("invalid address: the domain is not a valid host name: %v", err)
	}
	if a != d {
		// What we store must read back as itself.
		if again, err := idna.Lookup.ToASCII(a); err != nil || again != a {
			return "", errors.New("invalid address: the domain is not a valid host name")
		}
	}
	if len(a) > maxDomainLen {
		return "", fmt.Errorf("invalid address: the domain is %d octets; the limit is %d", len(a), maxDomainLen)
	}
	labels := strings.Split(a, ".")
	if len(labels) < 2 {
		return "", errors.New("invalid address: the domain has no dot")
	}
	for _, l := range labels {
		if l == "" || len(l) > maxLabelLen {
			return "", errors.New("invalid address: the domain has an empty label or one longer than 63 octets")
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		// RFC 3696 2: a top-level domain is never all-numeric; this is an IP address.
		return "", errors.New("invalid address: the domain is an IP address; address literals are not accepted")
	}
	return a, nil
}

// decodeWord decodes an RFC 2047 encoded-word; other words come back as they are.
func decodeWord(w string) (string, bool) {
	if !strings.HasPrefix(w, "=?") || !strings.HasSuffix(w, "?=") {
		return w, false
	}
	dec := mime.WordDecoder{CharsetReader: charset.Reader}
	s, err := dec.Decode(w)
	if err != nil {
		return w, false
	}
	return s, true
}

// isAtext reports whether c may appear in an atom (RFC 5322 3.2.3); UTF-8
// octets are atext under RFC 6532 3.2.
func isAtext(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c >= 0x80:
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// isDotAtom reports whether s is dot-atom-text (RFC 5322 3.2.3).
func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isAtext(s[i]) && s[i] != '.' {
			return false
		}
	}
	return true
}

// checkHeaderText returns why s cannot go into a header field or a text
// column of the ledger, or "". It is the one rule for header text from
// clients, given in JSON, written in a raw header, or decoded from its
// encoded-words: valid UTF-8 (RFC 6532 3.2; PostgreSQL refuses anything
// else), no CR or LF (RFC 5322 2.2: a field body has them only to fold),
// no NUL, and no other control character but tab (RFC 5322 3.2.5: VCHAR
// and WSP; the rest is obsolete syntax, 4.1).
func checkHeaderText(s string) string {
	if strings.ContainsAny(s, "\r\n\x00") {
		return "must not contain CR, LF or NUL"
	}
	if i := strings.IndexFunc(s, isControl); i >= 0 {
		return fmt.Sprintf("must not contain control characters other than tab (0x%02X at octet %d)", s[i], i)
	}
	if !utf8.ValidString(s) {
		return "is not valid UTF-8"
	}
	return ""
}

// isControl reports the C0 controls but tab, and DEL.
func isControl(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f }

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
