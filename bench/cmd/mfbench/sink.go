package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// sink is the MX every recipient domain points at: a go-smtp server with
// STARTTLS on a few loopback addresses, which reads each message, notes
// when it arrived by Message-ID, and throws it away. One more address is a
// tarpit: the same server, but every write (each reply, each TLS flight)
// waits first.
type sink struct {
	port    int
	healthy []netip.Addr
	tarpit  netip.Addr
	tlsCfg  *tls.Config
	servers []*smtp.Server
	stop    chan struct{}
	readers sync.Pool

	mu  sync.Mutex
	cur *tally
}

// tally is what one run delivered.
type tally struct {
	mu          sync.Mutex
	arrivals    map[string]time.Time // Message-ID (no brackets) → arrival at a healthy address
	first, last time.Time
	tarpit      int            // messages the tarpit received
	dups        int            // a Message-ID seen again
	noID        int            // messages without a Message-ID
	signed      map[string]int // DKIM a= tag of the first signature → messages
	samples     [][]byte       // whole messages kept for DKIM verification
	keep        int
	target      int
	done        chan struct{} // closed once target healthy arrivals are in
	conns       atomic.Int64  // SMTP connections opened to the healthy addresses
	open        gauge         // of those, how many are open now, and the peak
	turns       atomic.Int64  // reads that followed a write: the client's round trips
}

// gauge counts things open now and remembers the most at once.
type gauge struct {
	cur, peak atomic.Int64
}

func (g *gauge) inc() {
	n := g.cur.Add(1)
	for {
		p := g.peak.Load()
		if n <= p || g.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

func (g *gauge) dec()         { g.cur.Add(-1) }
func (g *gauge) max() int64   { return g.peak.Load() }
func (g *gauge) value() int64 { return g.cur.Load() }

type sinkOptions struct {
	Healthy     []netip.Addr
	Tarpit      netip.Addr
	TarpitDelay time.Duration
}

func startSink(opts sinkOptions) (*sink, error) {
	for _, a := range append(append([]netip.Addr(nil), opts.Healthy...), opts.Tarpit) {
		if !a.IsLoopback() || !a.Is4() {
			return nil, fmt.Errorf("sink address %s is not in 127.0.0.0/8", a)
		}
	}
	cert, err := selfSigned("mx.sink.bench.test")
	if err != nil {
		return nil, err
	}
	s := &sink{
		healthy: opts.Healthy,
		tarpit:  opts.Tarpit,
		tlsCfg:  &tls.Config{Certificates: []tls.Certificate{cert}},
		stop:    make(chan struct{}),
		readers: sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }},
	}
	s.reset(0, 0)
	lns, port, err := listenSamePort(append(append([]netip.Addr(nil), opts.Healthy...), opts.Tarpit))
	if err != nil {
		return nil, err
	}
	s.port = port
	healthy := s.newServer(false)
	tarpit := s.newServer(true)
	s.servers = []*smtp.Server{healthy, tarpit}
	for _, ln := range lns[:len(lns)-1] {
		go healthy.Serve(&countingListener{Listener: ln, s: s})
	}
	go tarpit.Serve(&slowListener{Listener: lns[len(lns)-1], delay: opts.TarpitDelay, stop: s.stop})
	return s, nil
}

func (s *sink) newServer(tarpit bool) *smtp.Server {
	// go-smtp makes a session at each EHLO (twice with STARTTLS), so
	// connections are counted by the listener.
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &sinkSession{s: s, t: s.tally(), tarpit: tarpit}, nil
	}))
	srv.Domain = "mx.sink.bench.test"
	srv.TLSConfig = s.tlsCfg
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	srv.MaxMessageBytes = 64 << 20
	srv.ErrorLog = log.New(io.Discard, "", 0)
	return srv
}

func (s *sink) close() {
	close(s.stop)
	for _, srv := range s.servers {
		srv.Close()
	}
}

// reset starts a new tally: done closes after target healthy arrivals;
// the first keep messages are kept whole.
func (s *sink) reset(target, keep int) *tally {
	t := &tally{
		arrivals: make(map[string]time.Time, target),
		signed:   make(map[string]int),
		keep:     keep,
		target:   target,
		done:     make(chan struct{}),
	}
	if target <= 0 {
		close(t.done)
	}
	s.mu.Lock()
	s.cur = t
	s.mu.Unlock()
	return t
}

func (s *sink) tally() *tally {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

func (t *tally) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.arrivals)
}

// times returns the arrival times, sorted.
func (t *tally) times() []time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]time.Time, 0, len(t.arrivals))
	for _, at := range t.arrivals {
		out = append(out, at)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

func (t *tally) arrival(id string) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	at, ok := t.arrivals[id]
	return at, ok
}

func (t *tally) record(id, alg string, tarpit bool, whole []byte, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if whole != nil && len(t.samples) < t.keep {
		t.samples = append(t.samples, whole)
	}
	if alg != "" {
		t.signed[alg]++
	}
	switch {
	case tarpit:
		t.tarpit++
		return
	case id == "":
		t.noID++
		return
	}
	if _, seen := t.arrivals[id]; seen {
		t.dups++
		return
	}
	t.arrivals[id] = at
	if t.first.IsZero() {
		t.first = at
	}
	t.last = at
	if len(t.arrivals) == t.target {
		close(t.done)
	}
}

