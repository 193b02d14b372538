package mail

import "strings"

// IsDomainName reports whether d is a host name as DNS and SMTP spell it
// (RFC 1035 2.3.1, RFC 5321 4.1.2 Domain): dot-separated labels of 1 to 63
// letters, digits and inner hyphens, 253 octets in all, no trailing dot.
// An IDN passes in its A-label form (xn--…). Case does not matter.
func IsDomainName(d string) bool {
	if d == "" || len(d) > 253 {
		return false
	}
	for l := range strings.SplitSeq(d, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
