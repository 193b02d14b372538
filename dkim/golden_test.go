package dkim

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestGolden pins the exact bytes for a fixed key and clock: tag order,
// folding and canonicalization must not drift, or stored signatures and
// receivers' views would change between releases. The message and the
// expected headers are in testdata (stored with CRLF, see .gitattributes).
func TestGolden(t *testing.T) {
	msg, err := os.ReadFile(filepath.Join("testdata", "message.eml"))
	if err != nil {
		t.Fatal(err)
	}
	clock := func() time.Time { return time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) }
	tests := []struct {
		name string
		opts SignOptions
		file string
	}{
		{"ed25519", SignOptions{Now: clock}, "ed25519.golden"},
		{"ed25519 with expiration", SignOptions{Now: clock, Expiration: 120 * time.Hour}, "ed25519-expiration.golden"},
	}
	k := testEd25519Key(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NewSigner(tt.opts).Sign(context.Background(), []Key{k}, msg)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal([]byte(got), want) {
				t.Errorf("signature differs from testdata/%s\ngot:\n%q\nwant:\n%q", tt.file, got, want)
			}
			if tt.opts.Expiration == 0 { // go-msgauth checks x= against the real clock
				mustVerify(t, []Key{k}, got+string(msg), 1)
			}
		})
	}
}
