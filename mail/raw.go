package mail

import (
	"bytes"
	"errors"
	"fmt"
	"mime"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-message/charset"
	"golang.org/x/net/idna"
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
// only show a reader a sender nobody checked. Authentication-Results fields
// are removed too: RFC 8601 5 has a border MTA remove those that claim its
// own authserv-id, and any one a client writes could only vouch for checks
// nobody made, so every one is dropped from a submission. Date and
// Message-ID are added when missing (RFC 6409 8.2, 8.3). Everything else is
// kept as it was, and a missing final line break is added, since SMTP adds
// one anyway.
//
// Received fields of the client are kept, below the one submission adds:
// trace fields are never removed (RFC 5321 4.4), RFC 6409 8 lists no
// removal of them among an MSA's changes, and ours on top tells a reader
// which ones Mailferry wrote.
//
// Every header field obeys the rule of the JSON path (checkHeaderText):
// valid UTF-8, no control character but tab, CRLF only to fold; and so do
// the Subject and display names once their encoded-words are decoded, as
// those are stored as text. 8-bit octets in a header need SMTPUTF8 (RFC
// 6532 3, RFC 6531 3.4): with opts.ASCIIHeaders they are refused
// (ErrNeedsSMTPUTF8). A DKIM-Signature must be for a domain the message
// claims to come from (From, Sender, Resent-From, Resent-Sender), each of
// which the caller checks against the sender's key, or it is refused
// (ErrForeignSignature): one of another domain is a replayed signature,
// and Mailferry must not carry it.
//
// The header section must end with an empty line, even when no body
// follows (RFC 5322 allows leaving it out; we refuse it as the sign of a
// truncated or mangled submission), and holds at most 1000 fields in 1 MiB.
//
// SMTP dot-stuffing is the SMTP client's job: a "." line stays as it is.
func ParseRaw(raw []byte, envelopeTo []string, opts BuildOptions) (*Message, error) {
	opts = opts.withDefaults()
	if len(raw) == 0 {
		return nil, FieldErrors{{Field: "raw", Detail: "the message is empty"}}
	}
	src, err := normalizeLines(raw)
	if err != nil {
		return nil, FieldErrors{{Field: "raw", Detail: err.Error()}}
	}
	fields, bodyStart, err := readHeader(src)
	if err != nil {
		return nil, FieldErrors{{Field: "raw", Detail: err.Error()}}
	}

	var (
		errs                  FieldErrors
		from, sender, headRcp []Address
		resent                []string
		fromFields, senders   int
		subject, msgID        string
		hasSubject, hasID     bool
		hasDate               bool
		signers               []string // d= of each DKIM-Signature
		badFields             int
	)
	for _, f := range fields {
		if detail, kind := checkFieldBody(src[f.valueStart:f.end-2], opts.ASCIIHeaders); detail != "" {
			// At most maxErrorsPerList named: 1000 bad fields give a short answer.
			if badFields++; badFields <= maxErrorsPerList {
				errs.addKind("raw", f.name+": "+detail, kind)
			}
			continue
		}
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
				if detail := checkHeaderText(subject); detail != "" {
					errs.add("raw", "Subject: its encoded-words decode to text that "+detail)
				}
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
		case "dkim-signature":
			signers = append(signers, signingDomain(v))
		}
	}
	if badFields > maxErrorsPerList {
		errs.add("raw", fmt.Sprintf("%d more header fields are not valid", badFields-maxErrorsPerList))
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
	for _, d := range signers {
		if !claimed(d, from, sender, resent) {
			errs.addKind("raw", foreignSignature(d), ErrForeignSignature)
		}
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
		// Authentication-Results: see above.
		if strings.EqualFold(f.name, "bcc") || strings.EqualFold(f.name, "resent-bcc") || strings.EqualFold(f.name, "return-path") ||
			strings.EqualFold(f.name, "authentication-results") {
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

// decodeText decodes the encoded-words of an unstructured field (RFC 2047);
// what they decode to is for checkHeaderText to judge.
func decodeText(v string) string {
	dec := mime.WordDecoder{CharsetReader: charset.Reader}
	if s, err := dec.DecodeHeader(v); err == nil {
		v = s
	}
	return v
}

// checkFieldBody returns why a raw field body (folds included) cannot be
// sent or stored, or "", and the kind of the problem when it has one. It
// is checkHeaderText for raw octets: the CRLF of a fold is the one line
// break allowed, since readHeader made every other line a field of its own.
func checkFieldBody(v []byte, asciiOnly bool) (string, error) {
	eightBit := false
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '\r' && i+1 < len(v) && v[i+1] == '\n':
			i++ // a fold (RFC 5322 2.2.3)
		case c == 0 || c == '\r' || c == '\n':
			return "must not contain CR, LF or NUL outside a fold (RFC 5322 2.2)", nil
		case isControl(rune(c)):
			return fmt.Sprintf("must not contain control characters other than tab (0x%02X at octet %d)", c, i), nil
		case c >= 0x80:
			eightBit = true
		}
	}
	switch {
	case !eightBit:
		return "", nil
	case !utf8.Valid(v):
		return "is not valid UTF-8: 8-bit header text must be UTF-8 (RFC 6532 3.2), or encoded-words (RFC 2047)", nil
	case asciiOnly:
		return "has 8-bit octets, which need the SMTPUTF8 parameter on MAIL FROM (RFC 6532 3, RFC 6531 3.4); or write encoded-words (RFC 2047)", ErrNeedsSMTPUTF8
	}
	return "", nil
}

// signingDomain is the d= tag of a DKIM-Signature field body (RFC 6376
// 3.5), lower case in A-label form, or "" when it has none.
func signingDomain(v string) string {
	for _, tag := range strings.Split(v, ";") {
		name, value, ok := strings.Cut(tag, "=")
		if !ok || strings.Trim(name, " \t") != "d" {
			continue
		}
		d := strings.ToLower(strings.Trim(value, " \t")) // RFC 6376 3.2: FWS around the value
		if a, err := idna.Lookup.ToASCII(d); err == nil {
			d = a
		}
		return d
	}
	return ""
}

// claimed reports whether d is the domain of a sender the message names.
// Equal only: a parent domain (what DMARC's relaxed alignment would take)
// could be one the key may not send from.
func claimed(d string, from, sender []Address, resent []string) bool {
	if d == "" {
		return false
	}
	for _, list := range [][]Address{from, sender} {
		for _, a := range list {
			if a.Domain() == d {
				return true
			}
		}
	}
	return slices.ContainsFunc(resent, func(addr string) bool { return strings.ToLower(domainOf(addr)) == d })
}

func foreignSignature(d string) string {
	if d == "" {
		return "DKIM-Signature: has no d= tag (RFC 6376 3.5)"
	}
	if !IsDomainName(d) {
		d = strconv.QuoteToASCII(d) // the detail goes into an SMTP reply
	}
	return "DKIM-Signature: d=" + d + " is not the domain of the From, Sender or Resent-From address; " +
		"Mailferry signs for the sender's domain itself, so leave signatures of other domains out"
}
