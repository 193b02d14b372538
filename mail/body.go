package mail

import (
	"crypto/rand"
	"encoding/base64"
	"slices"
)

// entity is one MIME entity (RFC 2045): it writes its Content-* header
// fields, then its body.
type entity interface {
	header(w *headerWriter)
	body(w *headerWriter)
	contentType() string
}

// structure arranges the parts (RFC 2046 5.1): text and html as
// multipart/alternative with the text first (5.1.4, the last is preferred);
// inline parts with the body in multipart/related (RFC 2387); other
// attachments in multipart/mixed, outermost.
func structure(text, html string, atts []attachment) entity {
	var body entity
	switch {
	case text != "" && html != "":
		body = &multipart{subtype: "alternative", parts: []entity{newTextPart("plain", text), newTextPart("html", html)}}
	case text != "":
		body = newTextPart("plain", text)
	case html != "":
		body = newTextPart("html", html)
	}
	var inline, attached []entity
	for i := range atts {
		if atts[i].contentID != "" && body != nil {
			inline = append(inline, &atts[i])
		} else {
			attached = append(attached, &atts[i])
		}
	}
	if len(inline) > 0 {
		body = &multipart{
			subtype: "related",
			params:  []param{{"type", body.contentType()}}, // RFC 2387 3.1: required
			parts:   append([]entity{body}, inline...),
		}
	}
	if len(attached) > 0 {
		if body != nil {
			attached = slices.Insert(attached, 0, body)
		}
		body = &multipart{subtype: "mixed", parts: attached}
	}
	return body
}

func isQP(e entity) bool {
	t, ok := e.(*textPart)
	return ok && t.qp
}

// textPart is text/plain or text/html in UTF-8.
type textPart struct {
	subtype string
	text    string
	qp      bool
}

func newTextPart(subtype, text string) *textPart {
	return &textPart{subtype: subtype, text: text, qp: !is7bit(text)}
}

func (t *textPart) contentType() string { return "text/" + t.subtype }

func (t *textPart) header(w *headerWriter) {
	w.field("Content-Type")
	w.mediaType(t.contentType(), param{"charset", "utf-8"})
	w.end()
	w.field("Content-Transfer-Encoding")
	if t.qp {
		w.token("quoted-printable")
	} else {
		w.token("7bit")
	}
	w.end()
}

// body writes the text with CRLF line ends (RFC 2046 4.1.1: text's
// canonical form), bare CR and LF included.
func (t *textPart) body(w *headerWriter) {
	if t.qp {
		w.b = appendQP(w.b, t.text)
		return
	}
	s := t.text
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != '\r' && s[i] != '\n' {
			i++
		}
		w.b = append(w.b, s[:i]...)
		if i == len(s) {
			break
		}
		w.b = append(w.b, '\r', '\n')
		if s[i] == '\r' && i+1 < len(s) && s[i+1] == '\n' {
			i++
		}
		s = s[i+1:]
	}
}

// is7bit reports whether text can go as 7bit (RFC 2045 2.7): ASCII without
// NUL, lines at most 998 octets.
func is7bit(s string) bool {
	line := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\r' || c == '\n':
			line = 0
		case c == 0 || c >= 0x80:
			return false
		default:
			if line++; line > maxLineLen {
				return false
			}
		}
	}
	return true
}

// appendQP appends s quoted-printable encoded (RFC 2045 6.7) with lines of
// at most 76 octets; CRLF, LF and CR in s are line breaks.
func appendQP(b []byte, s string) []byte {
	col := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\r' || c == '\n' {
			if c == '\r' && i+1 < len(s) && s[i+1] == '\n' {
				i++
			}
			b = append(b, '\r', '\n')
			col = 0
			continue
		}
		// Rule 3: white space at the end of a line is encoded.
		literal := c >= '!' && c <= '~' && c != '=' ||
			(c == ' ' || c == '\t') && i+1 < len(s) && s[i+1] != '\r' && s[i+1] != '\n'
		n := 3
		if literal {
			n = 1
		}
		if col+n > 75 {
			b = append(b, '=', '\r', '\n') // rule 5: soft line break
			col = 0
		}
		if literal {
			b = append(b, c)
		} else {
			b = append(b, '=', upperHex[c>>4], upperHex[c&15])
		}
		col += n
	}
	return b
}

func (a *attachment) contentType() string { return a.mediaType }

func (a *attachment) header(w *headerWriter) {
	w.field("Content-Type")
	params := a.params
	if a.filename != "" && !slices.ContainsFunc(params, func(p param) bool { return p.name == "name" }) {
		params = append(params[:len(params):len(params)], param{"name", a.filename}) // for readers without Content-Disposition
	}
	w.mediaType(a.mediaType, params...)
	w.end()
	w.field("Content-Transfer-Encoding")
	w.token("base64")
	w.end()
	w.field("Content-Disposition")
	disposition := "attachment"
	if a.contentID != "" {
		disposition = "inline"
	}
	if a.filename != "" {
		w.mediaType(disposition, param{"filename", a.filename}) // RFC 2183, RFC 2231
	} else {
		w.mediaType(disposition)
	}
	w.end()
	if a.contentID != "" {
		w.field("Content-ID")
		w.token("<" + a.contentID + ">")
		w.end()
	}
}

// body writes the content base64 encoded in lines of 76 (RFC 2045 6.8).
func (a *attachment) body(w *headerWriter) {
	const chunk = 57 // octets in one 76-character line
	data := a.data
	w.b = slices.Grow(w.b, (len(data)+2)/3*4+len(data)/chunk*2+2)
	for len(data) > 0 {
		n := min(chunk, len(data))
		w.b = base64.StdEncoding.AppendEncode(w.b, data[:n])
		data = data[n:]
		if len(data) > 0 {
			w.b = append(w.b, '\r', '\n')
		}
	}
}

// multipart is a multipart entity (RFC 2046 5.1).
type multipart struct {
	subtype  string
	boundary string
	params   []param
	parts    []entity
}

func (m *multipart) contentType() string { return "multipart/" + m.subtype }

func (m *multipart) header(w *headerWriter) {
	// "=_" cannot occur in quoted-printable or base64 text, and the random
	// part makes a clash with 7bit text hopeless (RFC 2046 5.1.1).
	m.boundary = "=_" + rand.Text()
	w.field("Content-Type")
	w.mediaType(m.contentType(), append([]param{{"boundary", m.boundary}}, m.params...)...)
	w.end()
}

func (m *multipart) body(w *headerWriter) {
	for i, p := range m.parts {
		if i > 0 {
			w.b = append(w.b, '\r', '\n')
		}
		w.b = append(w.b, "--"...)
		w.b = append(w.b, m.boundary...)
		w.b = append(w.b, '\r', '\n')
		p.header(w)
		w.b = append(w.b, '\r', '\n')
		p.body(w)
	}
	w.b = append(w.b, "\r\n--"...)
	w.b = append(w.b, m.boundary...)
	w.b = append(w.b, "--"...)
}
