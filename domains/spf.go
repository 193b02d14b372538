package domains

import (
	"context"
	"strings"
)

// maxSPFLookups is RFC 7208 4.6.4's limit: "SPF implementations MUST limit
// the total number of those terms to 10 during SPF evaluation"; past it
// the result is permerror and the record helps no message.
const maxSPFLookups = 10

// isSPF reports whether a TXT record is an SPF record: "v=spf1" alone or
// followed by a space (RFC 7208 4.5), case-insensitively.
func isSPF(txt string) bool {
	v := strings.ToLower(strings.TrimSpace(txt))
	return v == "v=spf1" || strings.HasPrefix(v, "v=spf1 ")
}

// spfTerms splits a record into its terms after the version.
func spfTerms(record string) []string {
	f := strings.Fields(record)
	if len(f) == 0 {
		return nil
	}
	return f[1:]
}

// spfTerm returns a term's mechanism or modifier name, lower case, and its
// argument: "~include:Example.com" → ("include", "Example.com").
func spfTerm(term string) (name, arg string) {
	t := strings.TrimLeft(term, "+-~?") // RFC 7208 4.6.2 qualifiers
	if n, a, ok := strings.Cut(t, "="); ok && !strings.ContainsAny(n, ":/") {
		return strings.ToLower(n), a // modifier (RFC 7208 6)
	}
	i := strings.IndexAny(t, ":/")
	if i < 0 {
		return strings.ToLower(t), ""
	}
	if t[i] == '/' {
		return strings.ToLower(t[:i]), ""
	}
	return strings.ToLower(t[:i]), t[i+1:]
}

// hasInclude reports whether record includes domain.
func hasInclude(record, domain string) bool {
	for _, t := range spfTerms(record) {
		if n, a := spfTerm(t); n == "include" && strings.EqualFold(strings.TrimSuffix(a, "."), domain) {
			return true
		}
	}
	return false
}

// mergeSPF returns record with include:domain added right after the
// version, or a new record when record is "". One domain has one SPF
// record (RFC 7208 3.2: more makes a permerror), so the include joins what
// is there rather than a second record being suggested.
func mergeSPF(record, domain string) string {
	if record == "" {
		return "v=spf1 include:" + domain + " ~all"
	}
	if hasInclude(record, domain) {
		return strings.Join(strings.Fields(record), " ")
	}
	f := strings.Fields(record)
	return strings.Join(append([]string{f[0], "include:" + domain}, f[1:]...), " ")
}

// spfLookups counts the terms of record that cost a DNS lookup (include,
// a, mx, ptr, exists, redirect: RFC 7208 4.6.4), following includes and
// redirects through DNS, at most 10 deep (a loop of includes would be
// endless); names with macros (RFC 7208 7) cannot be followed and count
// one.
func spfLookups(ctx context.Context, r *resolver, record string, depth int) (int, error) {
	n := 0
	for _, t := range spfTerms(record) {
		name, arg := spfTerm(t)
		switch name {
		case "a", "mx", "ptr", "exists":
			n++
		case "include", "redirect":
			n++
			if depth > maxSPFLookups || arg == "" || strings.Contains(arg, "%") {
				continue
			}
			txts, err := r.txt(ctx, arg)
			if err != nil {
				return n, err
			}
			for _, txt := range txts {
				if isSPF(txt) {
					m, err := spfLookups(ctx, r, txt, depth+1)
					n += m
					if err != nil {
						return n, err
					}
					break
				}
			}
		}
	}
	return n, nil
}
