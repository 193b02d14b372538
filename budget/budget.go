// Package budget caps the message bytes a process holds in flight. The
// HTTP API and SMTP submission share one Budget: each reserves bytes
// before it reads a body (by the size the client declared, or as the
// bytes arrive) and releases them once the message is accepted or
// refused. Past the cap a caller is told to come back later, so that a
// burst of large messages cannot take the process past its memory limit.
package budget

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// ErrFull means the reservation would take the bytes in flight past the
// cap; the caller should answer "try again later" (HTTP 503, SMTP 452).
var ErrFull = errors.New("bytes in flight at the cap")

// growStep is the least a reading Reservation grows by, so that a body of
// many small reads takes the lock a few times, not once a read.
const growStep = 256 << 10

// Budget is the cap on bytes in flight and the count of bytes reserved.
// A nil *Budget caps nothing.
type Budget struct {
	capacity int64

	mu   sync.Mutex
	used int64
}

// New returns a Budget of capacity bytes; capacity must be positive.
func New(capacity int64) (*Budget, error) {
	if capacity <= 0 {
		return nil, fmt.Errorf("budget: capacity must be positive, not %d", capacity)
	}
	return &Budget{capacity: capacity}, nil
}

// Capacity is the cap in bytes; 0 for a nil Budget.
func (b *Budget) Capacity() int64 {
	if b == nil {
		return 0
	}
	return b.capacity
}

// InUse is the bytes reserved now.
func (b *Budget) InUse() int64 {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// Reserve takes n bytes, or fails with ErrFull and takes nothing. A
// reservation larger than the capacity is held to the capacity: alone, any
// message the size limits allow must get through. Release the reservation
// when done with it, whatever happened.
func (b *Budget) Reserve(n int64) (*Reservation, error) {
	r := &Reservation{b: b}
	if err := r.Grow(n); err != nil {
		return nil, err
	}
	return r, nil
}

func (b *Budget) take(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.capacity {
		return false
	}
	b.used += n
	return true
}

func (b *Budget) give(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
}

// Reservation is bytes held against a Budget. It is not safe for
// concurrent use.
type Reservation struct {
	b    *Budget
	held int64
	done bool
}

// Size is the bytes held.
func (r *Reservation) Size() int64 { return r.held }

// Grow takes n more bytes, or fails with ErrFull and takes nothing. What
// the reservation holds never passes the capacity.
func (r *Reservation) Grow(n int64) error {
	if r.b == nil || n <= 0 {
		return nil
	}
	if r.done {
		return errors.New("budget: grow after release")
	}
	n = min(n, r.b.capacity-r.held)
	if n <= 0 {
		return nil
	}
	if !r.b.take(n) {
		return ErrFull
	}
	r.held += n
	return nil
}

// Release gives the bytes back. It may be called more than once.
func (r *Reservation) Release() {
	if r == nil || r.done {
		return
	}
	r.done = true
	if r.b != nil && r.held > 0 {
		r.b.give(r.held)
	}
	r.held = 0
}

// Reader returns src read through the reservation: once more bytes have
// been read than the reservation holds, it grows (by at least 256 KiB at a
// time), and a read it cannot grow for fails with ErrFull, its bytes
// dropped.
func (r *Reservation) Reader(src io.Reader) io.Reader {
	return &reader{r: r, src: src}
}

type reader struct {
	r    *Reservation
	src  io.Reader
	read int64
}

func (rd *reader) Read(p []byte) (int, error) {
	n, err := rd.src.Read(p)
	rd.read += int64(n)
	if need := rd.read - rd.r.held; need > 0 && rd.r.b != nil {
		if gerr := rd.r.Grow(max(need, growStep)); gerr != nil {
			return 0, gerr
		}
	}
	return n, err
}