func (t *tally) wantSample() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.samples) < t.keep
}

type sinkSession struct {
	s      *sink
	t      *tally
	tarpit bool
}

func (ss *sinkSession) Reset()        {}
func (ss *sinkSession) Logout() error { return nil }

func (ss *sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (ss *sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }

// Data reads the header block, then the rest, and records the arrival.
func (ss *sinkSession) Data(r io.Reader) error {
	br := ss.s.readers.Get().(*bufio.Reader)
	br.Reset(r)
	defer func() {
		br.Reset(nil)
		ss.s.readers.Put(br)
	}()
	var hdr []byte
	partial := false // the last read ended mid-line
	for {
		line, err := br.ReadSlice('\n')
		hdr = append(hdr, line...)
		if errors.Is(err, bufio.ErrBufferFull) {
			partial = true
			continue
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if !partial && len(bytes.TrimRight(line, "\r\n")) == 0 {
			break // the empty line ending the header
		}
		partial = false
	}
	var whole []byte
	if ss.t.wantSample() {
		rest, err := io.ReadAll(br)
		if err != nil {
			return err
		}
		whole = append(hdr, rest...)
	} else if _, err := io.Copy(io.Discard, br); err != nil {
		return err
	}
	ss.t.record(headerValue(hdr, "message-id"), dkimAlgorithm(hdr), ss.tarpit, whole, time.Now())
	return nil
}

// headerValue returns the unfolded value of the first field called name,
// without angle brackets.
func headerValue(hdr []byte, name string) string {
	for _, line := range bytes.Split(hdr, []byte("\n")) {
		if len(line) > len(name) && line[len(name)] == ':' && bytes.EqualFold(line[:len(name)], []byte(name)) {
			v := bytes.TrimSpace(line[len(name)+1:])
			return string(bytes.TrimSuffix(bytes.TrimPrefix(v, []byte("<")), []byte(">")))
		}
	}
	return ""
}

// dkimAlgorithm returns the a= tag of the first DKIM-Signature field.
func dkimAlgorithm(hdr []byte) string {
	const name = "dkim-signature:"
	i := bytes.Index(bytes.ToLower(hdr), []byte(name))
	if i < 0 {
		return ""
	}
	f := hdr[i+len(name):]
	j := bytes.Index(f, []byte(" a="))
	if j < 0 {
		return "unknown"
	}
	v := f[j+3:]
	if k := bytes.IndexByte(v, ';'); k >= 0 {
		v = v[:k]
	}
	return string(v)
}

// listenSamePort listens on one TCP port on every address: Mailferry dials
// one port (MAILFERRY_SMTP_PORT) on every MX host.
func listenSamePort(addrs []netip.Addr) ([]net.Listener, int, error) {
	var lastErr error
	for range 50 {
		first, err := net.Listen("tcp", netip.AddrPortFrom(addrs[0], 0).String())
		if err != nil {
			return nil, 0, fmt.Errorf("sink: listen on %s: %w", addrs[0], err)
		}
		port := first.Addr().(*net.TCPAddr).Port
		lns := []net.Listener{first}
		for _, a := range addrs[1:] {
			ln, err := net.Listen("tcp", netip.AddrPortFrom(a, uint16(port)).String())
			if err != nil {
				lastErr = err
				break
			}
			lns = append(lns, ln)
		}
		if len(lns) == len(addrs) {
			return lns, port, nil
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	return nil, 0, fmt.Errorf("sink: no port free on all of %v: %w", addrs, lastErr)
}

// countingListener counts the connections of the current tally.
type countingListener struct {
	net.Listener
	s *sink
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	t := l.s.tally()
	t.conns.Add(1)
	t.open.inc()
	return &turnConn{Conn: c, t: t}, nil
}

// turnConn counts the client's round trips as the server sees them: a read
// that comes after the server wrote means the client waited for that reply
// before it sent more. Commands a client pipelines arrive in one read.
type turnConn struct {
	net.Conn
	t      *tally
	wrote  atomic.Bool
	closed atomic.Bool
}

// Close leaves the open count of the tally the connection was counted in
// (go-smtp closes a connection once, but a TLS wrapper closes it again).
func (c *turnConn) Close() error {
	if !c.closed.Swap(true) {
		c.t.open.dec()
	}
	return c.Conn.Close()
}

func (c *turnConn) Write(p []byte) (int, error) {
	c.wrote.Store(true)
	return c.Conn.Write(p)
}

func (c *turnConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.wrote.Swap(false) {
		c.t.turns.Add(1)
	}
	return n, err
}

// slowListener makes every write of its connections wait first: a tarpit.
type slowListener struct {
	net.Listener
	delay time.Duration
	stop  <-chan struct{}
}

func (l *slowListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &slowConn{Conn: c, delay: l.delay, stop: l.stop}, nil
}

type slowConn struct {
	net.Conn
	delay time.Duration
	stop  <-chan struct{}
}

func (c *slowConn) Write(p []byte) (int, error) {
	t := time.NewTimer(c.delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.stop:
		return 0, net.ErrClosed
	}
	return c.Conn.Write(p)
}
