package smtpclient

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Limits on one server reply. RFC 5321 4.5.3.1.5 caps a reply line at 512
// octets; like go-smtp we allow twice that and more, but never an unbounded
// amount: a peer that streams an endless multi-line reply must cost us a
// deferral, not memory.
const (
	maxReplyLine  = 2000      // bytes in one line, as go-smtp's own line limit
	maxReplyLines = 100       // lines in one reply
	maxReplyBytes = 64 * 1024 // bytes in one reply
)

var errReplyTooLong = fmt.Errorf("reply longer than %d lines or %d bytes", maxReplyLines, maxReplyBytes)

// reply is one server reply, RFC 5321 4.2.
type reply struct {
	Code     int
	Enhanced string // RFC 3463 code of the first line, "" if none
	Text     string // lines joined by "\n", codes stripped
}

// readReply reads one reply: lines "NNN-text" ending with "NNN text" (or a
// bare "NNN"), all with the same code whose first digit is 2 to 5 (RFC 5321
// 4.2.1). A line ending in LF alone is accepted; a repeated enhanced code on
// continuation lines (RFC 2034 3) is stripped. It refuses anything else and
// anything longer than the limits above.
func readReply(r *bufio.Reader) (reply, error) {
	var (
		rep   reply
		lines []string
		total int
	)
	for {
		raw, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) || len(raw) > maxReplyLine {
			return reply{}, fmt.Errorf("reply line longer than %d bytes", maxReplyLine)
		}
		if err != nil {
			return reply{}, err
		}
		total += len(raw)
		if len(lines) == maxReplyLines || total > maxReplyBytes {
			return reply{}, errReplyTooLong
		}
		line := string(bytes.TrimSuffix(bytes.TrimSuffix(raw, []byte("\n")), []byte("\r")))
		code, last, text, err := parseReplyLine(line)
		if err != nil {
			return reply{}, err
		}
		if len(lines) == 0 {
			rep.Code = code
			rep.Enhanced, text = parseEnhanced(code, text)
		} else {
			if code != rep.Code {
				return reply{}, fmt.Errorf("reply code changed from %d to %d within a reply: %q", rep.Code, code, line)
			}
			if rep.Enhanced != "" && text == rep.Enhanced {
				text = ""
			} else if rep.Enhanced != "" {
				text = strings.TrimPrefix(text, rep.Enhanced+" ")
			}
		}
		lines = append(lines, text)
		if last {
			rep.Text = strings.Join(lines, "\n")
			return rep, nil
		}
	}
}

func parseReplyLine(line string) (code int, last bool, text string, err error) {
	if len(line) < 3 || line[0] < '2' || line[0] > '5' || !isDigit(line[1]) || !isDigit(line[2]) {
		return 0, false, "", fmt.Errorf("malformed reply line %q: want a 3-digit code 200-599", clip(line))
	}
	code, _ = strconv.Atoi(line[:3])
	switch {
	case len(line) == 3:
		return code, true, "", nil
	case line[3] == ' ':
		return code, true, line[4:], nil
	case line[3] == '-':
		return code, false, line[4:], nil
	}
	return 0, false, "", fmt.Errorf("malformed reply line %q: code not followed by space or hyphen", clip(line))
}

// parseEnhanced splits an RFC 3463 status code off the front of a reply's
// text: class "." subject "." detail, subject and detail 1 to 3 digits
// (RFC 3463 2), followed by a space or the end. The code is kept only when
// its class agrees with the reply code's first digit, so a 250 never
// carries "5.1.1"; otherwise text comes back whole.
func parseEnhanced(code int, text string) (enhanced, rest string) {
	word, after, _ := strings.Cut(text, " ")
	if !validEnhanced(code, word) {
		return "", text
	}
	return word, after
}

func validEnhanced(code int, s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || int(parts[0][0]-'0') != code/100 {
		return false
	}
	if c := parts[0][0]; c != '2' && c != '4' && c != '5' {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) < 1 || len(p) > 3 {
			return false
		}
		for i := range len(p) {
			if !isDigit(p[i]) {
				return false
			}
		}
	}
	return true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// clip keeps error messages about hostile input short.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
