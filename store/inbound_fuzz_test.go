package store

import (
	"testing"
	"time"

	"github.com/google/uuid"
)

// FuzzInboundCursor: every cursor ListInbound hands out reads back to the
// position it was made from, and any other string is refused or read as
// some position, never a panic.
func FuzzInboundCursor(f *testing.F) {
	f.Add(int64(1765000000), int64(123456789), []byte("0123456789abcdef"), "")
	f.Add(int64(0), int64(0), make([]byte, 16), "AAAA")
	f.Fuzz(func(t *testing.T, sec, nsec int64, id []byte, other string) {
		if len(id) != 16 {
			return
		}
		at := time.Unix(sec%(1<<40), nsec%1e9).UTC()
		c := inboundCursor(at, uuid.UUID(id))
		gotAt, gotID, err := parseInboundCursor(c)
		if err != nil || !gotAt.Equal(at) || gotID != uuid.UUID(id) {
			t.Fatalf("cursor of %v %x read back as %v %x, %v", at, id, gotAt, gotID, err)
		}
		_, _, _ = parseInboundCursor(other)
	})
}
