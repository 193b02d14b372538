package mail

import (
	"encoding/base64"
	"strconv"
	"strings"
)

const (
	softLineLen = 78  // RFC 5322 2.1.1: SHOULD
	maxLineLen  = 998 // RFC 5322 2.1.1: MUST
	ewLineLen   = 76  // RFC 2047 2: a line with encoded-words
	maxEWLen    = 75  // RFC 2047 2: one encoded-word
	// minEWLen leaves room for one 4-octet character Q-encoded; a shorter
	// gap at the end of a line is not worth starting a word in.
	minEWLen = 24
	// maxSegment is the longest run of text (white space and a word) written
	// as it is. Longer runs cannot be folded under 998 octets, so the value is
	// encoded instead and the encoded-words fold.
	maxSegment = 900
	// maxFieldName keeps "Name: " and a token within the hard line limit.
	maxFieldName = 76
)

// headerWriter appends header fields to b, folding lines (RFC 5322 2.2.3) so
// that none passes 78 octets where that is possible and 998 always.
type headerWriter struct {
	b      []byte
	col    int  // octets on the current line
	minCol int  // col just after the field name (or fold); folding there would leave nothing
	sep    bool // the next token needs a space before it
	nofold bool // Address.String: one line
}

// field starts a header field.
func (w *headerWriter) field(name string) {
	w.b = append(w.b, name...)
	w.b = append(w.b, ':')
	w.col = len(name) + 1
	w.minCol = w.col
	w.sep = true
}

// end ends a header field.
func (w *headerWriter) end() {
	w.b = append(w.b, '\r', '\n')
	w.col = 0
}

// room prepares for a token of n octets: a space before it, or a fold when
// it would pass limit and the line already holds something.
func (w *headerWriter) room(n, limit int) {
	if !w.nofold && w.col > w.minCol && w.col+1+n > limit {
		w.b = append(w.b, '\r', '\n', ' ') // RFC 5322 2.2.3: CRLF before white space
		w.col, w.minCol = 1, 1
		return
	}
	if w.sep {
		w.b = append(w.b, ' ')
		w.col++
	}
}

func (w *headerWriter) put(s string) {
	w.b = append(w.b, s...)
	w.col += len(s)
	w.sep = true
}

func (w *headerWriter) token(s string) {
	w.room(len(s), softLineLen)
	w.put(s)
}

// addresses writes an address-list (RFC 5322 3.4), folding between mailboxes
// and between the words of display names.
func (w *headerWriter) addresses(as []Address) {
	for i, a := range as {
		if i > 0 {
			w.b = append(w.b, ',')
			w.col++
		}
		w.address(a)
	}
}

func (w *headerWriter) address(a Address) {
	if a.Name == "" {
		w.token(a.Addr)
		return
	}
	w.phrase(a.Name)
	w.room(len(a.Addr)+2, softLineLen)
	w.b = append(w.b, '<')
	w.b = append(w.b, a.Addr...)
	w.b = append(w.b, '>')
	w.col += len(a.Addr) + 2
	w.sep = true
}

// phrase writes a display name: as atoms when it is plain words, as a
// quoted-string when it is short printable ASCII, else as encoded-words.
func (w *headerWriter) phrase(name string) {
	switch {
	case isAtomPhrase(name):
		for len(name) > 0 {
			word, rest, _ := strings.Cut(name, " ")
			w.token(word)
			name = rest
		}
	case isPrintable(name) && !strings.Contains(name, "=?") && len(name) <= 64:
		q := quoteString(name)
		w.token(q)
	default:
		w.encoded(name)
	}
}

// text writes an unstructured value (RFC 5322 3.2.5). When exact is set the
// value must unfold to v in any reader, also those that collapse white
// space, so only single spaces between words are written as they are.
func (w *headerWriter) text(v string, exact bool) {
	if !exact {
		v = strings.Trim(v, " \t")
	}
	if v == "" {
		return
	}
	if needsEncoding(v, exact) {
		w.encoded(v)
		return
	}
	for start := 0; start < len(v); {
		end := start
		for end < len(v) && isWSP(v[end]) {
			end++
		}
		for end < len(v) && !isWSP(v[end]) {
			end++
		}
		seg := v[start:end]
		switch {
		case start == 0:
			w.room(len(seg), softLineLen)
		case !w.nofold && w.col > w.minCol && w.col+len(seg) > softLineLen:
			// The segment starts with white space: the fold goes before it
			// and unfolding gives back exactly v.
			w.b = append(w.b, '\r', '\n')
			w.col, w.minCol = 0, 1
		}
		w.put(seg)
		start = end
	}
}

// needsEncoding reports whether v must go as encoded-words: it has octets a
// header cannot carry, or a run too long to fold, or (exact) white space or
// "=?" that readers would not give back as written.
func needsEncoding(v string, exact bool) bool {
	seg := 0
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= 0x7f || c < ' ' && c != '\t' {
			return true
		}
		if isWSP(c) && i > 0 && !isWSP(v[i-1]) {
			seg = 0
		}
		if seg++; seg > maxSegment {
			return true
		}
		if !exact {
			continue
		}
		switch {
		case c == '\t',
			c == ' ' && (i == 0 || i == len(v)-1 || v[i+1] == ' '),
			c == '=' && i+1 < len(v) && v[i+1] == '?':
			return true
		}
	}
	return false
}

