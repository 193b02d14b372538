package smtpclient

import (
	"bytes"
	"strings"
	"testing"
)

// stream writes in through a dataWriter in pieces of size n (0: whole).
func stream(in string, n int, stuff bool) string {
	var b bytes.Buffer
	d := &dataWriter{w: &b, stuff: stuff}
	p := []byte(in)
	if n <= 0 {
		n = len(p) + 1
	}
	for len(p) > 0 {
		k := min(n, len(p))
		d.Write(p[:k])
		p = p[k:]
	}
	d.Close()
	return b.String()
}

func TestDataWriter(t *testing.T) {
	for _, tc := range []struct{ in, norm, wire string }{
		{"", "", ".\r\n"},
		{"a\r\nb\r\n", "a\r\nb\r\n", "a\r\nb\r\n.\r\n"},
		{"a\nb", "a\r\nb\r\n", "a\r\nb\r\n.\r\n"},
		{"a\rb", "a\r\nb\r\n", "a\r\nb\r\n.\r\n"},
		{"\r", "\r\n", "\r\n.\r\n"},
		{"\n", "\r\n", "\r\n.\r\n"},
		{"\r\r\n", "\r\n\r\n", "\r\n\r\n.\r\n"},
		{"\n\r", "\r\n\r\n", "\r\n\r\n.\r\n"},
		{".", ".\r\n", "..\r\n.\r\n"},
		{".a\r\n..b\r\nc.d\r\n", ".a\r\n..b\r\nc.d\r\n", "..a\r\n...b\r\nc.d\r\n.\r\n"},
		// The smuggling shapes: a lone dot behind bare CR or LF must not
		// end the data.
		{"x\r.\r\nMAIL", "x\r\n.\r\nMAIL\r\n", "x\r\n..\r\nMAIL\r\n.\r\n"},
		{"x\n.\nRCPT", "x\r\n.\r\nRCPT\r\n", "x\r\n..\r\nRCPT\r\n.\r\n"},
		{"x\r\n.\r\n", "x\r\n.\r\n", "x\r\n..\r\n.\r\n"},
		{"x\r\r.\r", "x\r\n\r\n.\r\n", "x\r\n\r\n..\r\n.\r\n"},
	} {
		for _, n := range []int{0, 1, 2, 3} {
			if got := stream(tc.in, n, false); got != tc.norm {
				t.Errorf("normalise %q in pieces of %d = %q, want %q", tc.in, n, got, tc.norm)
			}
			if got := stream(tc.in, n, true); got != tc.wire {
				t.Errorf("DATA form of %q in pieces of %d = %q, want %q", tc.in, n, got, tc.wire)
			}
		}
	}
}

// unstuff undoes the DATA form the way a receiver does (RFC 5321 4.5.2),
// taking only CRLF as a line end; ok is false if the data ends before its
// last byte or a line holds a bare CR or LF.
func unstuff(wire string) (string, bool) {
	var b strings.Builder
	for wire != "" {
		line, rest, found := strings.Cut(wire, "\r\n")
		if !found || strings.ContainsAny(line, "\r\n") {
			return "", false
		}
		if line == "." {
			return b.String(), rest == ""
		}
		b.WriteString(strings.TrimPrefix(line, "."))
		b.WriteString("\r\n")
		wire = rest
	}
	return "", false
}

// FuzzDataWriter: whatever the message, the wire form has only CRLF line
// ends, ends exactly at its last byte, reads back as the normalised message,
// does not depend on how the message is cut into writes, and is measured
// exactly by the SIZE count.
func FuzzDataWriter(f *testing.F) {
	for _, s := range []string{"", "a\r\nb", "x\r.\r\nMAIL FROM:<e@x>\r\n", "\n.\n", ".\r\n", "..\r", "\r\r\n\n.", "å\r\n"} {
		f.Add(s, 3)
	}
	f.Fuzz(func(t *testing.T, in string, n int) {
		wire := stream(in, n%17, true)
		norm := stream(in, 0, false)
		got, ok := unstuff(wire)
		if !ok {
			t.Fatalf("wire form %q of %q is not well-formed data", wire, in)
		}
		if got != norm {
			t.Fatalf("%q reads back as %q, want %q", in, got, norm)
		}
		if whole := stream(in, 0, true); whole != wire {
			t.Fatalf("pieces change the output: %q vs %q", wire, whole)
		}
		size, err := measure(bytesBody([]byte(in)))
		if err != nil || size != int64(len(norm)) {
			t.Fatalf("measure = %d, %v; want %d", size, err, len(norm))
		}
	})
}
