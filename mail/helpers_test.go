package mail

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message"
)

var testNow = time.Date(2026, 3, 4, 5, 6, 7, 0, time.FixedZone("", 3600))

func testOpts() BuildOptions {
	return BuildOptions{
		Hostname: "relay.example.com",
		Now:      func() time.Time { return testNow },
		NewID:    func() string { return "id1" },
	}
}

// checkWire returns what is wrong with b as a message to hand to SMTP: a
// line end other than CRLF, a line over 998 octets, a Bcc header field, no
// final CRLF.
func checkWire(b []byte) error {
	if !bytes.HasSuffix(b, []byte("\r\n")) {
		return fmt.Errorf("does not end in CRLF")
	}
	inHeader := true
	for n, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if !bytes.HasSuffix(line, []byte("\r\n")) {
			return fmt.Errorf("line %d: ends without CRLF: %q", n+1, line)
		}
		content := line[:len(line)-2]
		if i := bytes.IndexAny(content, "\r\n"); i >= 0 {
			return fmt.Errorf("line %d: bare CR or LF at %d: %q", n+1, i, line)
		}
		if len(content) > maxLineLen {
			return fmt.Errorf("line %d: %d octets", n+1, len(content))
		}
		if inHeader {
			if len(content) == 0 {
				inHeader = false
				continue
			}
			name, _, _ := bytes.Cut(content, []byte(":"))
			if isWSP(content[0]) {
				continue
			}
			if strings.EqualFold(strings.TrimRight(string(name), " \t"), "bcc") {
				return fmt.Errorf("line %d: a Bcc header field: %q", n+1, line)
			}
		}
	}
	return nil
}

// part is a parsed MIME entity, its body decoded.
type part struct {
	mediaType string
	params    map[string]string
	header    message.Header
	body      []byte
	parts     []*part
}

func (p *part) types() string {
	if len(p.parts) == 0 {
		return p.mediaType
	}
	var s []string
	for _, c := range p.parts {
		s = append(s, c.types())
	}
	return p.mediaType + "[" + strings.Join(s, " ") + "]"
}

// parseMessage parses b with go-message, an independent reader.
func parseMessage(t testing.TB, b []byte) *part {
	t.Helper()
	e, err := message.Read(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("go-message cannot read the message: %v\n%s", err, b)
	}
	p, err := readPart(e)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	return p
}

func readPart(e *message.Entity) (*part, error) {
	p := &part{header: e.Header}
	var err error
	p.mediaType, p.params, err = mime.ParseMediaType(e.Header.Get("Content-Type"))
	if err != nil {
		return nil, fmt.Errorf("content-type %q: %v", e.Header.Get("Content-Type"), err)
	}
	if mr := e.MultipartReader(); mr != nil {
		for {
			c, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("next part: %v", err)
			}
			cp, err := readPart(c)
			if err != nil {
				return nil, err
			}
			p.parts = append(p.parts, cp)
		}
		return p, nil
	}
	if p.body, err = io.ReadAll(e.Body); err != nil {
		return nil, fmt.Errorf("read body: %v", err)
	}
	return p, nil
}

// crlf makes every line end of s CRLF, as text parts carry them.
func crlf(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	return strings.ReplaceAll(s, "\n", "\r\n")
}

// unfoldHeader returns the unfolded, still encoded value of the first field
// called name in the header section of b (RFC 5322 2.2.3: only the CRLFs go).
func unfoldHeader(b []byte, name string) (string, bool) {
	head, _, _ := bytes.Cut(b, []byte("\r\n\r\n"))
	lines := strings.Split(string(head), "\r\n")
	for i := 0; i < len(lines); i++ {
		n, v, ok := strings.Cut(lines[i], ":")
		if !ok || !strings.EqualFold(n, name) {
			continue
		}
		for i+1 < len(lines) && len(lines[i+1]) > 0 && isWSP(lines[i+1][0]) {
			i++
			v += lines[i]
		}
		return v, true
	}
	return "", false
}
