package mail

import (
	"bytes"
	"errors"
	"fmt"
	"mime"
	"strconv"
	"strings"

	"github.com/emersion/go-message/charset"
)

const (
	maxHeaderFields = 1000
	maxHeaderBytes  = 1 << 20
)

// ParseRaw checks a ready RFC 5322 message and prepares it for sending.
// envelopeTo lists the envelope recipients; when it is empty they are the
// To, Cc and Bcc addresses of the message (group members included).
//
// Line endings become CRLF, bare LF and bare CR included, so that no server
// down the line reads a line end the others do not (SMTP smuggling); lines
// over 998 octets are refused (RFC 5322 2.1.1). A From field is required,
// and with more than one mailbox in it a Sender field too (RFC 5322 3.6.2).
// Bcc and Resent-Bcc fields are removed (RFC 5322 3.6.3, 3.6.6), and so is
// Return-Path: the final server adds it from our envelope (RFC 5321 4.4: "A
// message-originating SMTP system SHOULD NOT send a message that already
// contains a Return-path header field"), so one written by the client could
// only show a reader a sender nobody checked. Date and Message-ID are added when
// missing (RFC 6409 8.2, 8.3). Everything else is kept as it was, and a
// missing final line break is added, since SMTP adds one anyway.
//
// The header section must end with an empty line, even when no body
// follows (RFC 5322 allows leaving it out; we refuse it as the sign of a
// truncated or mangled submission), and holds at most 1000 fields in 1 MiB.
//
// SMTP dot-stuffing is the SMTP client's job: a "." line stays as it is.
func ParseRaw(raw []byte, envelopeTo []string, opts BuildOptions) (*Message, error) {
	opts = opts.withDefaults()
	if len(raw) == 0 {
		return nil, FieldErrors{{"raw", "the message is empty"}}
	}
	src, err := normalizeLines(raw)
	if err != nil {
		return nil, FieldErrors{{"raw", err.Error()}}
	}
	fields, bodyStart, err := readHeader(src)
	if err != nil {
		return nil, FieldErrors{{"raw", err.Error()}}
	}

	var (
		errs                  FieldErrors
		from, sender, headRcp []Address
		resent                []string
		fromFields, senders   int
		subject, msgID        string
		hasSubject, hasID     bool
		hasDate               bool
	)
	for _, f := range fields {
		v := f.value(src)
		switch strings.ToLower(f.name) {
		case "from":
			fromFields++
			list, err := parseAddressList(v, false)
			if err != nil {
				errs.add("raw", "From: "+err.Error())
			}
			from = append(from, list...)
		case "sender":
			senders++
			list, err := parseAddressList(v, false)
			switch {
			case err != nil:
				errs.add("raw", "Sender: "+err.Error())
			case len(list) != 1:
				errs.add("raw", "Sender: must be one mailbox (RFC 5322 3.6.2)")
			}
			sender = append(sender, list...)
		case "resent-from", "resent-sender":
			// RFC 5322 3.6.6: who resent the message. Readers show these as
			// its sender, so their domains are checked like From's; one
			// that does not parse cannot be checked and is refused.
			list, err := parseAddressList(v, false)
			switch {
			case err != nil:
				errs.add("raw", f.name+": "+err.Error())
			case len(list) == 0:
				errs.add("raw", f.name+": has no mailbox")
			}
			for _, a := range list {
				resent = append(resent, a.Addr)
			}
		case "to", "cc", "bcc":
			list, err := parseAddressList(v, true)
			if err != nil {
				errs.add("raw", f.name+": "+err.Error())
			}
			headRcp = append(headRcp, list...)
		case "subject":
			if !hasSubject {
				subject, hasSubject = decodeText(v), true
			}
		case "message-id":
			if !hasID {
				msgID, hasID = parseMsgID(v), true
				if msgID == "" {
					errs.add("raw", "Message-ID: has no id")
				}
			}
		case "date":
			hasDate = true
		}
	}
	switch {
	case fromFields == 0:
		errs.add("raw", "a From header field is required (RFC 5322 3.6)")
	case fromFields > 1:
		errs.add("raw", "more than one From header field (RFC 5322 3.6)")
	case len(from) == 0 && len(errs) == 0:
		errs.add("raw", "From: has no mailbox")
	case len(from) > 1 && senders == 0:
		errs.add("raw", fmt.Sprintf("From: has %d mailboxes, so a Sender header field is required (RFC 5322 3.6.2)", len(from)))
	}
	if senders > 1 {
		errs.add("raw", "more than one Sender header field (RFC 5322 3.6)")
	}

	var rcpts recipientSet
	if len(envelopeTo) > 0 {
		for _, a := range parseEntries(&errs, "to", envelopeTo) {
			rcpts.add(a)
		}
	} else {
		for _, a := range headRcp {
			rcpts.add(a)
		}
	}
	switch {
	case len(rcpts.list) == 0 && len(envelopeTo) == 0:
		errs.add("to", "at least one recipient is required: none given, and the message has no To, Cc or Bcc address")
	case len(rcpts.list) > opts.MaxRecipients:
		errs.add("to", fmt.Sprintf("too many recipients: %d > %d", len(rcpts.list), opts.MaxRecipients))
	}
	if len(errs) > 0 {
		return nil, errs
	}

	envSender := from[0]
	var senderHeader string
	if len(sender) > 0 {
		envSender = sender[0]
		senderHeader = sender[0].Addr
	}
	if !hasID {
		if msgID, err = opts.messageID(from[0].Domain()); err != nil {
			return nil, err
		}
	}

	room := max(opts.TraceRoom, 0)
	buf := make([]byte, room, room+len(src)+len(msgID)+80)
	out := buf[room:]
	for _, f := range fields {
		// RFC 5322 3.6.3: Bcc recipients must not see each other, nor the
		// others them; Resent-Bcc likewise (3.6.6). Return-Path: see above.
		if strings.EqualFold(f.name, "bcc") || strings.EqualFold(f.name, "resent-bcc") || strings.EqualFold(f.name, "return-path") {
			continue
		}
		out = append(out, src[f.start:f.end]...)
	}
	if !hasDate {
		out = append(out, "Date: "+dateValue(opts.Now())+"\r\n"...) // RFC 6409 8.3
	}
	if !hasID {
		out = append(out, "Message-ID: <"+msgID+">\r\n"...) // RFC 6409 8.3
	}
	headerLen := len(out)
	out = append(out, src[bodyStart-2:]...) // the empty line and the body

	needsUTF8 := has8bit(out[:headerLen]) // RFC 6532 headers
	for _, list := range [][]Address{from, sender, headRcp} {
		for _, a := range list {
			needsUTF8 = needsUTF8 || a.NeedsSMTPUTF8()
		}
	}
	for _, r := range rcpts.list {
		needsUTF8 = needsUTF8 || !isASCII(r)
	}
	return &Message{
		From:         from,
		Sender:       envSender.Addr,
		SenderHeader: senderHeader,
		Resent:       resent,
		Recipients:   rcpts.list,
		MessageID:    msgID,
		Subject:      subject,
		Body:         out,
		Needs8Bit:    has8bit(out),
		NeedsUTF8:    needsUTF8,
		head:         buf[:room],
	}, nil
}

