package bounce

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// checkReport holds the properties every Parse result has, whatever the
// input: a known kind, addresses and texts that are valid UTF-8 without
// CR, LF or other controls, bounded counts.
func checkReport(t *testing.T, r *Report) {
	t.Helper()
	switch r.Kind {
	case "dsn", "arf", "plain":
	default:
		t.Fatalf("Kind %q", r.Kind)
	}
	if len(r.Recipients) == 0 || len(r.Recipients) > maxRecipients {
		t.Fatalf("%d recipients", len(r.Recipients))
	}
	safe := func(what, s string) {
		if !safeText(s) {
			t.Fatalf("%s %q: invalid UTF-8 or a control character", what, s)
		}
	}
	addr := func(what, s string) {
		safe(what, s)
		if s != "" && (!strings.Contains(s, "@") || strings.ContainsAny(s, " <>") || len(s) > maxAddressLen) {
			t.Fatalf("%s %q is not an address", what, s)
		}
	}
	safe("ReportingMTA", r.ReportingMTA)
	safe("Feedback", r.Feedback)
	for _, rc := range r.Recipients {
		addr("Address", rc.Address)
		safe("Action", rc.Action)
		safe("DiagnosticCode", rc.DiagnosticCode)
		safe("RemoteMTA", rc.RemoteMTA)
		if rc.Status != "" {
			if _, ok := parseStatus(rc.Status); !ok {
				t.Fatalf("Status %q", rc.Status)
			}
		}
		if rc.SMTPCode != 0 && (rc.SMTPCode < 200 || rc.SMTPCode > 599) {
			t.Fatalf("SMTPCode %d", rc.SMTPCode)
		}
		if len(rc.DiagnosticCode) > maxFieldLen {
			t.Fatalf("DiagnosticCode of %d octets", len(rc.DiagnosticCode))
		}
	}
	safe("MessageID", r.Original.MessageID)
	addr("ReturnPath", r.Original.ReturnPath)
	addr("From", r.Original.From)
	for _, a := range r.Original.To {
		addr("To", a)
	}
}

// FuzzParse: on any input Parse does not panic, answers within a bound,
// and what it returns passes checkReport.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.eml"))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("Content-Type: multipart/report; boundary=x\n\n--x\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; a\n\nFinal-Recipient: rfc822; \x00@\xff\nAction: failed\n--x--\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		start := time.Now()
		r, err := Parse(raw)
		// Milliseconds for any input; the bound is loose for busy machines
		// and catches only a slip to quadratic work, which takes minutes.
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("Parse of %d octets took %v", len(raw), d)
		}
		if err != nil {
			if r != nil {
				t.Fatalf("Parse returned a report and an error %v", err)
			}
			return
		}
		checkReport(t, r)
	})
}

// fuzzAlphabet maps fuzz bytes to a small alphabet, so that generated
// field values are valid and the round trip can be checked.
func fuzzWord(s, alphabet string, maxLen int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < maxLen; i++ {
		b.WriteByte(alphabet[int(s[i])%len(alphabet)])
	}
	if b.Len() == 0 {
		return string(alphabet[0])
	}
	return b.String()
}

const (
	localChars  = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-_=!#$%&'*/?^`{|}~"
	domainChars = "abcdefghijklmnopqrstuvwxyz0123456789"
	textChars   = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;()[]<>@!?'\"-_/=+#*%"
)

// genAddress makes a valid dot-atom address (RFC 5322 3.4.1) from fuzz
// input: atext characters, a dot in the middle when long enough.
func genAddress(local, domain string) string {
	l := fuzzWord(local, localChars, 40)
	if len(l) > 2 {
		l = l[:len(l)/2] + "." + l[len(l)/2:]
	}
	return l + "@" + fuzzWord(domain, domainChars, 30) + ".example"
}

// fold folds a field value RFC 5322 2.2.3 style at spaces, every 60
// octets or so, as MTAs do with long Diagnostic-Code fields.
func fold(v string) string {
	var b strings.Builder
	n := 0
	for i, w := range strings.Split(v, " ") {
		if i > 0 {
			if n > 60 {
				b.WriteString("\r\n    ")
				n = 0
			} else {
				b.WriteByte(' ')
			}
		}
		b.WriteString(w)
		n += len(w) + 1
	}
	return b.String()
}

