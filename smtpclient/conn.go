package smtpclient

import (
	"io"
	"net"
	"sync"
	"time"
)

// deadlineConn is the TCP connection under everything else. Each step sets
// its own deadline, which would undo a deadline set to cancel; once abort
// has run, every deadline becomes "now", so a cancelled context stops the
// session wherever it is (the idea of pgx's ctxwatch).
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

// dataBlock is the most one write to the network carries, each with its
// own deadline (RFC 5321 4.5.3.2.5: a timeout per data block).
const dataBlock = 64 * 1024

// blockWriter writes to the wire (plain or TLS) in blocks of at most
// dataBlock, giving each a fresh write deadline of the session's current
// step.
type blockWriter struct {
	s *session
	w io.Writer
}

func (b blockWriter) Write(p []byte) (n int, err error) {
	for len(p) > 0 {
		chunk := p[:min(len(p), dataBlock)]
		b.s.conn.SetWriteDeadline(time.Now().Add(b.s.writeTimeout))
		m, err := b.w.Write(chunk)
		n += m
		if err != nil {
			return n, err
		}
		p = p[m:]
	}
	return n, nil
}

var (
	crlf    = []byte("\r\n")
	dotLine = []byte(".\r\n")
	dot     = []byte(".")
)

// dataWriter streams message data in the form DATA needs, without a copy
// of the message:
//   - every bare CR and bare LF becomes CRLF (RFC 5321 2.3.8: CR and LF
//     only ever appear together). A receiver that takes a bare CR or LF as
//     a line end would otherwise see "\r.\r\n" or "\n.\n" as the end of
//     data and read the rest of the message as commands ("SMTP
//     smuggling");
//   - with stuff, a line that starts with "." gets another (RFC 5321
//     4.5.2), and Close ends the data with "." on a line of its own.
//
// Close also ends a last line that lacks its CRLF. Without stuff it only
// normalises, which is how the SIZE of the message is measured.
type dataWriter struct {
	w     io.Writer
	stuff bool
	cr    bool // the last byte seen was a CR, not yet written
	mid   bool // inside a line: neither at the start nor after a line end
}

func (d *dataWriter) Write(p []byte) (int, error) {
	start := 0
	run := func(end int) error {
		if end > start {
			_, err := d.w.Write(p[start:end])
			return err
		}
		return nil
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if d.cr {
			// A CR ends the line whatever follows it.
			d.cr, d.mid = false, false
			if _, err := d.w.Write(crlf); err != nil {
				return i, err
			}
			if c == '\n' {
				start = i + 1
				continue
			}
		}
		switch {
		case c == '\r':
			if err := run(i); err != nil {
				return i, err
			}
			d.cr, start = true, i+1
		case c == '\n':
			if err := run(i); err != nil {
				return i, err
			}
			if _, err := d.w.Write(crlf); err != nil {
				return i, err
			}
			d.mid, start = false, i+1
		case c == '.' && !d.mid && d.stuff:
			if err := run(i); err != nil {
				return i, err
			}
			if _, err := d.w.Write(dot); err != nil {
				return i, err
			}
			d.mid, start = true, i // the dot itself goes out with the run
		default:
			d.mid = true
		}
	}
	if err := run(len(p)); err != nil {
		return len(p), err
	}
	return len(p), nil
}

// Close ends the last line and, when stuffing, the data.
func (d *dataWriter) Close() error {
	if d.cr || d.mid {
		d.cr, d.mid = false, false
		if _, err := d.w.Write(crlf); err != nil {
			return err
		}
	}
	if d.stuff {
		_, err := d.w.Write(dotLine)
		return err
	}
	return nil
}

// counter counts what is written to it.
type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

// measure returns the size of body as it goes on the wire before
// dot-stuffing, which is what SIZE declares (RFC 1870 3).
func measure(body Body) (int64, error) {
	r, err := body()
	if err != nil {
		return 0, err
	}
	var c counter
	d := &dataWriter{w: &c}
	if _, err := io.Copy(d, r); err != nil {
		return 0, err
	}
	d.Close()
	return c.n, nil
}