// normalizeLines makes every line end in CRLF: CRLF stays, a bare CR or LF
// becomes CRLF, and a missing final line end is added. It refuses a line
// longer than 998 octets (RFC 5322 2.1.1). It returns raw itself when that
// is already so.
func normalizeLines(raw []byte) ([]byte, error) {
	clean := true
	line := 1
	for rest := raw; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		content := rest
		if i >= 0 {
			content = rest[:i]
			rest = rest[i+1:]
		} else {
			rest = nil
		}
		if i >= 0 && len(content) > 0 && content[len(content)-1] == '\r' {
			content = content[:len(content)-1]
		} else {
			clean = false // bare LF, or no line end at all
		}
		for {
			j := bytes.IndexByte(content, '\r')
			if j < 0 {
				break
			}
			clean = false // bare CR
			if j > maxLineLen {
				return nil, lineTooLong(line, j)
			}
			content = content[j+1:]
			line++
		}
		if len(content) > maxLineLen {
			return nil, lineTooLong(line, len(content))
		}
		line++
	}
	if clean {
		return raw, nil
	}
	out := make([]byte, 0, len(raw)+len(raw)/32+2)
	for len(raw) > 0 {
		i := bytes.IndexAny(raw, "\r\n")
		if i < 0 {
			out = append(out, raw...)
			break
		}
		out = append(out, raw[:i]...)
		out = append(out, '\r', '\n')
		if raw[i] == '\r' && i+1 < len(raw) && raw[i+1] == '\n' {
			i++
		}
		raw = raw[i+1:]
	}
	if !bytes.HasSuffix(out, []byte("\r\n")) {
		out = append(out, '\r', '\n')
	}
	return out, nil
}

