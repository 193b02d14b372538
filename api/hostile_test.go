package api_test

import (
	"bytes"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// This file holds the API's tests for issue 18 (hostile input): answers
// that must not grow with the request, addresses that must be refused
// rather than accepted and bounced, and Idempotency-Key misuse.

// unknownKeysBody is basic() plus n unknown top-level keys "u0000000"…,
// each with a value, written out by hand: a map of a million entries
// would cost the test more than the server.
func unknownKeysBody(n int, value string) []byte {
	var b bytes.Buffer
	b.WriteString(`{"from":"alice@example.com","to":["bob@example.net"],"subject":"Hi","text":"Hello"`)
	for i := range n {
		fmt.Fprintf(&b, `,"u%07d":%s`, i, value)
	}
	b.WriteString("}")
	return b.Bytes()
}

// TestUnknownFieldsBounded: a body of many unknown keys, or of one very
// long one, gets a 400 of a few kilobytes that names the first 20 in sort
// order and says how many more there are (issue 18 item 10: 32 MB of
// unknown keys once drew a 150 MB answer).
func TestUnknownFieldsBounded(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{maxMessageBytes: 26 << 20})
	longName := strings.Repeat("\x01", 1<<20) // %q and JSON escaping each multiply it
	tests := []struct {
		name      string
		body      []byte
		wantNames []string // the fields named, in order
		wantMore  string   // text the detail must hold ("" for none)
	}{
		{"one", unknownKeysBody(1, "1"), []string{"u0000000"}, ""},
		{"twenty", unknownKeysBody(20, "1"), names(0, 20), ""},
		{"twenty-one", unknownKeysBody(21, "1"), names(0, 20), "and 1 more unknown fields"},
		{"a million in 32 MB", unknownKeysBody(1_000_000, `[1,{"a":"b"},"ccc"]`), names(0, 20), "and 999980 more unknown fields"},
		{"reverse order", []byte(`{"zz":1,"yy":2,"u0000001":3,"u0000000":4,"from":"a@example.com"}`), []string{"u0000000", "u0000001", "yy", "zz"}, ""},
		{"repeated key", []byte(`{"tos":1,"tos":2,"tos":3}`), []string{"tos"}, ""},
		{"one key of 1 MiB", []byte(`{"` + jsonEscape(longName) + `":1}`), nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := h.post(tt.body, nil)
			if r.status != http.StatusBadRequest {
				t.Fatalf("status %d, want 400; body %.500s", r.status, r.body)
			}
			if len(r.body) > 8<<10 {
				t.Fatalf("answer of %d bytes to a body of %d bytes; want at most 8 KiB", len(r.body), len(tt.body))
			}
			t.Logf("%d-byte answer to a %d-byte body", len(r.body), len(tt.body))
			p := r.problem(t)
			if p.Type != "/problems/unknown-fields" {
				t.Errorf("type %q", p.Type)
			}
			got := p.fields()
			if tt.wantNames == nil { // the long name: one field, cut short
				if len(got) != 1 || len(got[0]) > 80 || !strings.HasSuffix(got[0], "…") {
					t.Errorf("fields %q, want one name cut short", got)
				}
			} else if !slices.Equal(got, tt.wantNames) {
				t.Fatalf("fields %q, want %q", got, tt.wantNames)
			}
			for _, n := range got {
				if !strings.Contains(p.Detail, fmt.Sprintf("%q", n)) {
					t.Errorf("detail %q does not name %q", p.Detail, n)
				}
			}
			if tt.wantMore != "" && !strings.Contains(p.Detail, tt.wantMore) {
				t.Errorf("detail %q, want it to say %q", p.Detail, tt.wantMore)
			}
			if tt.wantMore == "" && strings.Contains(p.Detail, "more") {
				t.Errorf("detail %q counts more fields than there are", p.Detail)
			}
		})
	}
}

func names(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("u%07d", i))
	}
	return out
}

// jsonEscape writes control characters as JSON \u escapes.
func jsonEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r < 0x20 {
			fmt.Fprintf(&b, `\u%04x`, r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}
