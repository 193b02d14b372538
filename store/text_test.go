package store

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestCleanText(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 100*1024)
	for _, tc := range []struct {
		name, in string
		limit    int
		line     bool
		want     string
	}{
		{name: "clean ASCII as is", in: "2.0.0 queued as 4XyZ", limit: 100, want: "2.0.0 queued as 4XyZ"},
		{name: "invalid bytes", in: "queued N \xff\xfe", limit: 100, want: "queued N \uFFFD\uFFFD"},
		{name: "NUL", in: "ok \x00", limit: 100, want: "ok \uFFFD"},
		{name: "lone invalid byte", in: "rejected \xff", limit: 100, want: "rejected \uFFFD"},
		{name: "controls, DEL and C1", in: "a\rb\x1bc\x7fd\u0085e", limit: 100, want: "a\uFFFDb\uFFFDc\uFFFDd\uFFFDe"},
		{name: "tab and lines kept in text", in: "line one\n\tline two", limit: 100, want: "line one\n\tline two"},
		{name: "newline replaced in a line", in: "mx.example\nX", limit: 100, line: true, want: "mx.example\uFFFDX"},
		{name: "valid UTF-8 kept", in: "zugestellt: Grüße ✓", limit: 100, want: "zugestellt: Grüße ✓"},
		{name: "literal U+FFFD kept", in: "\uFFFD", limit: 100, want: "\uFFFD"},
		{name: "cut with ellipsis", in: long, limit: 1000, want: strings.Repeat("x", 997) + "…"},
		{name: "exactly the limit", in: "abcde", limit: 5, want: "abcde"},
		// 3-byte runes: 333 fit in 999 bytes, the cut keeps 332 and the ellipsis.
		{name: "cut on a rune boundary", in: strings.Repeat("✓", 400), limit: 1000, want: strings.Repeat("✓", 332) + "…"},
		{name: "replacements count toward the limit", in: strings.Repeat("\xff", 10), limit: 10, want: "\uFFFD\uFFFD…"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := cleanText(tc.in, tc.limit)
			if tc.line {
				got = cleanLine(tc.in, tc.limit)
			}
			if got != tc.want {
				t.Errorf("clean(%q) = %q, want %q", clip(tc.in), clip(got), clip(tc.want))
			}
		})
	}
}

func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

// FuzzCleanText: whatever comes in, what goes out is valid UTF-8 with no
// control character but tab (and newline in text), at most limit bytes, and
// cleaning it again changes nothing; clean input comes back as it was.
func FuzzCleanText(f *testing.F) {
	for _, s := range []string{"250 2.0.0 queued N \xff\xfe", "250 ok \x00", "550 5.7.1 rejected \xff",
		"a\r\nb", "✓✓✓", "\uFFFD\xef\xbf", strings.Repeat("é", 600)} {
		f.Add(s, 1000)
		f.Add(s, 7)
	}
	f.Fuzz(func(t *testing.T, s string, limit int) {
		limit = 1 + abs(limit)%2000
		for _, lines := range []bool{true, false} {
			got := clean(s, limit, lines)
			if !utf8.ValidString(got) {
				t.Fatalf("clean(%q) = %q: not UTF-8", s, got)
			}
			if len(got) > limit {
				t.Fatalf("clean(%q, %d) has %d bytes", s, limit, len(got))
			}
			for _, r := range got {
				if unicode.IsControl(r) && r != '\t' && (r != '\n' || !lines) {
					t.Fatalf("clean(%q) = %q keeps control %U", s, got, r)
				}
			}
			if again := clean(got, limit, lines); again != got {
				t.Fatalf("not idempotent: %q -> %q -> %q", s, got, again)
			}
			if isClean(s, limit, lines) && got != s {
				t.Fatalf("clean input %q changed to %q", s, got)
			}
			// Oracle: []rune gives U+FFFD per invalid byte, as range does.
			rs := []rune(s)
			for i, r := range rs {
				if unicode.IsControl(r) && r != '\t' && (r != '\n' || !lines) {
					rs[i] = utf8.RuneError
				}
			}
			want := string(rs)
			if len(want) <= limit && got != want || len(want) > limit && !strings.HasPrefix(want, strings.TrimSuffix(got, ellipsis)) {
				t.Fatalf("clean(%q, %d) = %q, want %q (or its start)", s, limit, got, want)
			}
		}
	})
}

