package bounce

import (
	"bufio"
	"bytes"
	netmail "net/mail"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-message/textproto"
)

// original reads the fields of the first returned message or header part.
func (w *walker) original() OriginalHeaders {
	for _, raw := range w.headers {
		if o, ok := readOriginal(raw); ok {
			return o
		}
	}
	return OriginalHeaders{}
}

// Markers after which plain-text bounces quote the returned message.
var inlineMarkers = []string{
	"--- Below this line is a copy of the message.",                    // qmail
	"------ This is a copy of the message, including all the headers.", // Exim
	"------ This is a copy of the message's headers.",                  // Exim, headers only
	"----- Original message -----",                                     // Gmail (older)
	"----- Message header follows -----",
	"Original message headers:", // Exchange
	"Original Message Headers",  // Microsoft 365
	"----- Original message header -----",
	"Below is a copy of the original message:", // Yahoo
	"--- Original message follows.",
}

// inlineOriginal finds the returned message inside a plain-text bounce.
func (w *walker) inlineOriginal() OriginalHeaders {
	for _, t := range w.texts {
		for _, m := range inlineMarkers {
			i := bytes.Index(t, []byte(m))
			if i < 0 {
				continue
			}
			rest := t[i+len(m):]
			if j := bytes.IndexByte(rest, '\n'); j >= 0 {
				rest = rest[j+1:]
			} else {
				continue
			}
			rest = bytes.TrimLeft(rest, "\r\n")
			rest = unindent(rest)
			if o, ok := readOriginal(rest); ok {
				return o
			}
		}
	}
	return OriginalHeaders{}
}

// unindent takes off a common leading indentation of two spaces (Exim
// indents nothing, some MTAs quote with spaces).
func unindent(b []byte) []byte {
	if !bytes.HasPrefix(b, []byte("  ")) {
		return b
	}
	var out bytes.Buffer
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		out.Write(bytes.TrimPrefix(line, []byte("  ")))
		out.WriteByte('\n')
	}
	return out.Bytes()
}

// readOriginal reads Message-ID, Return-Path, From and To from a message or
// header block; ok when any was found. A header past the limit is read up
// to it.
func readOriginal(raw []byte) (OriginalHeaders, bool) {
	head, _ := splitHeader(raw)
	if len(head) > maxHeaderSize {
		head = head[:maxHeaderSize]
	}
	h, _ := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(append(bytes.Clone(head), "\r\n"...))))
	o := OriginalHeaders{
		MessageID:  cleanMessageID(h.Get("Message-Id")),
		ReturnPath: cleanAddress(h.Get("Return-Path")),
		From:       firstAddress(h.Get("From")),
		To:         addressList(h.Values("To")),
	}
	return o, o.MessageID != "" || o.ReturnPath != "" || o.From != "" || len(o.To) > 0
}

// cleanMessageID returns the msg-id without its angle brackets (RFC 5322
// 3.6.4), "" when there is none fit to keep.
func cleanMessageID(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '<'); i >= 0 {
		if j := strings.IndexByte(s[i:], '>'); j > 0 {
			s = s[i+1 : i+j]
		}
	}
	s = strings.TrimSpace(s)
	if !safeText(s) || strings.ContainsAny(s, " \t<>") || len(s) > maxAddressLen {
		return ""
	}
	return s
}

// cleanAddress returns addr-spec from a path or address field: without
// blanks and angle brackets, valid UTF-8, no controls, with an '@'; or "".
func cleanAddress(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '<'); i >= 0 {
		if j := strings.IndexByte(s[i:], '>'); j > 0 {
			s = s[i+1 : i+j]
		}
	}
	s = strings.Trim(strings.TrimSpace(s), "<>")
	s = strings.TrimSpace(s)
	if len(s) > maxAddressLen || !safeText(s) || strings.ContainsAny(s, " \t<>") {
		return ""
	}
	at := strings.LastIndexByte(s, '@')
	if at <= 0 || at == len(s)-1 {
		return ""
	}
	return s
}

// safeText: valid UTF-8 and no control characters (CR, LF, NUL, …).
func safeText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}

// cleanText makes a diagnostic or field value fit to store: valid UTF-8,
// white space runs one space, controls dropped, at most maxFieldLen octets.
func cleanText(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r == '\t' || r == '\r' || r == '\n' {
			return ' '
		}
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return -1
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > maxFieldLen {
		s = s[:maxFieldLen]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return s
}

// looseAddr finds something shaped like an address in free text.
var looseAddr = regexp.MustCompile(`[^\s<>()\[\],;:"'` + "`" + `]+@[A-Za-z0-9\x{80}-\x{10FFFF}][A-Za-z0-9.\-\x{80}-\x{10FFFF}]*[A-Za-z0-9\x{80}-\x{10FFFF}]`)

// addressList reads the addresses of To fields (RFC 5322 3.4), falling back
// to what looks like addresses when the list does not parse.
func addressList(values []string) []string {
	var out []string
	for _, v := range values {
		if list, err := netmail.ParseAddressList(v); err == nil {
			for _, a := range list {
				if c := cleanAddress(a.Address); c != "" {
					out = append(out, c)
				}
			}
			continue
		}
		for _, m := range looseAddr.FindAllString(v, 100) {
			if c := cleanAddress(m); c != "" {
				out = append(out, c)
			}
		}
	}
	if len(out) > maxRecipients {
		out = out[:maxRecipients]
	}
	return out
}

func firstAddress(v string) string {
	if v == "" {
		return ""
	}
	if l := addressList([]string{v}); len(l) > 0 {
		return l[0]
	}
	return ""
}