// encoded writes s as RFC 2047 encoded-words in UTF-8, Q or B encoded
// whichever is shorter, each word at most 75 octets and lines at most 76
// (RFC 2047 2) where a field name leaves room for that. Each word holds
// whole characters (RFC 2047 5).
func (w *headerWriter) encoded(s string) {
	b64 := qLen(s) > (len(s)+2)/3*4
	for len(s) > 0 {
		limit := maxEWLen
		if !w.nofold {
			left := ewLineLen - w.col - 1
			if left >= minEWLen {
				limit = min(left, maxEWLen)
			} // else room folds first, or cannot right after a long name
		}
		n, size := cutWord(s, b64, limit-len("=?utf-8?q??="))
		w.room(size+len("=?utf-8?q??="), ewLineLen)
		if b64 {
			w.b = append(w.b, "=?utf-8?b?"...)
			w.b = base64.StdEncoding.AppendEncode(w.b, []byte(s[:n]))
		} else {
			w.b = append(w.b, "=?utf-8?q?"...)
			w.b = appendQ(w.b, s[:n])
		}
		w.b = append(w.b, '?', '=')
		w.col += size + len("=?utf-8?q??=")
		w.sep = true
		s = s[n:]
	}
}

// cutWord returns how many octets of s, in whole characters, encode in at
// most max octets (at least one character), and their encoded size.
func cutWord(s string, b64 bool, max int) (n, size int) {
	for n < len(s) {
		r := runeLen(s[n:])
		var next int
		if b64 {
			next = (n + r + 2) / 3 * 4
		} else {
			next = size + qLen(s[n:n+r])
		}
		if next > max && n > 0 {
			break
		}
		n += r
		size = next
	}
	return n, size
}

// runeLen is the length of the UTF-8 sequence at the start of s; a bad
// octet counts alone.
func runeLen(s string) int {
	n := 1
	if s[0] >= 0xc0 {
		for n < len(s) && n < 4 && s[n]&0xc0 == 0x80 {
			n++
		}
	}
	return n
}

// qSafe reports whether c goes as itself in a Q-encoded word anywhere, the
// display-name rules being the strictest (RFC 2047 5(3)).
func qSafe(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '!' || c == '*' || c == '+' || c == '-' || c == '/' || c == ' '
}

func qLen(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		if qSafe(s[i]) {
			n++
		} else {
			n += 3
		}
	}
	return n
}

const upperHex = "0123456789ABCDEF"

func appendQ(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == ' ':
			b = append(b, '_') // RFC 2047 4.2 (2)
		case qSafe(c):
			b = append(b, c)
		default:
			b = append(b, '=', upperHex[c>>4], upperHex[c&15])
		}
	}
	return b
}

type param struct{ name, value string }

// mediaType writes a Content-Type or Content-Disposition value with its
// parameters (RFC 2045 5.1), one parameter a token so folds fall between.
func (w *headerWriter) mediaType(value string, params ...param) {
	w.token(value)
	for _, p := range params {
		w.b = append(w.b, ';')
		w.col++
		w.param(p.name, p.value)
	}
}

// param writes name=value, quoted when it must be, or in RFC 2231 form
// (charset and percent-encoding, split into continuations when long) when
// the value is not ASCII or would not fit on a line.
func (w *headerWriter) param(name, value string) {
	const fits = 64
	switch {
	case isToken(value) && len(name)+1+len(value) <= fits:
		w.token(name + "=" + value)
		return
	case isPrintable(value) && len(name)+3+len(value) <= fits:
		w.token(name + "=" + quoteString(value))
		return
	}
	enc := percentEncode(value)
	if len(name)+len("*=utf-8''")+len(enc) <= fits {
		w.token(name + "*=utf-8''" + enc)
		return
	}
	for i := 0; len(enc) > 0; i++ {
		head := name + "*" + strconv.Itoa(i) + "*="
		if i == 0 {
			head += "utf-8''"
		}
		n := min(len(enc), max(fits-len(head), 3))
		if k := strings.LastIndexByte(enc[max(n-2, 0):n], '%'); k >= 0 && n < len(enc) {
			n = max(n-2, 0) + k // a %XX triplet stays whole
		}
		if i > 0 {
			w.b = append(w.b, ';')
			w.col++
		}
		w.token(head + enc[:n])
		enc = enc[n:]
	}
}

// percentEncode encodes an RFC 2231 extended value: attribute-char as
// itself, everything else %XX.
func percentEncode(s string) string {
	var b strings.Builder
	b.Grow(len(s) * 3)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c > ' ' && c < 0x7f && !isTSpecial(c) && c != '*' && c != '\'' && c != '%' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(upperHex[c>>4])
		b.WriteByte(upperHex[c&15])
	}
	return b.String()
}

// isTSpecial reports RFC 2045 5.1 tspecials.
func isTSpecial(c byte) bool { return strings.IndexByte(`()<>@,;:\"/[]?=`, c) >= 0 }

// isToken reports whether s is an RFC 2045 5.1 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || isTSpecial(c) {
			return false
		}
	}
	return true
}

// isAtomPhrase reports whether s is atoms separated by single spaces, none
// looking like an encoded-word.
func isAtomPhrase(s string) bool {
	if s == "" || s[0] == ' ' || s[len(s)-1] == ' ' || strings.Contains(s, "  ") || strings.Contains(s, "=?") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x80 || c != ' ' && !isAtext(c) {
			return false
		}
	}
	return true
}

// isPrintable reports whether s is printable ASCII and spaces.
func isPrintable(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// quoteString makes a quoted-string (RFC 5322 3.2.4) of printable ASCII,
// or of a UTF-8 local part (RFC 6532 3.2).
func quoteString(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}

func isWSP(c byte) bool { return c == ' ' || c == '\t' }
