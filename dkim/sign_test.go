package dkim

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"
)

// testEd25519Key is a fixed key (Ed25519 signatures are deterministic), so
// golden signatures stay put.
func testEd25519Key(t testing.TB) Key {
	t.Helper()
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(i)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return Key{
		Domain:     "example.com",
		Selector:   "mf2026",
		Algorithm:  AlgorithmEd25519,
		PrivateKey: der,
		PublicKey:  priv.Public().(ed25519.PublicKey),
		CreatedAt:  time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
	}
}

func genKey(t testing.TB, domain, selector string, alg Algorithm) Key {
	t.Helper()
	k, err := Generate(nil, domain, selector, alg)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

const testMessage = "From: Alice <alice@example.com>\r\n" +
	"To: bob@example.net\r\n" +
	"Subject: Your receipt\r\n" +
	"Date: Sun, 01 Mar 2026 12:00:00 +0000\r\n" +
	"Message-ID: <r1@mail.example.com>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"X-Campaign: receipts\r\n" +
	"\r\n" +
	"Thanks for your order.\r\n" +
	"Total: 42 EUR\r\n"

// verify checks message with go-msgauth, serving each key's DNSValue at its
// DNSName, and returns one error per signature (nil when it verified).
func verify(t *testing.T, keys []Key, message string) []error {
	t.Helper()
	txt := map[string]string{}
	for _, k := range keys {
		txt[k.DNSName()] = k.DNSValue()
	}
	vs, err := msgauth.VerifyWithOptions(strings.NewReader(message), &msgauth.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			if v, ok := txt[name]; ok {
				return []string{v}, nil
			}
			return nil, fmt.Errorf("no TXT record at %s", name)
		},
	})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	errs := make([]error, len(vs))
	for i, v := range vs {
		errs[i] = v.Err
	}
	return errs
}

func mustVerify(t *testing.T, keys []Key, message string, want int) {
	t.Helper()
	errs := verify(t, keys, message)
	if len(errs) != want {
		t.Fatalf("%d signatures, want %d", len(errs), want)
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("signature %d: %v\n%s", i, err, message)
		}
	}
}

func sign(t *testing.T, s *Signer, keys []Key, message string) string {
	t.Helper()
	h, err := s.Sign(context.Background(), keys, []byte(message))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestSignVerifies(t *testing.T) {
	ed := genKey(t, "example.com", "ed", AlgorithmEd25519)
	rsa := genKey(t, "example.com", "rsa", AlgorithmRSA2048)
	tests := []struct {
		name string
		keys []Key
	}{
		{"ed25519", []Key{ed}},
		{"rsa2048", []Key{rsa}},
		{"dual", []Key{rsa, ed}},
	}
	s := NewSigner(SignOptions{Expiration: 120 * time.Hour})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := sign(t, s, tt.keys, testMessage)
			if got := strings.Count(h, "DKIM-Signature:"); got != len(tt.keys) {
				t.Fatalf("%d signatures, want %d:\n%s", got, len(tt.keys), h)
			}
			mustVerify(t, tt.keys, h+testMessage, len(tt.keys))
		})
	}
}

func TestSignDetectsChanges(t *testing.T) {
	ed := genKey(t, "example.com", "ed", AlgorithmEd25519)
	rsa := genKey(t, "example.com", "rsa", AlgorithmRSA2048)
	keys := []Key{rsa, ed}
	h := sign(t, NewSigner(SignOptions{}), keys, testMessage)
	header, body, _ := strings.Cut(testMessage, "\r\n\r\n")
	tests := []struct {
		name     string
		message  string
		verifies bool
	}{
		{"unchanged", testMessage, true},
		{"unsigned header added", "X-Spam-Score: 0\r\n" + testMessage, true},
		{"unsigned header added at the end", header + "\r\nReceived: by mx\r\n\r\n" + body, true},
		{"body changed", header + "\r\n\r\n" + strings.Replace(body, "42", "43", 1), false},
		{"body extended", testMessage + "P.S. send money\r\n", false},
		{"subject changed", strings.Replace(testMessage, "Your receipt", "Your invoice", 1), false},
		{"second From on top", "From: mallory@evil.example\r\n" + testMessage, false},
		{"second From at the end", header + "\r\nFrom: mallory@evil.example\r\n\r\n" + body, false},
		{"Cc added", "Cc: eve@example.org\r\n" + testMessage, true}, // not over-signed, by design
		// Relaxed canonicalization forgives whitespace changes.
		{"header refolded", strings.Replace(testMessage, "Subject: Your receipt", "Subject:  Your\r\n\treceipt ", 1), true},
		{"trailing blank lines", testMessage + "\r\n\r\n", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i, err := range verify(t, keys, h+tt.message) {
				if (err == nil) != tt.verifies {
					t.Errorf("signature %d: err = %v, want verifies=%v", i, err, tt.verifies)
				}
			}
		})
	}
}

