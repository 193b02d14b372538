package bounce

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-message/textproto"
)

// parseDSN reads the body of a message/delivery-status part (RFC 3464 2.1)
// or message/global-delivery-status part (RFC 6533): the per-message
// fields, then one group of per-recipient fields for each recipient,
// groups separated by blank lines. sender is the envelope sender when the
// MTA names it in an extension field (Postfix's X-Postfix-Sender).
func parseDSN(body []byte) (r *Report, sender string, err error) {
	groups, err := fieldGroups(body)
	if err != nil {
		return nil, "", err
	}
	if len(groups) == 0 {
		return nil, "", errors.New("empty delivery-status part (RFC 3464 2.1)")
	}
	r = &Report{Kind: KindDSN}
	sender = typedAddress(groups[0].Get("X-Postfix-Sender"))
	// RFC 3464 2.2.2: Reporting-MTA: mta-name-type; mta-name.
	r.ReportingMTA = mtaName(groups[0].Get("Reporting-Mta"))
	rcptGroups := groups[1:]
	if g := groups[0]; !g.Has("Reporting-Mta") && (g.Has("Final-Recipient") || g.Has("Action")) {
		// No per-message group, as some MTAs write it: all are recipients.
		rcptGroups = groups
	}
	for _, g := range rcptGroups {
		rcpt, ok := dsnRecipient(g)
		if ok {
			r.Recipients = append(r.Recipients, rcpt)
		}
	}
	if len(r.Recipients) == 0 {
		return nil, "", errors.New("no per-recipient fields: Final-Recipient, Action (RFC 3464 2.3)")
	}
	return r, sender, nil
}

func dsnRecipient(g textproto.Header) (ReportRecipient, bool) {
	final, orig := g.Get("Final-Recipient"), g.Get("Original-Recipient")
	action := g.Get("Action")
	if final == "" && orig == "" && action == "" {
		return ReportRecipient{}, false
	}
	var rc ReportRecipient
	// RFC 3464 2.3.1: Original-Recipient is the address as the sender gave
	// it (ORCPT), which is what we sent and can match; Final-Recipient
	// (2.3.2) may be the address after aliasing at the destination.
	if a := typedAddress(orig); a != "" {
		rc.Address = a
	} else {
		rc.Address = typedAddress(final)
	}
	// RFC 3464 2.3.3: action-value, case-insensitive; some MTAs add a comment.
	rc.Action = strings.ToLower(firstWord(action))
	if !safeText(rc.Action) || len(rc.Action) > 32 {
		rc.Action = ""
	}
	// RFC 3464 2.3.4: status-code, maybe followed by a comment.
	if st := strings.TrimRight(firstWord(g.Get("Status")), ".,;"); st != "" {
		if _, ok := parseStatus(st); ok {
			rc.Status = st
		}
	}
	rc.RemoteMTA = mtaName(g.Get("Remote-Mta")) // RFC 3464 2.3.5
	// RFC 3464 2.3.6: Diagnostic-Code: diagnostic-type; *text.
	diag := g.Get("Diagnostic-Code")
	if typ, text, ok := strings.Cut(diag, ";"); ok && isAtom(strings.TrimSpace(typ)) {
		diag = text
	}
	rc.DiagnosticCode = cleanText(diag)
	rc.SMTPCode = leadingReplyCode(rc.DiagnosticCode)
	return rc, true
}

// fieldGroups splits a delivery-status body into its blank-line separated
// groups of header fields, folded lines unfolded.
func fieldGroups(body []byte) ([]textproto.Header, error) {
	var (
		groups []textproto.Header
		cur    bytes.Buffer
	)
	flush := func() error {
		if cur.Len() == 0 {
			return nil
		}
		if len(groups) >= maxStatusGroups {
			return fmt.Errorf("more than %d recipient groups: %w", maxRecipients, ErrTooComplex)
		}
		cur.WriteString("\r\n")
		h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(cur.Bytes())))
		if err != nil && h.Len() == 0 {
			cur.Reset()
			return nil // a group of garbage: skip it, keep the others
		}
		groups = append(groups, h)
		cur.Reset()
		return nil
	}
	for line := range bytes.SplitSeq(body, []byte("\n")) {
		line = bytes.TrimRight(line, "\r")
		if len(bytes.TrimSpace(line)) == 0 {
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		}
		cur.Write(line)
		cur.WriteString("\r\n")
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return groups, nil
}

// typedAddress reads address-type ";" generic-address (RFC 3464 2.3.1,
// 2.3.2). An rfc822 address is kept as written; a utf-8 address (RFC
// 6533) has its \x{HEX} escapes decoded. No type: the value is taken as the
// address.
func typedAddress(v string) string {
	v = removeComments(v)
	typ, addr, ok := strings.Cut(v, ";")
	if !ok {
		return cleanAddress(v)
	}
	typ = strings.ToLower(strings.TrimSpace(typ))
	addr = strings.TrimSpace(addr)
	if typ == "utf-8" {
		addr = decodeUnitext(addr)
	}
	return cleanAddress(addr)
}

// decodeUnitext decodes the embedded-unicode-char escapes of RFC 6533
// (\x{HEXPOINT}).
func decodeUnitext(s string) string {
	if !strings.Contains(s, `\x{`) {
		return s
	}
	var b strings.Builder
	for {
		i := strings.Index(s, `\x{`)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i])
		rest := s[i+3:]
		j := strings.IndexByte(rest, '}')
		if j < 1 || j > 6 {
			b.WriteString(s[i : i+3])
			s = rest
			continue
		}
		n, err := strconv.ParseUint(rest[:j], 16, 32)
		if err != nil || !utf8.ValidRune(rune(n)) {
			b.WriteString(s[i : i+3])
			s = rest
			continue
		}
		b.WriteRune(rune(n))
		s = rest[j+1:]
	}
}

// mtaName reads mta-name-type ";" mta-name (RFC 3464 2.2.2, 2.3.5) and
// returns the name; a value without a type is taken whole.
func mtaName(v string) string {
	if _, name, ok := strings.Cut(v, ";"); ok {
		v = name
	}
	// The name is a host name or address, perhaps with a comment
	// ("gmail-smtp-in.l.google.com. (192.0.2.30, the server for …)").
	v = strings.TrimSuffix(firstWord(cleanText(removeComments(v))), ".")
	if len(v) > 255 {
		return ""
	}
	return v
}

// leadingReplyCode returns the RFC 5321 4.2 reply code that starts s, or 0.
func leadingReplyCode(s string) int {
	code, _, ok := cutReplyCode(strings.TrimSpace(s))
	if !ok {
		return 0
	}
	return code
}

func firstWord(s string) string {
	f := strings.Fields(s)
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// isAtom: a diagnostic-type or address-type token (RFC 3464 2.1.2 atom).
func isAtom(s string) bool {
	if s == "" || len(s) > 40 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// removeComments drops RFC 5322 3.2.2 comments, "(…)" nested, which MTAs
// add after addresses and host names; a backslash quotes the next
// character, and an unclosed comment runs to the end.
func removeComments(s string) string {
	if !strings.Contains(s, "(") {
		return s
	}
	var b strings.Builder
	depth := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && depth > 0:
			i++
		case c == '(':
			depth++
		case c == ')' && depth > 0:
			depth--
		case depth == 0:
			b.WriteByte(c)
		}
	}
	return b.String()
}
