package dkim

import (
	"bytes"
	"errors"
	"fmt"
	"hash"
)

// field is one header field of the message as written: name trimmed,
// raw with its continuation lines and final CRLF.
type field struct {
	name []byte
	raw  []byte
}

// splitMessage returns the header fields of msg and its body, without
// copying. Lines must end in CRLF: a bare CR or LF would be rewritten on
// the way out (go-smtp's DATA writer turns LF into CRLF) and the signature
// would then cover other bytes than those sent.
func splitMessage(msg []byte) ([]field, []byte, error) {
	fields := make([]field, 0, 16)
	for i := 0; i < len(msg); {
		j := bytes.IndexByte(msg[i:], '\n')
		if j < 0 {
			return nil, nil, errors.New("header does not end with CRLF")
		}
		end := i + j + 1
		if j == 0 || msg[i+j-1] != '\r' {
			return nil, nil, fmt.Errorf("bare LF at byte %d of the header; lines must end with CRLF", i+j)
		}
		line := msg[i:end]
		if k := bytes.IndexByte(line[:len(line)-2], '\r'); k >= 0 {
			return nil, nil, fmt.Errorf("bare CR at byte %d of the header", i+k)
		}
		switch {
		case len(line) == 2: // the empty line ending the header
			return fields, msg[end:], nil
		case line[0] == ' ' || line[0] == '\t': // RFC 5322 2.2.3 folding
			if len(fields) == 0 {
				return nil, nil, errors.New("message starts with a continuation line")
			}
			f := &fields[len(fields)-1]
			f.raw = f.raw[:len(f.raw)+len(line)] // contiguous in msg
		default:
			colon := bytes.IndexByte(line, ':')
			if colon < 0 {
				return nil, nil, fmt.Errorf("header line at byte %d has no colon", i)
			}
			name := bytes.TrimRight(line[:colon], " \t") // RFC 5322 4.5.3 obs-optional
			if err := checkFieldName(name); err != nil {
				return nil, nil, fmt.Errorf("header line at byte %d: %w", i, err)
			}
			fields = append(fields, field{name: name, raw: line})
		}
		i = end
	}
	return fields, nil, nil // header only, no body (RFC 5322 3.5)
}

// checkFieldName checks RFC 5322 3.6.8: ftext is printable US-ASCII except
// colon.
func checkFieldName(name []byte) error {
	if len(name) == 0 {
		return errors.New("empty field name")
	}
	for _, c := range name {
		if c < 33 || c > 126 {
			return fmt.Errorf("field name %q has a character not allowed", name)
		}
	}
	return nil
}

// equalFold compares an ASCII field name without allocating.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// signedFields are signed when present, in this order. Every instance
// present is signed (bottom-up, RFC 6376 5.4.2); From is listed once more
// than present so that a From added later breaks the signature (RFC 6376
// 5.4.2, 8.15). The list follows RFC 6376 5.4.1 and adds RFC 8058's
// one-click unsubscribe fields, which RFC 8058 3.3 requires to be signed.
var signedFields = [...]string{
	"From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To",
	"MIME-Version", "Content-Type", "Content-Transfer-Encoding",
	"List-Unsubscribe", "List-Unsubscribe-Post",
}

// selectFields returns the h= list and the relaxed canonical form of the
// fields it covers, concatenated in h= order (RFC 6376 3.7).
func selectFields(fields []field) (names []string, canon []byte, err error) {
	names = make([]string, 0, len(signedFields)+2)
	canon = make([]byte, 0, 1024)
	for _, name := range signedFields {
		// RFC 6376 5.4.2: the k-th listing of a name takes the k-th
		// instance from the bottom.
		n := 0
		for i := len(fields) - 1; i >= 0; i-- {
			if equalFold(fields[i].name, name) {
				names = append(names, name)
				canon = relaxHeader(canon, fields[i].raw)
				n++
			}
		}
		if name == "From" {
			switch n {
			case 0:
				return nil, nil, errors.New("message has no From header field")
			case 1:
				// Listed again with no instance left: hashes nothing now,
				// but a second From added in transit would be picked.
				names = append(names, name)
			default:
				// RFC 5322 3.6: exactly one; receivers (DMARC) reject more.
				return nil, nil, fmt.Errorf("message has %d From header fields, want 1", n)
			}
		}
	}
	return names, canon, nil
}

