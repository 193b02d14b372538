package mail

import (
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"mime"
	"path"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Draft is the structured JSON of POST /v1/messages. The api package decodes
// into it with DisallowUnknownFields: the json tags are the contract.
type Draft struct {
	From        string            `json:"from"`
	To          []string          `json:"to"`
	Cc          []string          `json:"cc"`
	Bcc         []string          `json:"bcc"`
	ReplyTo     string            `json:"reply_to"` // one address
	Subject     string            `json:"subject"`
	Text        string            `json:"text"`
	HTML        string            `json:"html"`
	Headers     map[string]string `json:"headers"`
	Attachments []Attachment      `json:"attachments"`
}

// Attachment is one file of a Draft.
type Attachment struct {
	Filename    string `json:"filename"`
	ContentType string `json:"content_type"` // "" → from the filename extension, else application/octet-stream
	Content     string `json:"content"`      // base64: standard alphabet, padding optional, white space ignored
	ContentID   string `json:"content_id"`   // set: an inline part in multipart/related with the html
}

const (
	maxCustomHeaders   = 100
	maxHeaderValue     = 2000
	maxFilename        = 255 // what file systems take
	maxContentID       = 250
	maxErrorsPerList   = 20 // then one summary error, so a huge bad list gives a short answer
	defaultContentType = "application/octet-stream"
)

// Build checks a Draft and makes the message. Every bad field is reported,
// in one FieldErrors value.
func Build(d Draft, opts BuildOptions) (*Message, error) {
	opts = opts.withDefaults()
	var errs FieldErrors

	var from Address
	if d.From == "" {
		errs.add("from", "is required")
	} else if a, err := ParseAddress(d.From); err != nil {
		errs.add("from", err.Error())
	} else {
		from = a
	}
	to := parseEntries(&errs, "to", d.To)
	cc := parseEntries(&errs, "cc", d.Cc)
	bcc := parseEntries(&errs, "bcc", d.Bcc)
	var replyTo []Address
	if d.ReplyTo != "" {
		if a, err := ParseAddress(d.ReplyTo); err != nil {
			errs.add("reply_to", err.Error())
		} else {
			replyTo = []Address{a}
		}
	}
	if detail := checkHeaderText(d.Subject); detail != "" {
		errs.add("subject", detail)
	}
	if !utf8.ValidString(d.Text) {
		errs.add("text", "is not valid UTF-8")
	}
	if !utf8.ValidString(d.HTML) {
		errs.add("html", "is not valid UTF-8")
	}
	if d.Text == "" && d.HTML == "" && len(d.Attachments) == 0 {
		errs.add("text", "text, html or an attachment is required")
	}
	headers := checkHeaders(&errs, d.Headers)
	atts := checkAttachments(&errs, d.Attachments)

	var rcpts recipientSet
	for _, list := range [][]Address{to, cc, bcc} {
		for _, a := range list {
			rcpts.add(a)
		}
	}
	if len(d.To)+len(d.Cc)+len(d.Bcc) == 0 {
		errs.add("to", "at least one recipient is required")
	} else if len(rcpts.list) > opts.MaxRecipients {
		errs.add("to", fmt.Sprintf("too many recipients: %d > %d", len(rcpts.list), opts.MaxRecipients))
	}
	if len(errs) > 0 {
		return nil, errs
	}

	id, err := opts.messageID(from.Domain())
	if err != nil {
		return nil, err
	}
	root := structure(d.Text, d.HTML, atts)

	w := headerWriter{b: make([]byte, 0, sizeHint(d, atts))}
	w.field("Date")
	w.token(dateValue(opts.Now()))
	w.end()
	w.field("From")
	w.address(from)
	w.end()
	if len(to) == 0 && len(cc) == 0 {
		w.field("To")
		w.token("undisclosed-recipients:;") // RFC 5322 3.6.3: Bcc only
		w.end()
	}
	for _, f := range []struct {
		name string
		list []Address
	}{{"To", to}, {"Cc", cc}, {"Reply-To", replyTo}} {
		if len(f.list) > 0 {
			w.field(f.name)
			w.addresses(f.list)
			w.end()
		}
	}
	w.field("Subject")
	w.text(d.Subject, true)
	w.end()
	w.field("Message-ID")
	w.token("<" + id + ">")
	w.end()
	w.field("MIME-Version")
	w.token("1.0")
	w.end()
	root.header(&w)
	for _, h := range headers {
		w.field(h.name)
		w.text(h.value, false)
		w.end()
	}
	w.b = append(w.b, '\r', '\n')
	headerLen := len(w.b)
	root.body(&w)
	switch {
	case len(w.b) >= 2 && string(w.b[len(w.b)-2:]) == "\r\n":
	case isQP(root):
		w.b = append(w.b, '=', '\r', '\n') // a soft break: the text decodes unchanged
	default:
		w.b = append(w.b, '\r', '\n') // SMTP needs it before the final dot anyway
	}

	needsUTF8 := from.NeedsSMTPUTF8()
	for _, list := range [][]Address{to, cc, bcc, replyTo} {
		for _, a := range list {
			needsUTF8 = needsUTF8 || a.NeedsSMTPUTF8()
		}
	}
	return &Message{
		From:       []Address{from},
		Sender:     from.Addr,
		Recipients: rcpts.list,
		MessageID:  id,
		Subject:    d.Subject,
		Body:       w.b,
		Needs8Bit:  has8bit(w.b[:headerLen]), // parts are 7bit, quoted-printable or base64
		NeedsUTF8:  needsUTF8,
	}, nil
}

// parseEntries parses a list of single addresses, naming errors field[i].
func parseEntries(errs *FieldErrors, field string, entries []string) []Address {
	out := make([]Address, 0, len(entries))
	bad := 0
	for i, s := range entries {
		a, err := ParseAddress(s)
		if err != nil {
			if bad++; bad <= maxErrorsPerList {
				errs.add(field+"["+strconv.Itoa(i)+"]", err.Error())
			}
			continue
		}
		out = append(out, a)
	}
	if bad > maxErrorsPerList {
		errs.add(field, fmt.Sprintf("%d more invalid addresses", bad-maxErrorsPerList))
	}
	return out
}

type customHeader struct{ name, value string }

// checkHeaders checks the custom headers and returns them sorted by name,
// so that the same draft gives the same message and the same errors.
func checkHeaders(errs *FieldErrors, h map[string]string) []customHeader {
	if len(h) > maxCustomHeaders {
		errs.add("headers", fmt.Sprintf("too many headers: %d > %d", len(h), maxCustomHeaders))
		return nil
	}
	out := make([]customHeader, 0, len(h))
	for _, name := range slices.Sorted(maps.Keys(h)) {
		value := h[name]
		field := "headers." + name
		if detail := checkFieldName(name); detail != "" {
			errs.add(field, detail)
			continue
		}
		if detail := checkHeaderText(value); detail != "" {
			errs.add(field, "the value "+detail)
			continue
		}
		if len(value) > maxHeaderValue {
			errs.add(field, fmt.Sprintf("the value is %d octets; the limit is %d", len(value), maxHeaderValue))
			continue
		}
		out = append(out, customHeader{name, value})
	}
	return out
}

// checkFieldName returns why name cannot be a custom header, or "".
func checkFieldName(name string) string {
	if name == "" {
		return "the header name is empty"
	}
	if len(name) > maxFieldName {
		return fmt.Sprintf("the header name is %d octets; the limit is %d", len(name), maxFieldName)
	}
	for i := 0; i < len(name); i++ {
		// RFC 5322 2.2: ftext is printable ASCII but ":".
		if c := name[i]; c < 33 || c > 126 || c == ':' {
			return "the header name must be printable ASCII without spaces or ':' (RFC 5322 2.2)"
		}
	}
	lower := strings.ToLower(name)
	switch lower {
	case "from", "to", "cc", "bcc", "reply-to", "subject":
		return "cannot be set in headers; use the " + strings.ReplaceAll(lower, "-", "_") + " field"
	case "sender", "date", "message-id", "mime-version", "return-path", "received",
		"dkim-signature", "authentication-results":
		return "is set by Mailferry or the receiving servers and cannot be given in headers"
	}
	for _, prefix := range []string{
		"content-", // RFC 2045 9: MIME's; the builder writes them
		"resent-",  // RFC 5322 3.6.6: would claim other senders
		"arc-",     // RFC 8617: set by forwarding servers
	} {
		if strings.HasPrefix(lower, prefix) {
			return "is set by Mailferry or the receiving servers and cannot be given in headers"
		}
	}
	return ""
}

// attachment is a checked Attachment with its content decoded.
type attachment struct {
	mediaType string
	params    []param
	filename  string
	contentID string // without angle brackets; "" when not inline
	data      []byte
}

func checkAttachments(errs *FieldErrors, in []Attachment) []attachment {
	out := make([]attachment, 0, len(in))
	ids := make(map[string]bool)
	for i, a := range in {
		field := "attachments[" + strconv.Itoa(i) + "]."
		ok := true
		bad := func(name, detail string) {
			errs.add(field+name, detail)
			ok = false
		}
		if detail := checkHeaderText(a.Filename); detail != "" {
			bad("filename", detail)
		} else if len(a.Filename) > maxFilename {
			bad("filename", fmt.Sprintf("is %d octets; the limit is %d", len(a.Filename), maxFilename))
		}
		var att attachment
		att.filename = a.Filename
		ct := a.ContentType
		if ct == "" {
			ct = typeByFilename(a.Filename)
		}
		if detail := checkHeaderText(ct); detail != "" {
			bad("content_type", detail)
		} else if mt, params, err := mime.ParseMediaType(ct); err != nil {
			bad("content_type", "not a media type: "+err.Error())
		} else if typ, sub, _ := strings.Cut(mt, "/"); typ == "" || sub == "" || strings.Contains(sub, "/") {
			bad("content_type", "not a media type: want type/subtype (RFC 2045 5.1)")
		} else if typ == "multipart" || typ == "message" {
			// RFC 2046 5.1.1, 5.2.1: these cannot be base64-encoded.
			bad("content_type", mt+" cannot be attached; send it as application/octet-stream or as a raw message")
		} else {
			att.mediaType = mt
			for _, k := range slices.Sorted(maps.Keys(params)) {
				att.params = append(att.params, param{k, params[k]})
			}
		}
		if a.ContentID != "" {
			cid := strings.TrimSuffix(strings.TrimPrefix(a.ContentID, "<"), ">")
			switch {
			case checkHeaderText(cid) != "":
				bad("content_id", checkHeaderText(cid))
			case len(cid) > maxContentID:
				bad("content_id", fmt.Sprintf("is %d octets; the limit is %d", len(cid), maxContentID))
			case !isContentID(cid):
				bad("content_id", "must be printable ASCII without spaces, '<' or '>' (RFC 2045 7)")
			case ids[cid]:
				bad("content_id", "is used by another attachment")
			default:
				ids[cid] = true
				att.contentID = cid
			}
		}
		data, err := decodeBase64(a.Content)
		if err != nil {
			bad("content", "not valid base64: "+err.Error())
		}
		att.data = data
		if ok {
			out = append(out, att)
		}
	}
	return out
}

func isContentID(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '<' || c == '>' {
			return false
		}
	}
	return true
}

