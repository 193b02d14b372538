package smtpclient

import (
	"bytes"
	"context"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/mailferry/mailferry/internal/testmx"
)

// lines is a Body of n bytes of 64-byte CRLF lines made up on the fly, so
// no copy of the message exists unless the client makes one.
func lines(n int64) Body {
	line := []byte(strings.Repeat("x", 62) + "\r\n")
	return func() (io.Reader, error) { return &pattern{line: line, left: n}, nil }
}

type pattern struct {
	line []byte
	off  int
	left int64
}

func (p *pattern) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(b) && p.left > 0 {
		k := copy(b[n:min(len(b), n+int(min(p.left, int64(len(p.line)-p.off))))], p.line[p.off:])
		n += k
		p.off = (p.off + k) % len(p.line)
		p.left -= int64(k)
	}
	return n, nil
}

// TestBodyStreams: a 32 MiB message goes out with a small, fixed amount of
// memory: it is measured, normalised and dot-stuffed as it streams, never
// copied whole (issue 11, memory).
func TestBodyStreams(t *testing.T) {
	const size = 32 << 20
	port, lns := testmx.Listen(t, "127.0.0.2")
	got := make(chan int64, 1)
	peer := testmx.RunPeer(t, lns[0], func(c *testmx.PeerConn) {
		c.Send("220 peer.test ESMTP")
		for {
			line, err := c.ReadLine()
			if err != nil {
				return
			}
			switch strings.ToUpper(strings.SplitN(line, " ", 2)[0]) {
			case "EHLO":
				c.Send("250-peer.test", "250 SIZE 100000000")
			case "DATA":
				// Nothing is pipelined, so nothing is buffered past DATA:
				// read the data raw, with one buffer.
				c.Send("354 go ahead")
				buf := make([]byte, 32<<10)
				var n int64
				tail := make([]byte, 0, 5)
				for !bytes.Equal(tail, []byte("\r\n.\r\n")) {
					k, err := c.Conn.Read(buf)
					if err != nil {
						return
					}
					n += int64(k)
					tail = append(tail, buf[:k]...)
					tail = append(tail[:0], tail[max(0, len(tail)-5):]...)
				}
				got <- n
				c.Send("250 2.0.0 queued")
			case "QUIT":
				c.Send("221 bye")
				return
			default:
				c.Send("250 2.0.0 ok")
			}
		}
	})
	c := newClient(t, port, nil)
	env := envelope("bob@example.net")
	env.Body = lines(size)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	a := c.Deliver(context.Background(), []Host{host("mx1.example.net", "127.0.0.2")}, env)
	runtime.ReadMemStats(&after)
	if got := statuses(a); len(got) != 1 || got[0] != "delivered 250 2.0.0" {
		t.Fatalf("results %v (%v)", got, a.Results[0].Err)
	}
	if n := <-got; n != size+3 { // the data and ".\r\n"
		t.Errorf("server read %d bytes, want %d", n, size+3)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d KiB delivering %d MiB", alloc>>10, size>>20)
	if alloc > 2<<20 {
		t.Errorf("allocated %d KiB for a %d MiB message: the body was copied", alloc>>10, size>>20)
	}
	waitClosed(t, c, peer.Connections)
}