func TestSignedFields(t *testing.T) {
	k := testEd25519Key(t)
	tests := []struct {
		name, message, wantH string
	}{
		{"minimal", "From: a@example.com\r\n\r\nhi\r\n", "h=From:From;"},
		{
			"all listed fields, any case, unsigned ones left out",
			"from: a@example.com\r\nTO: b@example.net\r\ncc: c@example.net\r\nSubject: s\r\n" +
				"Date: d\r\nMessage-Id: <m@x>\r\nReply-To: r@example.com\r\nMIME-Version: 1.0\r\n" +
				"Content-Type: text/plain\r\nContent-Transfer-Encoding: 7bit\r\n" +
				"List-Unsubscribe: <https://example.com/u>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" +
				"X-Mailer: m\r\nReceived: r\r\nBcc: x@example.org\r\n\r\nhi\r\n",
			"h=From:From:To:Cc:Subject:Date:Message-ID:Reply-To:MIME-Version:Content-Type:" +
				"Content-Transfer-Encoding:List-Unsubscribe:List-Unsubscribe-Post;",
		},
		{"every instance signed", "To: a@x.example\r\nFrom: a@example.com\r\nTo: b@x.example\r\n\r\n", "h=From:From:To:To;"},
		{"header only", "Subject: s\r\nFrom: a@example.com\r\n", "h=From:From:Subject;"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := sign(t, NewSigner(SignOptions{}), []Key{k}, tt.message)
			unfolded := strings.ReplaceAll(h, "\r\n ", "")
			if !strings.Contains(unfolded, " "+tt.wantH) {
				t.Errorf("signature %q lacks %q", unfolded, tt.wantH)
			}
			msg := tt.message
			if !strings.Contains(msg, "\r\n\r\n") {
				msg += "\r\n" // go-msgauth cannot read a header without the empty line; same body
			}
			mustVerify(t, []Key{k}, h+msg, 1)
		})
	}
}

func TestSignBodies(t *testing.T) {
	k := testEd25519Key(t)
	const head = "From: a@example.com\r\nSubject: s\r\n\r\n"
	tests := []struct{ name, body string }{
		{"dot lines and trailing whitespace", ".\r\n..leading dots\r\n. \r\ntrailing spaces   \r\ntrailing tab\t\r\n"},
		{"inner whitespace runs", "a  b\t\tc \t d\r\n \t indented\r\n"},
		{"blank lines inside and at the end", "\r\n\r\na\r\n\r\n \r\nb\r\n\r\n\t\r\n\r\n"},
		{"empty", ""},
		{"only blank lines", "\r\n \r\n\t\r\n"},
		{"no final CRLF", "last line"},
		{"no final CRLF after whitespace", "last line \t"},
		{"8-bit", "Grüße, 世界\r\n"},
		{"long line", strings.Repeat("x", 2000) + "\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := head + tt.body
			h := sign(t, NewSigner(SignOptions{}), []Key{k}, msg)
			mustVerify(t, []Key{k}, h+msg, 1)
			if got, want := tagValue(t, h, "bh"), msgauthBodyHash(t, k, msg); got != want {
				t.Errorf("bh=%s, go-msgauth computes %s", got, want)
			}
		})
	}
}