// decodeBase64 decodes standard base64 with or without padding, ignoring
// white space (JSON clients often wrap at 76 columns).
func decodeBase64(s string) ([]byte, error) {
	src := []byte(s)
	if strings.IndexByte(s, ' ') >= 0 || strings.IndexByte(s, '\t') >= 0 || strings.IndexByte(s, '\r') >= 0 || strings.IndexByte(s, '\n') >= 0 {
		src = slices.DeleteFunc(src, func(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' })
	}
	for i := 0; i < 2 && len(src) > 0 && src[len(src)-1] == '='; i++ {
		src = src[:len(src)-1]
	}
	dst := make([]byte, base64.RawStdEncoding.DecodedLen(len(src)))
	n, err := base64.RawStdEncoding.Decode(dst, src)
	if err != nil {
		var corrupt base64.CorruptInputError
		if errors.As(err, &corrupt) {
			return nil, fmt.Errorf("bad data at octet %d", int64(corrupt))
		}
		return nil, err
	}
	return dst[:n], nil
}

// typeByFilename guesses a media type from the file name: a table of the
// common attachment types first, so the guess does not depend on the host's
// mime.types, then the standard library's, then application/octet-stream.
func typeByFilename(name string) string {
	ext := strings.ToLower(path.Ext(name))
	switch ext {
	case "":
		return defaultContentType
	case ".pdf":
		return "application/pdf"
	case ".txt":
		return "text/plain"
	case ".csv":
		return "text/csv"
	case ".htm", ".html":
		return "text/html"
	case ".ics":
		return "text/calendar"
	case ".png":
		return "image/png"
	case ".jpg", ".jpeg":
		return "image/jpeg"
	case ".gif":
		return "image/gif"
	case ".webp":
		return "image/webp"
	case ".svg":
		return "image/svg+xml"
	case ".zip":
		return "application/zip"
	case ".gz":
		return "application/gzip"
	case ".json":
		return "application/json"
	case ".xml":
		return "application/xml"
	case ".doc":
		return "application/msword"
	case ".docx":
		return "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
	case ".xls":
		return "application/vnd.ms-excel"
	case ".xlsx":
		return "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
	case ".pptx":
		return "application/vnd.openxmlformats-officedocument.presentationml.presentation"
	}
	if t := mime.TypeByExtension(ext); t != "" {
		return t
	}
	return defaultContentType
}

// sizeHint estimates the message size so that Build allocates once.
func sizeHint(d Draft, atts []attachment) int {
	n := 2048 + len(d.Subject)*2 + len(d.Text)*11/10 + len(d.HTML)*11/10
	for _, a := range atts {
		n += 512 + (len(a.data)+2)/3*4*78/76
	}
	return n
}