// FuzzDSNRoundTrip: a DSN built from generated field values parses back
// to those values.
func FuzzDSNRoundTrip(f *testing.F) {
	f.Add("nobody", "example", "mx", uint8(0), uint16(511), "Recipient address rejected: User unknown", true, uint8(2))
	f.Add("a.b+c", "xn--bcher-kva", "relay", uint8(1), uint16(422), "mailbox full", false, uint8(1))
	f.Fuzz(func(t *testing.T, local, domain, mta string, actionIdx uint8, st uint16, diag string, orcpt bool, nrcpt uint8) {
		actions := []string{"failed", "delayed", "delivered", "relayed", "expanded"}
		action := actions[int(actionIdx)%len(actions)]
		class := []int{2, 4, 5}[int(st)%3]
		subject, detail := int(st/3)%8, int(st/24)%30
		status := fmt.Sprintf("%d.%d.%d", class, subject, detail)
		code := class*100 + int(st)%50
		addr := genAddress(local, domain)
		reporting := fuzzWord(mta, domainChars, 30) + ".example.net"
		text := strings.Join(strings.Fields(fuzzWord(diag, textChars, 300)), " ")
		wantDiag := strings.TrimSpace(fmt.Sprintf("%d %s %s", code, status, text))
		n := int(nrcpt%4) + 1

		var ds strings.Builder
		fmt.Fprintf(&ds, "Reporting-MTA: dns; %s\r\nArrival-Date: Mon, 7 Dec 2026 10:00:00 +0000\r\n", reporting)
		for i := range n {
			a := fmt.Sprintf("%d%s", i, addr)
			ds.WriteString("\r\n")
			if orcpt {
				fmt.Fprintf(&ds, "Original-Recipient: rfc822;%s\r\n", a)
			}
			fmt.Fprintf(&ds, "Final-Recipient: rfc822; %s\r\nAction: %s\r\nStatus: %s\r\nRemote-MTA: dns; mx.%s\r\nDiagnostic-Code: smtp; %s\r\n",
				a, strings.ToUpper(action[:1])+action[1:], status, reporting, fold(wantDiag))
		}
		raw := "From: MAILER-DAEMON@" + reporting + "\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: multipart/report; report-type=delivery-status; boundary=\"=_b\"\r\n\r\n" +
			"--=_b\r\nContent-Type: text/plain\r\n\r\nFailed.\r\n" +
			"--=_b\r\nContent-Type: message/delivery-status\r\n\r\n" + ds.String() +
			"\r\n--=_b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <id-1@mailferry.example>\r\nTo: " + "0" + addr + "\r\n" +
			"\r\n--=_b--\r\n"
		r, err := Parse([]byte(raw))
		if err != nil {
			t.Fatalf("Parse: %v\n%s", err, raw)
		}
		checkReport(t, r)
		if r.Kind != "dsn" || r.ReportingMTA != reporting || len(r.Recipients) != n || r.Original.MessageID != "id-1@mailferry.example" {
			t.Fatalf("report = %+v\n%s", r, raw)
		}
		for i, rc := range r.Recipients {
			want := ReportRecipient{
				Address: fmt.Sprintf("%d%s", i, addr), Action: action, Status: status,
				DiagnosticCode: wantDiag, SMTPCode: code, RemoteMTA: "mx." + reporting,
			}
			if rc != want {
				t.Fatalf("recipient %d = %+v; want %+v\n%s", i, rc, want, raw)
			}
		}
	})
}

