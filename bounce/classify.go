package bounce

import (
	"strings"
)

// input is one failure as the rules see it.
type input struct {
	code      int    // 200-599, or 0
	status    [3]int // valid when hasStatus
	hasStatus bool
	text      string // normalised reply text
}

// Classify returns the verdict on one failure: code is the SMTP reply code
// (0 when there was no reply: a local failure, for which the caller sets
// enhanced, e.g. 4.4.1), enhanced the RFC 3463 status code ("5.1.1", or ""),
// text the reply text or the reason. When code or enhanced is missing and
// text starts with one ("550 5.1.1 …", "smtp; 550 …"), that is used.
//
// The first matching rule gives the class. With none, the class is Other.
// The type is the rule's, else Soft for MailboxFull, RateLimited and Expired
// (the mailbox or our rate may change; expiry is the end of retrying, not a
// verdict on the address), else Hard for a permanent failure (5xx, or
// 5.x.x without a reply) and Soft for the rest. A transient failure (4xx,
// or 4.x.x without a reply) is always Soft and never suppresses.
//
// A nil *Rules classifies with DefaultRules.
func (r *Rules) Classify(code int, enhanced, text string) Verdict {
	if r == nil {
		r = DefaultRules()
	}
	in := newInput(code, enhanced, text)
	for i := range r.list {
		if rl := &r.list[i]; rl.match(&in) {
			return in.verdict(rl.class, rl.typ, rl.suppress)
		}
	}
	return in.verdict(Other, "", false)
}

func (in *input) verdict(c Class, t Type, suppress bool) Verdict {
	transient, permanent := in.transient(), in.permanent()
	if t == "" {
		switch {
		case c == MailboxFull || c == RateLimited || c == Expired:
			t = Soft
		case permanent:
			t = Hard
		default:
			t = Soft
		}
	}
	if transient {
		t = Soft // RFC 5321 4.2.1: 4yz, the same command may succeed later
	}
	v := Verdict{Type: t, Class: c}
	v.Suppress = t == Hard && (c == InvalidRecipient || suppress && !transient)
	return v
}

// transient: a 4xx reply, or no reply and a 4.x.x status.
func (in *input) transient() bool {
	if in.code >= 400 && in.code <= 599 {
		return in.code < 500
	}
	return in.hasStatus && in.status[0] == 4
}

// permanent: a 5xx reply, or no reply and a 5.x.x status.
func (in *input) permanent() bool {
	if in.code >= 400 && in.code <= 599 {
		return in.code >= 500
	}
	return in.hasStatus && in.status[0] == 5
}

func newInput(code int, enhanced, text string) input {
	if len(text) > maxText {
		text = text[:maxText]
	}
	var in input
	if code >= 200 && code <= 599 {
		in.code = code
	}
	in.status, in.hasStatus = parseStatus(strings.TrimSpace(enhanced))
	// Take the codes from the text when the caller has none: a DSN's
	// Diagnostic-Code (RFC 3464 2.3.6) often holds the whole reply.
	first := cutSMTP(strings.TrimSpace(text))
	if c, rest, ok := cutReplyCode(first); ok {
		if in.code == 0 {
			in.code = c
		}
		first = rest
	}
	if !in.hasStatus {
		tok, _, _ := strings.Cut(first, " ")
		in.status, in.hasStatus = parseStatus(strings.TrimRight(tok, ".,;:"))
	}
	in.text = normalizeText(text)
	return in
}

// parseStatus reads an RFC 3463 2 status code: class "." subject "."
// detail, class 2, 4 or 5, subject and detail 1 to 3 digits.
func parseStatus(s string) ([3]int, bool) {
	var st [3]int
	f := strings.Split(s, ".")
	if len(f) != 3 {
		return st, false
	}
	for i, p := range f {
		n, ok := statusNumber(p)
		if !ok {
			return st, false
		}
		st[i] = n
	}
	if st[0] != 2 && st[0] != 4 && st[0] != 5 || len(f[0]) != 1 {
		return st, false
	}
	return st, true
}

// cutReplyCode reads an RFC 5321 4.2 reply code (three digits, 2-5 first)
// and the space or hyphen after it.
func cutReplyCode(s string) (int, string, bool) {
	if len(s) < 3 || s[0] < '2' || s[0] > '5' || s[1] < '0' || s[1] > '9' || s[2] < '0' || s[2] > '9' {
		return 0, s, false
	}
	if len(s) > 3 && s[3] != ' ' && s[3] != '-' && s[3] != '\t' {
		return 0, s, false
	}
	code := int(s[0]-'0')*100 + int(s[1]-'0')*10 + int(s[2]-'0')
	if len(s) == 3 {
		return code, "", true
	}
	return code, strings.TrimLeft(s[4:], " \t"), true
}

// normalizeText joins the lines of a reply into one, without the reply
// code and enhanced code that start each line of a multi-line reply
// (RFC 5321 4.2.1; RFC 2034), and with every white space run made one
// space, so that a pattern matches across a line break.
func normalizeText(text string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(text, "\n") {
		line = strings.TrimSpace(line)
		line = cutSMTP(line)
		if _, rest, ok := cutReplyCode(line); ok {
			line = rest
			tok, after, _ := strings.Cut(line, " ")
			if _, ok := parseStatus(tok); ok {
				line = after
			}
		}
		for f := range strings.FieldsSeq(line) {
			if isContinuation(f) {
				continue // "550-5.7.1" of a multi-line reply unfolded into one line
			}
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(f)
		}
	}
	return b.String()
}

// cutSMTP takes off the "smtp;" diagnostic type of RFC 3464 2.3.6, in any
// case, and the blanks after it.
func cutSMTP(s string) string {
	if len(s) >= 5 && strings.EqualFold(s[:5], "smtp;") {
		return strings.TrimLeft(s[5:], " \t")
	}
	return s
}

// isContinuation: a token like "550-5.7.1" or "550-", the start of a line
// of a multi-line reply (RFC 5321 4.2.1) that a DSN has unfolded.
func isContinuation(f string) bool {
	code, rest, ok := cutReplyCode(f)
	if !ok || code == 0 || len(f) < 4 || f[3] != '-' {
		return false
	}
	if rest == "" {
		return true
	}
	_, ok = parseStatus(rest)
	return ok
}
