package store

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Bounds on text that comes from outside, in bytes. PostgreSQL refuses a
// text value that is not valid UTF-8 or holds a NUL (SQLSTATE 22021, and
// 22P05 in jsonb), and a hostile peer chooses both its bytes and how many:
// so every such column is written through cleanText or cleanLine, here
// where the columns are written, whoever the caller is.
const (
	// maxReplyText bounds an SMTP reply as stored. RFC 5321 4.5.3.1.5
	// gives a reply line 512 octets; multi-line replies run longer, and
	// what is past 1000 bytes has never helped anyone read a bounce.
	maxReplyText = 1000
	// maxHostText bounds host names, TLS fields and enhanced codes: RFC
	// 1035 2.3.4 caps a name at 255 octets, the rest are shorter.
	maxHostText = 255
	// maxHeaderText bounds header-derived columns (Message-ID, From,
	// Subject): twice mail's limit on one header value, so nothing intake
	// accepts is cut; the body keeps the whole field in any case.
	maxHeaderText = 4000
	// maxTagText bounds tags and metadata; the API allows far less.
	maxTagText = 1024
)

// replacement stands in for an invalid byte or a control character.
const replacement = "\uFFFD"

// ellipsis ends text cut at its bound, so a reader knows it was cut.
const ellipsis = "…"

// cleanText returns s as text PostgreSQL always takes: valid UTF-8 (each
// invalid byte becomes U+FFFD), no control character but tab and newline
// (each becomes U+FFFD; a multi-line SMTP reply keeps its lines), at most
// limit bytes (cut at a rune boundary, ending in "…"). It is idempotent,
// and returns s itself when s is already clean.
func cleanText(s string, limit int) string { return clean(s, limit, true) }

// cleanLine is cleanText for one-line values: a newline is replaced too.
func cleanLine(s string, limit int) string { return clean(s, limit, false) }

func clean(s string, limit int, lines bool) string {
	if isClean(s, limit, lines) {
		return s
	}
	var b strings.Builder
	b.Grow(min(len(s), limit))
	for i, r := range s {
		add := string(r)
		if r == utf8.RuneError && !strings.HasPrefix(s[i:], replacement) || unwanted(r, lines) {
			add = replacement
		}
		if b.Len()+len(add) > limit {
			cut(&b, limit)
			break
		}
		b.WriteString(add)
	}
	return b.String()
}

// isClean is the fast path: most replies are short printable ASCII.
func isClean(s string, limit int, lines bool) bool {
	if len(s) > limit {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 0x80:
			return utf8.ValidString(s[i:]) && !strings.ContainsFunc(s[i:], func(r rune) bool { return unwanted(r, lines) })
		case c < 0x20 || c == 0x7f:
			if unwanted(rune(c), lines) {
				return false
			}
		}
	}
	return true
}

// unwanted: C0 and C1 controls and DEL, except tab and, in text, newline.
func unwanted(r rune, lines bool) bool {
	if r == '\t' || r == '\n' && lines {
		return false
	}
	return unicode.IsControl(r)
}

// cut makes room for the ellipsis in b, which holds at most limit bytes of
// whole runes, so that b ends in it and holds at most limit bytes.
func cut(b *strings.Builder, limit int) {
	s := b.String()
	end := limit - len(ellipsis)
	if end < 0 {
		end = 0
	}
	for end > 0 && end < len(s) && !utf8.RuneStart(s[end]) {
		end--
	}
	s = s[:min(end, len(s))]
	b.Reset()
	b.WriteString(s)
	if b.Len()+len(ellipsis) <= limit {
		b.WriteString(ellipsis)
	}
}