// FuzzARFRoundTrip: an ARF report built from generated values parses back
// to them; without Original-Rcpt-To, the recipient is the embedded To.
func FuzzARFRoundTrip(f *testing.F) {
	f.Add("abuse", "reader", "isp", "b-xyz", true, false)
	f.Add("fraud", "a.b", "example", "bounce", false, true)
	f.Fuzz(func(t *testing.T, ftype, local, domain, rp string, withRcpt, headersOnly bool) {
		feedback := fuzzWord(ftype, "abcdefghijklmnopqrstuvwxyz-", 20)
		addr := genAddress(local, domain)
		returnPath := fuzzWord(rp, domainChars+"-", 40) + "@bounces.example"
		var fields strings.Builder
		fmt.Fprintf(&fields, "Feedback-Type: %s\r\nUser-Agent: gen/1\r\nVersion: 1\r\nOriginal-Mail-From: <%s>\r\n", strings.ToUpper(feedback), returnPath)
		if withRcpt {
			fmt.Fprintf(&fields, "Original-Rcpt-To: <%s>\r\n", addr)
		}
		fields.WriteString("Reporting-MTA: dns; fbl.example.org\r\n")
		origType := "message/rfc822"
		if headersOnly {
			origType = "text/rfc822-headers"
		}
		raw := "From: fbl@example.org\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: multipart/report; report-type=feedback-report; boundary=\"b\"\r\n\r\n" +
			"--b\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n" +
			"--b\r\nContent-Type: message/feedback-report\r\n\r\n" + fields.String() +
			"\r\n--b\r\nContent-Type: " + origType + "\r\n\r\nMessage-ID: <m@mailferry.example>\r\nFrom: news@shop.example\r\nTo: Reader <" + addr + ">\r\n\r\nbody\r\n" +
			"--b--\r\n"
		r, err := Parse([]byte(raw))
		if err != nil {
			t.Fatalf("Parse: %v\n%s", err, raw)
		}
		checkReport(t, r)
		want := ReportRecipient{Address: addr, Action: "complained"}
		if r.Kind != "arf" || r.Feedback != feedback || len(r.Recipients) != 1 || r.Recipients[0] != want ||
			r.Original.ReturnPath != returnPath || r.Original.MessageID != "m@mailferry.example" || r.ReportingMTA != "fbl.example.org" {
			t.Fatalf("report = %+v; want feedback %q, recipient %+v, return path %q\n%s", r, feedback, want, returnPath, raw)
		}
	})
}

func TestParseLimits(t *testing.T) {
	bomb := func(parts int) []byte {
		var b strings.Builder
		b.WriteString("Content-Type: multipart/report; report-type=delivery-status; boundary=z\r\n\r\n")
		for range parts {
			b.WriteString("--z\r\nContent-Type: text/plain\r\n\r\nx\r\n")
		}
		b.WriteString("--z--\r\n")
		return []byte(b.String())
	}
	nested := func(depth int) []byte {
		var b strings.Builder
		for i := range depth {
			fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=n%d\r\n\r\n--n%d\r\n", i, i)
		}
		b.WriteString("Content-Type: text/plain\r\n\r\nx\r\n")
		return []byte(b.String())
	}
	manyGroups := func(n int) []byte {
		var b strings.Builder
		b.WriteString("Content-Type: multipart/report; report-type=delivery-status; boundary=z\r\n\r\n--z\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n")
		for i := range n {
			fmt.Fprintf(&b, "\r\nFinal-Recipient: rfc822; u%d@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n", i)
		}
		b.WriteString("--z--\r\n")
		return []byte(b.String())
	}
	for _, tc := range []struct {
		name string
		raw  []byte
	}{
		{"report bomb", bomb(20000)},
		{"nesting", nested(50)},
		{"huge header", []byte("Subject: " + strings.Repeat("a", maxHeaderSize) + "\r\n\r\nbody")},
		{"too large", make([]byte, MaxReportSize+1)},
		{"recipient bomb", manyGroups(maxRecipients + 5)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			r, err := Parse(tc.raw)
			if !errors.Is(err, ErrTooComplex) {
				t.Fatalf("Parse = %+v, %v; want ErrTooComplex", r, err)
			}
			// Refused early, not after reading the whole bomb; loose for
			// busy machines under -race.
			if d := time.Since(start); d > 10*time.Second {
				t.Fatalf("took %v", d)
			}
		})
	}
}