// msgauthBodyHash signs message with go-msgauth and returns its bh=, an
// oracle for our body canonicalization.
func msgauthBodyHash(t *testing.T, k Key, message string) string {
	t.Helper()
	priv, err := x509.ParsePKCS8PrivateKey(k.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	s, err := msgauth.NewSigner(&msgauth.SignOptions{
		Domain: k.Domain, Selector: k.Selector, Signer: priv.(ed25519.PrivateKey),
		HeaderCanonicalization: msgauth.CanonicalizationRelaxed,
		BodyCanonicalization:   msgauth.CanonicalizationRelaxed,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte(message))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return tagValue(t, s.Signature(), "bh")
}

// tagValue returns a tag of a DKIM-Signature field, whitespace removed.
func tagValue(t *testing.T, field, tag string) string {
	t.Helper()
	_, v, _ := strings.Cut(field, ":")
	for spec := range strings.SplitSeq(v, ";") {
		name, value, _ := strings.Cut(spec, "=")
		if strings.TrimSpace(name) == tag {
			return strings.Join(strings.Fields(value), "")
		}
	}
	t.Fatalf("no %s= in %q", tag, field)
	return ""
}

func TestSignLineLengths(t *testing.T) {
	long63 := strings.Repeat("d", 63)
	longDomain := strings.Join([]string{long63, long63, long63}, ".") + ".com" // d= cannot fold
	fullMessage := "From: a@example.com\r\nTo: b@example.net\r\nCc: c@example.net\r\nSubject: s\r\n" +
		"Date: d\r\nMessage-ID: <m@x>\r\nReply-To: r@example.com\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain\r\nContent-Transfer-Encoding: 7bit\r\n" +
		"List-Unsubscribe: <https://example.com/u>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nhi\r\n"
	tests := []struct {
		name     string
		keys     []Key
		maxLine  int
		longLine string // the one line allowed past 78
	}{
		{"ed25519", []Key{genKey(t, "example.com", "mf2026", AlgorithmEd25519)}, 78, ""},
		{"rsa2048", []Key{genKey(t, "example.com", "mf2026", AlgorithmRSA2048)}, 78, ""},
		{"long selector and domain labels", []Key{genKey(t, long63+".com", "s"+long63[1:], AlgorithmEd25519)}, 78, ""},
		{"195-character domain", []Key{genKey(t, longDomain, "s", AlgorithmEd25519)}, 998, " d=" + longDomain + ";"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewSigner(SignOptions{Expiration: time.Hour})
			h := sign(t, s, tt.keys, fullMessage)
			if !strings.HasSuffix(h, "\r\n") {
				t.Fatalf("signature does not end with CRLF: %q", h)
			}
			lines := strings.Split(strings.TrimSuffix(h, "\r\n"), "\r\n")
			for i, l := range lines {
				if strings.ContainsAny(l, "\r\n") {
					t.Errorf("line %d has a bare CR or LF: %q", i, l)
				}
				if i > 0 && l[0] != ' ' {
					t.Errorf("line %d is not a continuation: %q", i, l)
				}
				if len(l) > 78 && l != tt.longLine || len(l) > tt.maxLine {
					t.Errorf("line %d is %d characters: %q", i, len(l), l)
				}
			}
			mustVerify(t, tt.keys, h+fullMessage, len(tt.keys))
		})
	}
}

func TestSignTimestamps(t *testing.T) {
	k := testEd25519Key(t)
	clock := func() time.Time { return time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) }
	tests := []struct {
		name       string
		expiration time.Duration
		wantX      string
	}{
		{"no expiration", 0, ""},
		{"five days", 120 * time.Hour, "1772798400"},
		{"sub-second rounds up", time.Millisecond, "1772366401"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := sign(t, NewSigner(SignOptions{Now: clock, Expiration: tt.expiration}), []Key{k}, testMessage)
			if got := tagValue(t, h, "t"); got != "1772366400" {
				t.Errorf("t=%s, want 1772366400", got)
			}
			if tt.wantX == "" {
				if strings.Contains(h, " x=") {
					t.Errorf("x= present: %q", h)
				}
				return
			}
			if got := tagValue(t, h, "x"); got != tt.wantX {
				t.Errorf("x=%s, want %s", got, tt.wantX)
			}
		})
	}
}

func TestSignExpiredFails(t *testing.T) {
	// The receiver's clock decides; a signature made an hour ago with a
	// one-minute expiration is refused.
	k := testEd25519Key(t)
	past := func() time.Time { return time.Now().Add(-time.Hour) }
	h := sign(t, NewSigner(SignOptions{Now: past, Expiration: time.Minute}), []Key{k}, testMessage)
	if errs := verify(t, []Key{k}, h+testMessage); errs[0] == nil || !strings.Contains(errs[0].Error(), "expired") {
		t.Errorf("err = %v, want expired", errs[0])
	}
}

