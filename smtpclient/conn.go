package relay

import (
	"bytes"
	"net"
	"sync"
	"time"
)

// deadlineConn is the TCP connection under everything else. go-smtp sets
// and clears deadlines around each command, which would undo a deadline set
// to cancel; once abort has run, every deadline becomes "now", so a
// cancelled context stops the session wherever it is (the pgx ctxwatch idea,
// STYLE.md CONTEXT).
type deadlineConn struct {
	net.Conn
	mu      sync.Mutex
	aborted bool
}

// past is a deadline that has already expired.
func past() time.Time { return time.Unix(1, 0) }

func (c *deadlineConn) abort() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.aborted = true
	c.Conn.SetDeadline(past())
}

func (c *deadlineConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		t = past()
	}
	return c.Conn.SetDeadline(t)
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		t = past()
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted {
		t = past()
	}
	return c.Conn.SetWriteDeadline(t)
}

// wireConn is what go-smtp's client reads and writes: the plaintext stream,
// over TLS or not.
//
// It bounds each reply. go-smtp limits line length but reads a multi-line
// reply for as long as the server keeps sending lines, so a hostile server
// could make it buffer without end; we pipeline nothing, so every byte read
// between two of our writes belongs to one reply, and wireConn fails the
// read once that exceeds maxReplyBytes or maxReplyLines.
//
// It also replays a synthetic greeting: after STARTTLS the session restarts
// without one (RFC 3207 4.2), but a fresh go-smtp client expects to read
// one. See session.startTLS for why we need a fresh client.
type wireConn struct {
	net.Conn
	greeting []byte
	n, lines int
}

func (w *wireConn) Read(p []byte) (int, error) {
	if len(w.greeting) > 0 {
		n := copy(p, w.greeting)
		w.greeting = w.greeting[n:]
		return n, nil
	}
	if w.n >= maxReplyBytes || w.lines > maxReplyLines {
		return 0, errReplyTooLong
	}
	if room := maxReplyBytes - w.n; len(p) > room {
		p = p[:room]
	}
	n, err := w.Conn.Read(p)
	w.n += n
	w.lines += bytes.Count(p[:n], []byte{'\n'})
	return n, err
}

func (w *wireConn) Write(p []byte) (int, error) {
	w.n, w.lines = 0, 0
	return w.Conn.Write(p)
}

// normalizeCRLF returns data with every bare LF and bare CR turned into
// CRLF. go-smtp's dot-writer stuffs leading dots and turns bare LF into
// CRLF, but passes a bare CR through; a receiver that takes a bare CR as a
// line end would then see "\r.\r\n" as the end of data and read the rest of
// the message as commands ("SMTP smuggling"). RFC 5321 2.3.8: CR and LF
// only ever appear together as CRLF. Data already in CRLF form is returned
// as is, without copying.
func normalizeCRLF(data []byte) []byte {
	clean := true
	for i, c := range data {
		if (c == '\r' && (i+1 == len(data) || data[i+1] != '\n')) || (c == '\n' && (i == 0 || data[i-1] != '\r')) {
			clean = false
			break
		}
	}
	if clean {
		return data
	}
	out := make([]byte, 0, len(data)+len(data)/32)
	for i := 0; i < len(data); i++ {
		switch c := data[i]; {
		case c == '\r' && i+1 < len(data) && data[i+1] == '\n':
			out = append(out, '\r', '\n')
			i++
		case c == '\r' || c == '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, c)
		}
	}
	return out
}
