package smtpclient

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestReadReply(t *testing.T) {
	good := func(in string, code int, enh, text string) {
		t.Helper()
		got, err := readReply(bufio.NewReader(strings.NewReader(in)))
		if err != nil || got != (reply{Code: code, Enhanced: enh, Text: text}) {
			t.Errorf("readReply(%q) = %+v, %v; want %d %q %q", in, got, err, code, enh, text)
		}
	}
	bad := func(in, why string) {
		t.Helper()
		if got, err := readReply(bufio.NewReader(strings.NewReader(in))); err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("readReply(%q) = %+v, %v; want an error about %q", in, got, err, why)
		}
	}
	good("220 2.0.0 Ready to start TLS\r\n", 220, "2.0.0", "Ready to start TLS")
	good("220 ready\r\n", 220, "", "ready")
	good("220\r\n", 220, "", "")
	good("250-a\r\n250-b\r\n250 c\r\n", 250, "", "a\nb\nc")
	good("250-2.1.0 a\r\n250-2.1.0 b\r\n250 2.1.0\r\n", 250, "2.1.0", "a\nb\n")
	good("454 4.7.0 TLS not available\n", 454, "4.7.0", "TLS not available")
	good("550 4.1.1 class mismatch\r\n", 550, "", "4.1.1 class mismatch")
	good("550 5.1.1000 too long a detail\r\n", 550, "", "5.1.1000 too long a detail")
	good("220 2.0.0x\r\n", 220, "", "2.0.0x")
	bad("", "EOF")
	bad("220 no line end", "EOF")
	bad("HELLO\r\n", "3-digit")
	bad("2200 hi\r\n", "space or hyphen")
	bad("120 wait\r\n", "3-digit")
	bad("600 hi\r\n", "3-digit")
	bad("220-a\r\n250 b\r\n", "code changed")
	bad("220 "+strings.Repeat("x", 5000)+"\r\n", "longer than")
	bad(strings.Repeat("220-x\r\n", 150)+"220 x\r\n", "reply longer than")
	bad(strings.Repeat("220-"+strings.Repeat("x", 1900)+"\r\n", 40), "reply longer than")
}

func TestParseEnhanced(t *testing.T) {
	for _, tc := range []struct {
		code            int
		in, enh, remain string
	}{
		{250, "2.0.0 OK: queued", "2.0.0", "OK: queued"},
		{550, "5.1.1 no such user", "5.1.1", "no such user"},
		{550, "5.1.10 null MX", "5.1.10", "null MX"},
		{451, "4.7.1", "4.7.1", ""},
		{550, "4.1.1 wrong class", "", "4.1.1 wrong class"},
		{550, "5.1 short", "", "5.1 short"},
		{550, "5..1 empty", "", "5..1 empty"},
		{550, "5.a.1 letters", "", "5.a.1 letters"},
		{550, "3.1.1 bad class", "", "3.1.1 bad class"},
		{550, "no code", "", "no code"},
		{550, "", "", ""},
	} {
		enh, rest := parseEnhanced(tc.code, tc.in)
		if enh != tc.enh || rest != tc.remain {
			t.Errorf("parseEnhanced(%d, %q) = %q, %q; want %q, %q", tc.code, tc.in, enh, rest, tc.enh, tc.remain)
		}
	}
}

// TestReplyResult: the classification table of replies into results.
func TestReplyResult(t *testing.T) {
	for _, tc := range []struct {
		code    int
		enh     string
		msg     string
		stage   string
		verdict string
	}{
		{250, "2.0.0", "ok", stageEnd, delivered},
		{251, "", "forwarded", stageRcpt, delivered},
		{450, "4.2.1", "busy", stageRcpt, deferred},
		{421, "4.3.2", "closing", stageRcpt, deferred},
		{452, "4.5.3", "too many recipients", stageRcpt, deferred},
		{550, "5.1.1", "no user", stageRcpt, bounced},
		{552, "5.5.3", "too many recipients", stageRcpt, deferred},
		{552, "5.3.4", "too big", stageEnd, bounced},
		{554, "5.7.1", "spam", stageEnd, bounced},
		{354, "", "unexpected", stageRcpt, deferred},
	} {
		e := &ReplyError{Code: tc.code, Enhanced: tc.enh, Text: tc.msg}
		r := replyResult(e, tc.stage)
		if verdict(r) != tc.verdict {
			t.Errorf("%d at %s: %s, want %s (%+v)", tc.code, tc.stage, verdict(r), tc.verdict, r)
		}
		if tc.verdict != delivered && !errors.Is(r.Err, e) {
			t.Errorf("%d at %s: Err %v does not wrap the reply", tc.code, tc.stage, r.Err)
		}
		if r.Enhanced != tc.enh || r.Line != tc.msg || r.Code != tc.code {
			t.Errorf("%d at %s: %+v lost the reply", tc.code, tc.stage, r)
		}
	}
}

// formatReply writes rep back in wire form, the enhanced code on every line
// (RFC 2034 3).
func formatReply(rep reply) string {
	var b strings.Builder
	lines := strings.Split(rep.Text, "\n")
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		if rep.Enhanced != "" {
			l = rep.Enhanced + " " + l
		}
		fmt.Fprintf(&b, "%03d%s%s\r\n", rep.Code, sep, l)
	}
	return b.String()
}

// FuzzParseReply: whatever a server sends, readReply either refuses it or
// returns a reply that is in range, bounded, has a consistent enhanced
// code, and reads back identically once written out again (round trip).
func FuzzParseReply(f *testing.F) {
	for _, s := range []string{
		"220 mx.example.net ESMTP\r\n",
		"250-mx.example.net\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
		"250-2.1.0 a\r\n250 2.1.0 b\r\n",
		"550 5.1.1 <bob@example.net>: no such user\r\n",
		"451 4.7.1\r\n",
		"220\r\n",
		"2200 x\r\n",
		"220-a\r\n250 b\r\n",
		"554 5.7.1 a\r\rb\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		rep, err := readReply(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			return
		}
		if rep.Code < 200 || rep.Code > 599 {
			t.Fatalf("code %d accepted", rep.Code)
		}
		if n := strings.Count(rep.Text, "\n") + 1; n > maxReplyLines {
			t.Fatalf("%d lines accepted", n)
		}
		if len(rep.Text) > maxReplyBytes {
			t.Fatalf("%d bytes accepted", len(rep.Text))
		}
		if rep.Enhanced != "" && (!validEnhanced(rep.Code, rep.Enhanced) || rep.Enhanced[0] != byte('0'+rep.Code/100)) {
			t.Fatalf("enhanced code %q with reply code %d", rep.Enhanced, rep.Code)
		}
		wire := formatReply(rep)
		again, err := readReply(bufio.NewReader(strings.NewReader(wire)))
		if err != nil {
			// Writing the enhanced code on every line may push a line over
			// the limit; anything else is a bug.
			if strings.Contains(err.Error(), "longer than") {
				return
			}
			t.Fatalf("re-reading %q: %v (from %+v)", wire, err, rep)
		}
		if again != rep {
			t.Fatalf("round trip changed the reply:\n first %+v\nsecond %+v\n  wire %q", rep, again, wire)
		}
	})
}
