package budget

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
)

func TestReserve(t *testing.T) {
	b, err := New(100)
	if err != nil {
		t.Fatal(err)
	}
	r1, err := b.Reserve(60)
	if err != nil {
		t.Fatalf("reserve 60 of 100: %v", err)
	}
	if _, err := b.Reserve(41); !errors.Is(err, ErrFull) {
		t.Fatalf("reserve 41 with 40 free: got %v, want ErrFull", err)
	}
	if got := b.InUse(); got != 60 {
		t.Fatalf("a refused reservation took bytes: in use %d, want 60", got)
	}
	r2, err := b.Reserve(40)
	if err != nil {
		t.Fatalf("reserve 40 with 40 free: %v", err)
	}
	if err := r2.Grow(1); !errors.Is(err, ErrFull) {
		t.Fatalf("grow past the cap: got %v, want ErrFull", err)
	}
	r1.Release()
	r1.Release() // twice is harmless
	if got := b.InUse(); got != 40 {
		t.Fatalf("after release: in use %d, want 40", got)
	}
	r2.Release()
	// Alone, a reservation over the capacity is held to it.
	big, err := b.Reserve(1000)
	if err != nil || big.Size() != 100 {
		t.Fatalf("reserve 1000 of an empty 100: size %d, %v; want 100, nil", big.Size(), err)
	}
	big.Release()
	if got := b.InUse(); got != 0 {
		t.Fatalf("all released: in use %d", got)
	}
}

func TestNilBudget(t *testing.T) {
	var b *Budget
	r, err := b.Reserve(1 << 40)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r.Reader(strings.NewReader("hello")))
	if err != nil || string(got) != "hello" {
		t.Fatalf("read %q, %v", got, err)
	}
	r.Release()
}

func TestReader(t *testing.T) {
	for _, tc := range []struct {
		name     string
		capacity int64
		other    int64 // held by someone else
		body     int
		wantErr  bool
	}{
		{"fits", 4 << 20, 0, 1 << 20, false},
		{"grows in steps up to the cap", 1 << 20, 0, 1<<20 - 1, false},
		{"larger than the whole cap, alone", 1 << 20, 0, 3 << 20, false},
		{"does not fit beside another", 1 << 20, 1 << 19, 1 << 20, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, _ := New(tc.capacity)
			if tc.other > 0 {
				o, err := b.Reserve(tc.other)
				if err != nil {
					t.Fatal(err)
				}
				defer o.Release()
			}
			r, err := b.Reserve(0)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			_, err = buf.ReadFrom(r.Reader(bytes.NewReader(make([]byte, tc.body))))
			if tc.wantErr {
				if !errors.Is(err, ErrFull) {
					t.Fatalf("got %v, want ErrFull", err)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if buf.Len() != tc.body {
					t.Fatalf("read %d bytes, want %d", buf.Len(), tc.body)
				}
				if r.Size() < min(int64(tc.body), tc.capacity) {
					t.Fatalf("holds %d bytes after reading %d", r.Size(), tc.body)
				}
			}
			if b.InUse() > tc.capacity {
				t.Fatalf("in use %d past the cap %d", b.InUse(), tc.capacity)
			}
			r.Release()
			if got := b.InUse(); got != tc.other {
				t.Fatalf("after release in use %d, want %d", got, tc.other)
			}
		})
	}
}

func TestConcurrent(t *testing.T) {
	b, _ := New(1000)
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				r, err := b.Reserve(100)
				if err != nil {
					continue
				}
				if u := b.InUse(); u > 1000 {
					t.Errorf("in use %d past the cap", u)
				}
				r.Release()
			}
		}()
	}
	wg.Wait()
	if got := b.InUse(); got != 0 {
		t.Fatalf("in use %d after every release", got)
	}
}