// relaxHeader appends the relaxed canonical form of one header field, CRLF
// included (RFC 6376 3.4.2): name lower-cased, continuation lines unfolded,
// runs of WSP reduced to one SP, WSP around the colon and at the end of the
// value deleted.
func relaxHeader(dst, raw []byte) []byte {
	colon := bytes.IndexByte(raw, ':')
	for _, c := range bytes.TrimRight(raw[:colon], " \t") {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	dst = append(dst, ':')
	wsp := false
	wrote := false
	for _, c := range raw[colon+1:] {
		switch c {
		case '\r', '\n': // unfold: only CRLF followed by WSP is left in raw
		case ' ', '\t':
			wsp = true
		default:
			if wsp && wrote {
				dst = append(dst, ' ')
			}
			wsp = false
			wrote = true
			dst = append(dst, c)
		}
	}
	return append(dst, '\r', '\n')
}

// hashBodyRelaxed writes the relaxed canonical body to w (RFC 6376 3.4.4):
// WSP runs become one SP, WSP at line ends and empty lines at the end are
// dropped, and a non-empty body ends with CRLF. Lines already canonical
// (the common case) are written straight from body, many at a time. off is
// body's offset in the message, for errors.
func hashBodyRelaxed(w hash.Hash, body []byte, off int) error {
	crlf := []byte{'\r', '\n'}
	twoSpaces := []byte{' ', ' '}
	var (
		pending    int // empty lines not yet known to be followed by text
		start, end int // body[start:end] is canonical and not yet written
		scratch    []byte
	)
	flush := func() {
		if end > start {
			w.Write(body[start:end])
		}
		start, end = 0, 0
	}
	writePending := func() {
		for ; pending > 0; pending-- {
			w.Write(crlf)
		}
	}
	for i := 0; i < len(body); {
		line, next, terminated := body[i:], len(body), false
		if j := bytes.IndexByte(body[i:], '\n'); j >= 0 {
			if j == 0 || body[i+j-1] != '\r' {
				return fmt.Errorf("bare LF at byte %d; lines must end with CRLF", off+i+j)
			}
			line, next, terminated = body[i:i+j-1], i+j+1, true
		}
		if k := bytes.IndexByte(line, '\r'); k >= 0 {
			return fmt.Errorf("bare CR at byte %d", off+i+k)
		}
		// Whole-line searches are vectorized; a byte loop here cost a
		// quarter of an Ed25519 signature.
		canonical := terminated && len(line) > 0 &&
			line[len(line)-1] != ' ' && line[len(line)-1] != '\t' &&
			bytes.IndexByte(line, '\t') < 0 && !bytes.Contains(line, twoSpaces)
		if canonical {
			if pending > 0 {
				flush()
				writePending()
			}
			if end == 0 || end != i {
				flush()
				start = i
			}
			end = next
			i = next
			continue
		}
		flush()
		scratch = relaxLine(scratch[:0], line)
		if len(scratch) == 0 {
			pending++
		} else {
			writePending()
			w.Write(append(scratch, '\r', '\n'))
		}
		i = next
	}
	flush()
	return nil
}

// relaxLine appends line with WSP runs reduced to one SP and trailing WSP
// removed, copying the runs between them whole.
func relaxLine(dst, line []byte) []byte {
	for {
		i := 0
		for i < len(line) && line[i] != ' ' && line[i] != '\t' {
			i++
		}
		dst = append(dst, line[:i]...)
		for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
			i++
		}
		if i == len(line) {
			return dst
		}
		dst = append(dst, ' ')
		line = line[i:]
	}
}