func lineTooLong(line, n int) error {
	return fmt.Errorf("line %d is %d octets long; the limit is %d (RFC 5322 2.1.1)", line, n, maxLineLen)
}

// rawField is one header field of a raw message, as offsets into it.
type rawField struct {
	name       string // without white space before the colon
	start, end int    // the whole field with its final CRLF
	valueStart int    // just after the colon
}

// value is the field body unfolded: the CRLFs of folds removed, white space
// kept (RFC 5322 2.2.3), leading and trailing white space trimmed.
func (f rawField) value(src []byte) string {
	v := src[f.valueStart : f.end-2]
	if bytes.IndexByte(v, '\n') < 0 {
		return strings.Trim(string(v), " \t")
	}
	return strings.Trim(strings.ReplaceAll(string(v), "\r\n", ""), " \t")
}

// readHeader splits the header section of src (CRLF only) into fields and
// returns where the body starts, after the empty line.
func readHeader(src []byte) ([]rawField, int, error) {
	var fields []rawField
	pos := 0
	for line := 1; ; line++ {
		if pos >= len(src) {
			return nil, 0, errors.New("the header section does not end: no empty line before the body")
		}
		if pos > maxHeaderBytes {
			return nil, 0, fmt.Errorf("the header section is larger than %d octets", maxHeaderBytes)
		}
		eol := pos + bytes.IndexByte(src[pos:], '\n') // normalizeLines made every line end in CRLF
		l := src[pos : eol-1]
		switch {
		case len(l) == 0:
			return fields, eol + 1, nil
		case bytes.IndexByte(l, 0) >= 0:
			return nil, 0, fmt.Errorf("line %d: NUL in the header section", line)
		case isWSP(l[0]):
			if len(fields) == 0 {
				return nil, 0, fmt.Errorf("line %d starts with white space, but no header field precedes it", line)
			}
			fields[len(fields)-1].end = eol + 1
		default:
			colon := bytes.IndexByte(l, ':')
			if colon < 0 {
				return nil, 0, fmt.Errorf("line %d is not a header field: it has no colon", line)
			}
			name := bytes.TrimRight(l[:colon], " \t") // RFC 5322 4.5: obs-optional allows WSP before the colon
			if !validFieldName(name) {
				return nil, 0, fmt.Errorf("line %d: %s is not a header field name (RFC 5322 2.2)", line, strconv.Quote(string(name)))
			}
			if len(fields) == maxHeaderFields {
				return nil, 0, fmt.Errorf("more than %d header fields", maxHeaderFields)
			}
			fields = append(fields, rawField{name: string(name), start: pos, end: eol + 1, valueStart: pos + colon + 1})
		}
		pos = eol + 1
	}
}

// validFieldName reports whether name is ftext (RFC 5322 2.2).
func validFieldName(name []byte) bool {
	if len(name) == 0 {
		return false
	}
	for _, c := range name {
		if c < 33 || c > 126 || c == ':' {
			return false
		}
	}
	return true
}

// parseMsgID takes the id out of a Message-ID field body: what is between
// the angle brackets, or the whole when there are none.
func parseMsgID(v string) string {
	if i := strings.IndexByte(v, '<'); i >= 0 {
		if j := strings.IndexByte(v[i:], '>'); j >= 0 {
			return strings.TrimSpace(v[i+1 : i+j])
		}
	}
	return strings.TrimSpace(v)
}

// decodeText decodes the encoded-words of an unstructured field (RFC 2047)
// into valid UTF-8 without NUL, as a database column wants it.
func decodeText(v string) string {
	dec := mime.WordDecoder{CharsetReader: charset.Reader}
	if s, err := dec.DecodeHeader(v); err == nil {
		v = s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(v, "\uFFFD"), "\x00", "\uFFFD")
}