func TestSignRefuses(t *testing.T) {
	k := testEd25519Key(t)
	mismatched := k
	mismatched.PublicKey = genKey(t, "example.com", "x", AlgorithmEd25519).PublicKey
	tests := []struct {
		name    string
		keys    []Key
		message string
		want    string
	}{
		{"no keys", nil, testMessage, "no keys"},
		{"no From", []Key{k}, "To: b@example.net\r\n\r\nhi\r\n", "no From"},
		{"two From", []Key{k}, "From: a@example.com\r\n" + testMessage, "2 From header fields"},
		{"empty message", []Key{k}, "", "no From"},
		{"bare LF in header", []Key{k}, "From: a@example.com\nSubject: s\r\n\r\n", "bare LF"},
		{"bare LF in body", []Key{k}, testMessage + "line\nline\r\n", "bare LF"},
		{"bare CR in body", []Key{k}, testMessage + "line\rline\r\n", "bare CR"},
		{"unterminated header", []Key{k}, "From: a@example.com", "does not end with CRLF"},
		{"header line without colon", []Key{k}, "From: a@example.com\r\nnonsense\r\n\r\n", "no colon"},
		{"leading continuation", []Key{k}, " x\r\nFrom: a@example.com\r\n\r\n", "continuation"},
		{"same key twice", []Key{k, k}, testMessage, "given twice"},
		{"public key mismatch", []Key{mismatched}, testMessage, "does not match"},
		{"bad selector", []Key{{Domain: "example.com", Selector: "a;b", Algorithm: AlgorithmEd25519}}, testMessage, "invalid selector"},
	}
	s := NewSigner(SignOptions{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := s.Sign(context.Background(), tt.keys, []byte(tt.message))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Sign = %q, %v; want an error containing %q", h, err, tt.want)
			}
		})
	}
}

func TestSignCachedKeyStillChecked(t *testing.T) {
	// The cache is keyed by the private key alone; a later Key with the
	// same private key but another public key must still be refused.
	k := testEd25519Key(t)
	s := NewSigner(SignOptions{})
	sign(t, s, []Key{k}, testMessage)
	bad := k
	bad.PublicKey = bytes.Repeat([]byte{1}, 32)
	if _, err := s.Sign(context.Background(), []Key{bad}, []byte(testMessage)); err == nil {
		t.Fatal("signed with a key whose public key does not match")
	}
	other := k
	other.Selector = "other"
	h := sign(t, s, []Key{other}, testMessage)
	if got := tagValue(t, h, "s"); got != "other" {
		t.Errorf("s=%s, want other", got)
	}
}

func TestSignCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := NewSigner(SignOptions{}).Sign(ctx, []Key{testEd25519Key(t)}, []byte(testMessage))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestSignConcurrent(t *testing.T) {
	keys := []Key{testEd25519Key(t), genKey(t, "example.com", "rsa", AlgorithmRSA2048)}
	s := NewSigner(SignOptions{})
	var wg sync.WaitGroup
	results := make([]string, 8)
	for i := range results {
		wg.Go(func() {
			h, err := s.Sign(context.Background(), keys, []byte(testMessage))
			if err != nil {
				t.Error(err)
			}
			results[i] = h
		})
	}
	wg.Wait()
	for i, h := range results {
		mustVerify(t, keys, h+testMessage, 2)
		if i > 0 && tagValue(t, h, "bh") != tagValue(t, results[0], "bh") {
			t.Errorf("result %d has another body hash", i)
		}
	}
}

func TestNewSignerPanicsOnNegativeExpiration(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic")
		}
	}()
	NewSigner(SignOptions{Expiration: -time.Second})
}

func FuzzSignVerify(f *testing.F) {
	f.Add("Hello", "body\r\n")
	f.Add(" lots \t of  space ", ".\r\n\r\n  \r\nend  ")
	f.Add("folded\r\n subject", "")
	f.Add("ünïcödé", "\t\r\n")
	f.Fuzz(func(t *testing.T, subject, body string) {
		for _, s := range []string{subject, body} {
			// Bare CR or LF is refused by design (TestSignRefuses).
			if strings.ContainsAny(strings.ReplaceAll(s, "\r\n", ""), "\r\n") {
				t.Skip()
			}
		}
		// A subject must not end the header or start a field of its own.
		if strings.Contains(subject, "\r\n\r\n") || strings.HasSuffix(subject, "\r\n") {
			t.Skip()
		}
		for _, line := range strings.Split(subject, "\r\n")[1:] {
			if line == "" || (line[0] != ' ' && line[0] != '\t') {
				t.Skip()
			}
		}
		k := testEd25519Key(t)
		msg := "From: a@example.com\r\nSubject: " + subject + "\r\n\r\n" + body
		h, err := NewSigner(SignOptions{}).Sign(context.Background(), []Key{k}, []byte(msg))
		if err != nil {
			t.Fatalf("Sign(%q): %v", msg, err)
		}
		mustVerify(t, []Key{k}, h+msg, 1)
	})
}
