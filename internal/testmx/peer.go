package testmx

import (
	"bufio"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// peerLifetime bounds every scripted connection, so a script that waits for
// a client that never comes back still ends.
const peerLifetime = 30 * time.Second

// Peer is a raw TCP server run by a script, for behaviour go-smtp's server
// will not produce: a bad greeting, a 4-digit code, an endless multi-line
// reply, a tarpit.
type Peer struct {
	ln *connTracker
	wg sync.WaitGroup
}

// PeerConn is one connection handed to a script.
type PeerConn struct {
	net.Conn
	r *bufio.Reader
}

// Send writes each line followed by CRLF and reports whether it could.
func (c *PeerConn) Send(lines ...string) bool {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l)
		b.WriteString("\r\n")
	}
	_, err := c.Write([]byte(b.String()))
	return err == nil
}

// ReadLine reads one command line without its line ending.
func (c *PeerConn) ReadLine() (string, error) {
	l, err := c.r.ReadString('\n')
	return strings.TrimRight(l, "\r\n"), err
}

// Hold waits until the client hangs up (or the connection's lifetime ends),
// answering nothing: a tarpit.
func (c *PeerConn) Hold() {
	for {
		if _, err := c.r.ReadByte(); err != nil {
			return
		}
	}
}

// RunPeer serves every connection on ln (from Listen) with script, each in
// its own goroutine, until the test ends.
func RunPeer(t testing.TB, ln net.Listener, script func(c *PeerConn)) *Peer {
	t.Helper()
	mustLoopback(t, strings.Split(ln.Addr().String(), ":")[0])
	p := &Peer{ln: newConnTracker(ln)}
	p.wg.Go(func() {
		for {
			c, err := p.ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(peerLifetime))
			p.wg.Go(func() {
				defer c.Close()
				script(&PeerConn{Conn: c, r: bufio.NewReader(c)})
			})
		}
	})
	t.Cleanup(func() {
		p.ln.Close()
		p.ln.closeAll()
		p.wg.Wait()
	})
	return p
}

// Connections reports how many connections the peer accepted and how many
// are still open.
func (p *Peer) Connections() (accepted, open int) { return p.ln.counts() }

// PeakConnections is the most connections that were open at once.
func (p *Peer) PeakConnections() int {
	p.ln.mu.Lock()
	defer p.ln.mu.Unlock()
	return p.ln.peak
}