func abs(n int) int {
	if n < 0 {
		return -(n + 1)
	}
	return n
}

// TestRecordHostileReplies (issue 18, 1): a next hop's reply with invalid
// UTF-8, a NUL, control characters or 100 KB of text is recorded, cleaned
// and bounded, in the attempt and the recipient's summary. Before, the
// first three made PostgreSQL refuse the row (SQLSTATE 22021) and the
// outcome could never be recorded.
func TestRecordHostileReplies(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	huge := strings.Repeat("too long ", 100*1024/9)
	for _, tc := range []struct {
		name     string
		attempt  Attempt
		response string // as read back
		host     string
	}{
		{name: "invalid UTF-8", attempt: Attempt{SMTPCode: 250, EnhancedCode: "2.0.0", Response: "queued N \xff\xfe", Outcome: RecipientDelivered},
			response: "queued N \uFFFD\uFFFD"},
		{name: "NUL", attempt: Attempt{SMTPCode: 250, Response: "ok \x00", Outcome: RecipientDelivered}, response: "ok \uFFFD"},
		{name: "bounce with an invalid byte", attempt: Attempt{SMTPCode: 550, EnhancedCode: "5.7.1", Response: "rejected \xff", Outcome: RecipientBounced},
			response: "rejected \uFFFD"},
		{name: "control characters", attempt: Attempt{SMTPCode: 451, Response: "try\x1b[31m later\r\x07", Outcome: RecipientDeferred},
			response: "try\uFFFD[31m later\uFFFD\uFFFD"},
		{name: "multi-line reply keeps its lines", attempt: Attempt{SMTPCode: 250, Response: "first\nsecond", Outcome: RecipientDelivered},
			response: "first\nsecond"},
		{name: "100 KB reply", attempt: Attempt{SMTPCode: 550, Response: huge, Outcome: RecipientBounced},
			response: huge[:maxReplyText-len(ellipsis)] + ellipsis},
		{name: "hostile names and TLS fields", attempt: Attempt{SMTPCode: 250, Response: "ok", Outcome: RecipientDelivered,
			MXHost: "mx\x00.\xffexample", TLSVersion: "TLS\x00", TLSCipher: "\xfe", EnhancedCode: "2.0.0\x00"},
			response: "ok", host: "mx\uFFFD.\uFFFDexample"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := testMessage(k, 1)
			if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
				t.Fatal(err)
			}
			o := Outcome{Attempt: tc.attempt}
			o.Attempt.Recipient, o.Attempt.Attempt, o.Attempt.StartedAt = 0, 1, time.Now()
			if o.Attempt.Outcome == RecipientDeferred {
				next := time.Now().Add(time.Minute)
				o.NextAttemptAt = &next
			}
			if _, err := s.RecordOutcomes(t.Context(), m.ID, []Outcome{o}); err != nil {
				t.Fatalf("record: %v", err)
			}
			v, err := s.GetMessage(t.Context(), k.TenantID, m.ID)
			if err != nil {
				t.Fatal(err)
			}
			r := v.Recipients[0]
			if r.Status != tc.attempt.Outcome || r.Attempts != 1 || deref(r.Response) != tc.response {
				t.Errorf("recipient %s after %d attempts, response %q; want %s, 1, %q",
					r.Status, r.Attempts, clip(deref(r.Response)), tc.attempt.Outcome, clip(tc.response))
			}
			if tc.host != "" && deref(r.MXHost) != tc.host {
				t.Errorf("mx host %q, want %q", deref(r.MXHost), tc.host)
			}
			var events int
			for _, e := range v.Events {
				if e.Attempt == nil {
					continue
				}
				events++
				for _, p := range []*string{e.Response, e.MXHost, e.TLSVersion, e.TLSCipher, e.EnhancedCode} {
					if p != nil && (!utf8.ValidString(*p) || strings.ContainsRune(*p, 0) || len(*p) > maxReplyText) {
						t.Errorf("attempt event holds %q", clip(*p))
					}
				}
				if deref(e.Response) != tc.response {
					t.Errorf("attempt response %q, want %q", clip(deref(e.Response)), clip(tc.response))
				}
			}
			if events != 1 {
				t.Errorf("%d attempt events, want 1", events)
			}
		})
	}
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// TestHeaderTextNeverFailsABatch: header-derived columns, tags and metadata
// holding invalid UTF-8 or a NUL (intake refuses them; one that slips
// through must not fail the group commit) are stored cleaned, while
// addresses, used as written, are refused with ErrRejected before anything
// is sent to PostgreSQL.
func TestHeaderTextNeverFailsABatch(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	k := newTenant(t, s, "acme")
	m := testMessage(k, 1)
	m.MessageID = "\xff@example.com"
	m.From = "Al\x00ice <alice@example.com>"
	m.Subject = "hi \xfe\x00"
	m.Tags = []string{"t\x00"}
	m.Metadata = map[string]string{"k\x00": "v\x00\xff"}
	good := testMessage(k, 1)
	if err := s.AcceptBatch(t.Context(), []NewMessage{m, good}); err != nil {
		t.Fatalf("accept: %v", err)
	}
	v, err := s.GetMessage(t.Context(), k.TenantID, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	if v.MessageID != "\uFFFD@example.com" || v.From != "Al\uFFFDice <alice@example.com>" || v.Subject != "hi \uFFFD\uFFFD" ||
		len(v.Tags) != 1 || v.Tags[0] != "t\uFFFD" || v.Metadata["k\uFFFD"] != "v\uFFFD\uFFFD" {
		t.Errorf("stored %q %q %q %q %q", v.MessageID, v.From, v.Subject, v.Tags, v.Metadata)
	}
	for _, edit := range []func(*NewMessage){
		func(m *NewMessage) { m.Recipients[0].Email = "bob\x00@example.net" },
		func(m *NewMessage) { m.Recipients[0].Email = "b\xffb@example.net" },
		func(m *NewMessage) { m.MailFrom = "bounce\xff@example.com" },
	} {
		bad := testMessage(k, 1)
		edit(&bad)
		err := s.AcceptBatch(t.Context(), []NewMessage{bad})
		var pgErr *pgconn.PgError
		if !errors.Is(err, ErrRejected) || errors.As(err, &pgErr) {
			t.Errorf("accept %q from %q: %v, want ErrRejected before PostgreSQL", bad.Recipients[0].Email, bad.MailFrom, err)
		}
	}
}

// TestRejectedClassifies: what PostgreSQL refuses is ErrRejected, an
// outage is not.
func TestRejectedClassifies(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"bad UTF-8", &pgconn.PgError{Code: "22021"}, true},
		{"check constraint", &pgconn.PgError{Code: "23514"}, true},
		{"NUL in jsonb", &pgconn.PgError{Code: "22P05"}, true},
		{"undefined column", &pgconn.PgError{Code: "42703"}, true},
		{"admin shutdown", &pgconn.PgError{Code: "57P01"}, false},
		{"cannot connect now", &pgconn.PgError{Code: "57P03"}, false},
		{"statement timeout", &pgconn.PgError{Code: "57014"}, false},
		{"deadlock", &pgconn.PgError{Code: "40P01"}, false},
		{"too many connections", &pgconn.PgError{Code: "53300"}, false},
		{"connection failure", &pgconn.PgError{Code: "08006"}, false},
		{"network", errors.New("dial tcp 127.0.0.1:5432: connect: connection refused"), false},
	} {
		if got := errors.Is(rejected(tc.err), ErrRejected); got != tc.want {
			t.Errorf("%s: rejected %v, want %v", tc.name, got, tc.want)
		}
	}
}

// BenchmarkCleanText: the cost per recorded reply, clean (the fast path,
// no allocation) and hostile.
func BenchmarkCleanText(b *testing.B) {
	for _, bc := range []struct{ name, in string }{
		{"clean reply", "2.0.0 Ok: queued as 4Xq1Zk2Jz9z1Vq"},
		{"hostile reply", "2.0.0 queued N \xff\xfe \x00 " + strings.Repeat("x", 40)},
		{"100 KB reply", strings.Repeat("too long ", 100*1024/9)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				cleanText(bc.in, maxReplyText)
			}
		})
	}
}