// TestParseBigInputsFast: the largest input Parse takes, shaped to make
// each format work hardest, is answered well within the inbound
// listener's patience.
// bigInputs are inputs of MaxReportSize shaped to make each format work
// hardest.
func bigInputs() []struct{ name, header, body string } {
	return []struct{ name, header, body string }{
		{"plain garbage", "", strings.Repeat("qwerty uiop asdf ghjkl\n", MaxReportSize/24)},
		{"postfix lines", "", "This is the mail system at host x.\n" + strings.Repeat("<a@example.com>: host x said: 550 user unknown\n", MaxReportSize/50)},
		{"gmail list", "", "Delivery to the following recipient failed permanently:\n\n" + strings.Repeat("     a@example.com\n", MaxReportSize/20)},
		{"exim list", "", "This message was created automatically by mail delivery software.\nThe following address(es) failed:\n\n" + strings.Repeat("  a@example.com\n    x\n", MaxReportSize/30)},
		{"exchange list", "", "Delivery has failed to these recipients or groups:\n\nDiagnostic information for administrators:\n" + strings.Repeat("a@example.com\nRemote Server returned '550 5.1.1 x'\n", MaxReportSize/60)},
		{"huge diagnostic", "Content-Type: multipart/report; report-type=delivery-status; boundary=z\n",
			"--z\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x\n\nFinal-Recipient: rfc822; a@example.com\nAction: failed\nDiagnostic-Code: smtp; " + strings.Repeat("x ", MaxReportSize/3) + "\n--z--\n"},
		{"long lines", "Content-Type: multipart/report; report-type=delivery-status; boundary=z\n",
			"--z\nContent-Type: text/plain\n\n" + strings.Repeat("x", MaxReportSize-200) + "\n--z--\n"},
	}
}

func bigRaw(header, body string) []byte {
	raw := []byte("Subject: x\n" + header + "\n" + body)
	if len(raw) > MaxReportSize {
		raw = raw[:MaxReportSize]
	}
	return raw
}

// TestParseBigInputs: the largest inputs give clean reports or errors.
// How fast is BenchmarkParseBigInputs' business (some 50 ms each); a slip
// to quadratic work would run into the test timeout.
func TestParseBigInputs(t *testing.T) {
	for _, tc := range bigInputs() {
		t.Run(tc.name, func(t *testing.T) {
			if r, err := Parse(bigRaw(tc.header, tc.body)); err == nil {
				checkReport(t, r)
			}
		})
	}
}

func BenchmarkParseBigInputs(b *testing.B) {
	for _, tc := range bigInputs() {
		raw := bigRaw(tc.header, tc.body)
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				_, _ = Parse(raw)
			}
		})
	}
}

func TestParseMalformed(t *testing.T) {
	for _, tc := range []struct {
		name string
		raw  string
		ok   bool // a report despite the damage
	}{
		{"empty", "", false},
		{"header only", "Subject: x", false},
		{"no boundary param", "Content-Type: multipart/report; report-type=delivery-status\r\n\r\nReporting-MTA: dns; x\r\n", false},
		{"unterminated multipart", "Content-Type: multipart/report; report-type=delivery-status; boundary=q\r\n\r\n--q\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; a@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n", true},
		{"bad content-type params", "Content-Type: multipart/report; report-type=delivery-status; boundary=q; x=\"\r\n\r\n--q\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; a@example.com\r\nAction: failed\r\n--q--\r\n", false},
		{"base64 delivery status", "Content-Type: multipart/report; report-type=delivery-status; boundary=q\r\n\r\n--q\r\nContent-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\nUmVwb3J0aW5nLU1UQTogZG5zOyBteC5leGFtcGxlDQoNCkZpbmFsLVJlY2lwaWVudDogcmZjODIyOyBhQGV4YW1wbGUuY29tDQpBY3Rpb246IGZhaWxlZA0KU3RhdHVzOiA1LjEuMQ0K\r\n--q--\r\n", true},
		{"no per-message group", "Content-Type: multipart/report; report-type=delivery-status; boundary=q\r\n\r\n--q\r\nContent-Type: message/delivery-status\r\n\r\nFinal-Recipient: rfc822; a@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n--q--\r\n", true},
		{"status without recipients", "Content-Type: multipart/report; report-type=delivery-status; boundary=q\r\n\r\n--q\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n--q--\r\n", false},
		{"address with CR in utf-8 escape", "Content-Type: multipart/report; report-type=delivery-status; boundary=q\r\n\r\n--q\r\nContent-Type: message/global-delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: utf-8; a\\x{D}b@example.com\r\nAction: failed\r\n--q--\r\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Parse([]byte(tc.raw))
			if (err == nil) != tc.ok {
				t.Fatalf("Parse = %+v, %v; want ok=%v", r, err, tc.ok)
			}
			if err == nil {
				checkReport(t, r)
				if !utf8.ValidString(r.Recipients[0].Address) {
					t.Fatal("invalid UTF-8")
				}
			}
		})
	}
}
