package testmx

import (
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// EMFILEListener fails its first Fails Accepts with EMFILE, as accept4 does
// when the process is out of file descriptors, and notes when each came,
// so a test can tell a server that backs off from one that spins.
type EMFILEListener struct {
	net.Listener
	Fails int

	mu    sync.Mutex
	calls []time.Time
}

func (l *EMFILEListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	l.calls = append(l.calls, time.Now())
	fail := len(l.calls) <= l.Fails
	l.mu.Unlock()
	if fail {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// Times lists when each Accept was called.
func (l *EMFILEListener) Times() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.calls...)
}
