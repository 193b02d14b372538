package bounce

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type verdictCase struct {
	name     string
	code     int
	enhanced string
	text     string
	class    Class
	typ      Type
	suppress bool
}

// Real-world reply lines (as providers and MTAs document them) and the
// verdicts they get.
var classifyCases = []verdictCase{
	// Enhanced codes decide when they are specific.
	{"gmail no such user", 550, "5.1.1", "The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces.", InvalidRecipient, Hard, true},
	{"postfix virtual table", 550, "5.1.1", "<nobody@example.com>: Recipient address rejected: User unknown in virtual mailbox table", InvalidRecipient, Hard, true},
	{"4.1.1 transient", 450, "4.1.1", "<x@example.com>: Recipient address rejected: unverified address: host mx.example.com said: 550 no such user", InvalidRecipient, Soft, false},
	{"gmail disabled", 550, "5.2.1", "The email account that you tried to reach is disabled.", InvalidRecipient, Hard, true},
	{"gmail over quota 552", 552, "5.2.2", "The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaPerm", MailboxFull, Soft, false},
	{"gmail over quota 452", 452, "4.2.2", "The email account that you tried to reach is over quota.", MailboxFull, Soft, false},
	{"gmail size", 552, "5.3.4", "Your message exceeded Google's message size limits.", MessageTooLarge, Hard, false},
	{"5.2.3 size", 552, "5.2.3", "Message length exceeds administrative limit", MessageTooLarge, Hard, false},
	{"our SIZE check", 0, "5.3.4", "message of 30000000 bytes exceeds the server's SIZE 10240000 (RFC 1870)", MessageTooLarge, Hard, false},
	{"null MX", 0, "5.1.10", "recipient domain has a null MX (RFC 7505)", DNSFailure, Hard, true},
	{"nxdomain local", 0, "5.1.2", "lookup nowhere.invalid: no such host", DNSFailure, Hard, true},
	{"dns temp", 0, "4.4.3", "lookup example.com on 127.0.0.1:53: server misbehaving", DNSFailure, Soft, false},
	{"no route", 0, "5.4.4", "no MX and no A/AAAA records", DNSFailure, Hard, false},
	{"no answer", 0, "4.4.1", "dial tcp 127.0.0.2:25: connect: connection refused", ConnectionFailure, Soft, false},
	{"bad connection", 0, "4.4.2", "connection lost after 3 transactions", ConnectionFailure, Soft, false},
	{"expired 4.4.7", 0, "4.4.7", "delivery time expired after 5 days; last: 451 4.3.0 try later", Expired, Soft, false},
	{"expired 5.4.7", 0, "5.4.7", "gave up", Expired, Soft, false},
	{"gmail unauthenticated", 550, "5.7.26", "This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM.", AuthFailure, Hard, false},
	{"spf 5.7.23", 550, "5.7.23", "SPF validation failed", AuthFailure, Hard, false},
	{"dkim 5.7.20", 550, "5.7.20", "No passing DKIM signature found", AuthFailure, Hard, false},
	{"gmail ptr", 550, "5.7.25", "The IP address sending this message does not have a PTR record setup.", AuthFailure, Hard, false},
	{"requiretls", 0, "5.7.30", "REQUIRETLS support required", TLSFailure, Hard, false},
	{"encryption needed", 530, "5.7.10", "Encryption needed", TLSFailure, Hard, false},
	{"protocol 5.5.2", 500, "5.5.2", "Syntax error, command unrecognized", ProtocolError, Hard, false},
	{"too many rcpts", 452, "4.5.3", "Too many recipients", ProtocolError, Soft, false},
	{"smtputf8", 0, "5.6.7", "message needs SMTPUTF8 (RFC 6531), server does not offer it", ProtocolError, Hard, false},
	{"content 5.6.0", 554, "5.6.0", "Message contains invalid header", ContentRejected, Hard, false},
	{"integrity", 554, "5.7.7", "message integrity failure", ContentRejected, Hard, false},
	{"congestion", 452, "4.4.5", "Insufficient system resources", RateLimited, Soft, false},
	{"mail flood", 550, "5.7.28", "Mail flood detected", SpamBlock, Hard, false},
	{"rrvs owner changed", 550, "5.7.17", "Mailbox owner has changed", InvalidRecipient, Hard, true},
	{"sender syntax", 553, "5.1.7", "bad sender address syntax", ProtocolError, Hard, false},
	{"sender domain", 553, "5.1.8", "<bounce@example.org>: Sender address rejected: Domain not found", Policy, Hard, false},
	{"sender null MX", 550, "5.7.27", "Sender address has null MX", Policy, Hard, false},

	// Providers whose code misleads.
	{"m365 recipient not found 5.1.10", 550, "5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", InvalidRecipient, Hard, true},
	{"m365 DBEB", 550, "5.4.1", "Recipient address rejected: Access denied. AS(201806281) [BN8NAM12FT052.eop-nam12.prod.protection.outlook.com]", InvalidRecipient, Hard, true},
	{"m365 concurrent", 421, "4.3.2", "The maximum number of concurrent server connections has exceeded a limit, closing transmission channel", RateLimited, Soft, false},
	{"yahoo policy 5.7.9", 554, "5.7.9", "Message not accepted for policy reasons. See https://postmaster.yahooinc.com/error-codes", Policy, Hard, false},
	{"gmail receiving rate", 450, "4.2.1", "The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered.", RateLimited, Soft, false},
	{"gmail 4.7.28", 421, "4.7.28", "Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited.", RateLimited, Soft, false},
	{"local dkim signing", 0, "4.7.0", "dkim signing: no key for example.com", Other, Soft, false},

	// Generic codes: the text decides.
	{"gmail unsolicited multi-line", 550, "5.7.1", "[192.0.2.1] Our system has detected that this message is\n550-5.7.1 likely unsolicited mail. To reduce the amount of spam sent to Gmail,\n550-5.7.1 this message has been blocked.", SpamBlock, Hard, false},
	{"spamhaus", 554, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.1", SpamBlock, Hard, false},
	{"spamcop", 550, "5.7.1", "Mail from 192.0.2.1 refused, see http://www.spamcop.net/bl.shtml?192.0.2.1", SpamBlock, Hard, false},
	{"barracuda no enhanced", 554, "", "Service unavailable; Client host [192.0.2.1] blocked using Barracuda Reputation; http://www.barracudanetworks.com/reputation/?r=1&ip=192.0.2.1", SpamBlock, Hard, false},
	{"m365 banned ip", 550, "5.7.606", "Access denied, banned sending IP [192.0.2.1]. To request removal from this list please visit https://sender.office.com/ and follow the directions.", SpamBlock, Hard, false},
	{"outlook S3150", 550, "5.7.1", "Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).", SpamBlock, Hard, false},
	{"m365 traffic not accepted", 550, "5.7.708", "Service unavailable. Access denied, traffic not accepted from this IP.", SpamBlock, Hard, false},
	{"yahoo TSS04", 421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", RateLimited, Soft, false},
	{"yahoo TSS09", 553, "5.7.2", "[TSS09] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT succeed.", SpamBlock, Hard, false},
	{"yahoo TSS09 generic code", 553, "5.7.0", "[TSS09] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT succeed.", SpamBlock, Hard, false},
	{"yahoo no account", 554, "", "delivery error: dd This user doesn't have a yahoo.com account (nobody@yahoo.com) [0] - mta1234.mail.ne1.yahoo.com", InvalidRecipient, Hard, true},
	{"yahoo mailbox disabled", 554, "", "delivery error: dd Sorry your message to x@yahoo.com cannot be delivered. This mailbox is disabled (554.30).", InvalidRecipient, Hard, true},
	{"yahoo size", 554, "", "30 Sorry, your message size exceeds 41943040 bytes.", MessageTooLarge, Hard, false},
	{"m365 server busy", 451, "4.7.500", "Server busy. Please try again later from [192.0.2.1]. (AS761)", RateLimited, Soft, false},
	{"m365 rate ip reputation", 421, "4.7.650", "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.", RateLimited, Soft, false},
	{"hotmail mailbox unavailable", 550, "5.5.0", "Requested action not taken: mailbox unavailable (2107232).", InvalidRecipient, Hard, true},
	{"550 user unknown no enhanced", 550, "", "<nobody@example.com>... User unknown", InvalidRecipient, Hard, true},
	{"550 no such user", 550, "", "No such user here", InvalidRecipient, Hard, true},
	{"qmail no mailbox", 0, "5.1.1", "Sorry, no mailbox here by that name. (#5.1.1)", InvalidRecipient, Hard, true},
	{"quota no enhanced", 552, "", "Requested mail action aborted: exceeded storage allocation", MailboxFull, Soft, false},
	{"mailbox full 5.0.0", 550, "5.0.0", "mailbox full", MailboxFull, Soft, false},
	{"greylisted", 450, "4.2.0", "<x@example.com>: Recipient address rejected: Greylisted, see https://postgrey.schweikert.ch/help/example.com.html", Policy, Soft, false},
	{"relay denied", 554, "5.7.1", "<x@example.net>: Relay access denied", Policy, Hard, false},
	{"rate limit 4.7.0 text", 450, "4.7.0", "Rate limit exceeded, try again later", RateLimited, Soft, false},
	{"too many connections", 421, "", "Too many connections from your IP", RateLimited, Soft, false},
	{"starttls required", 530, "5.7.0", "Must issue a STARTTLS command first.", TLSFailure, Hard, false},
	{"local tls required", 0, "4.7.0", "TLS required: server does not offer STARTTLS", TLSFailure, Soft, false},
	{"cert", 0, "4.4.2", "TLS handshake: tls: failed to verify certificate: x509: certificate signed by unknown authority", ConnectionFailure, Soft, false},
	{"cert generic", 0, "4.0.0", "TLS handshake: tls: failed to verify certificate: x509: certificate signed by unknown authority", TLSFailure, Soft, false},
	{"dmarc 5.7.1", 550, "5.7.1", "Email rejected per DMARC policy for example.org", AuthFailure, Hard, false},
	{"virus", 554, "5.7.1", "Message rejected: virus found (Eicar-Test-Signature)", ContentRejected, Hard, false},
	{"gmail message-id", 550, "5.7.1", "[192.0.2.1] Messages missing a valid Message-ID header are not accepted.", ContentRejected, Hard, false},
	{"suppression list", 550, "5.1.0", "Recipient is on the suppression list of this provider", Suppressed, Hard, true},
	{"expired text", 0, "", "Message has been in the queue too long", Expired, Soft, false},
	{"exim retry timeout", 0, "5.0.0", "retry timeout exceeded", Expired, Soft, false},
	{"postfix host not found", 0, "5.0.0", "Host or domain name not found. Name service error for name=nowhere.invalid type=MX: Host not found", DNSFailure, Hard, false},
	{"postfix connection refused", 0, "4.0.0", "delivery temporarily suspended: connect to mx.example.com[192.0.2.1]:25: Connection refused", ConnectionFailure, Soft, false},
	{"postfix bad sequence", 503, "5.5.1", "Error: need RCPT command", ProtocolError, Hard, false},
	{"501 syntax no enhanced", 501, "", "Syntax error in parameters or arguments", ProtocolError, Hard, false},
	{"smtp; prefix in text", 0, "", "smtp; 550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown", InvalidRecipient, Hard, true},
	{"code in text only", 0, "", "550 5.2.2 mailbox full", MailboxFull, Soft, false},

	// More provider and MTA texts.
	{"gmail too quickly", 450, "4.2.1", "The user you are trying to contact is receiving mail too quickly. Please resend your message at a later time.", RateLimited, Soft, false},
	{"aol will not accept", 521, "5.2.1", ": AOL will not accept delivery of this message.", Policy, Hard, false},
	{"postfix unknown client hostname", 450, "4.7.1", "Client host rejected: cannot find your hostname, [192.0.2.1]", AuthFailure, Soft, false},
	{"gmail suspicious", 421, "4.7.0", "[192.0.2.1] Our system has detected that this message is suspicious due to the nature of the content and/or the links within.", SpamBlock, Soft, false},
	{"gmail low reputation", 550, "5.7.1", "[192.0.2.1] Gmail has detected that this message is likely suspicious due to the very low reputation of the sending domain.", SpamBlock, Hard, false},
	{"gmail security issue", 552, "5.7.0", "This message was blocked because its content presents a potential security issue.", ContentRejected, Hard, false},
	{"gmail missing from", 550, "5.7.1", "Messages missing a valid address in From: header, or having no From: header, are not accepted.", ContentRejected, Hard, false},
	{"exim failing long", 0, "", "all hosts for 'example.com' have been failing for a long time (and retry time not reached)", Expired, Soft, false},
	{"exim verification failed", 550, "", "Verification failed for <bounce@example.org>", Policy, Hard, false},
	{"m365 dmarc", 550, "5.7.509", "Access denied, sending domain example.org does not pass DMARC verification and has a DMARC policy of reject.", AuthFailure, Hard, false},
	{"m365 expired 5.4.316", 550, "5.4.316", "Message expired, connection refused(Socket error code 10061)", Expired, Soft, false},
	{"m365 relay denied", 550, "5.7.64", "TenantAttribution; Relay Access Denied", Policy, Hard, false},
	{"gmx block listed", 554, "", "gmx.net (mxgmx1) Nemesis ESMTP Service not available\n554-No SMTP service\n554-IP address is block listed.", SpamBlock, Hard, false},
	{"yahoo BL21", 553, "5.7.1", "[BL21] Connections will not be accepted from 192.0.2.1, because the ip is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes", SpamBlock, Hard, false},
	{"comcast not our customer", 550, "5.1.1", "Not our Customer", InvalidRecipient, Hard, true},
	{"mimecast invalid", 550, "", "Invalid Recipient - https://community.mimecast.com/docs/DOC-1369#550", InvalidRecipient, Hard, true},
	{"exim unrouteable", 550, "", "Unrouteable address", InvalidRecipient, Hard, true},
	{"postfix domain not found 4.1.2", 450, "4.1.2", "<x@nowhere.example>: Recipient address rejected: Domain not found", DNSFailure, Soft, false},
	{"media not supported", 554, "5.6.1", "Body type not supported by Remote Host", ContentRejected, Hard, false},
	{"gmail daily quota", 550, "5.4.5", "Daily sending quota exceeded.", RateLimited, Soft, false},

	// Code-only fallback.
	{"550 nothing", 550, "", "", Other, Hard, false},
	{"451 nothing", 451, "", "Local error in processing", Other, Soft, false},
	{"421 bare", 421, "", "mx.example.com Service not available, closing transmission channel", ConnectionFailure, Soft, false},
	{"5.0.0 nothing", 550, "5.0.0", "", Other, Hard, false},
	{"4.x.x without reply", 0, "4.3.0", "read message: unexpected", Other, Soft, false},
	{"no code at all", 0, "", "", Other, Soft, false},
	{"554 bare", 554, "", "Transaction failed", Policy, Hard, false},
}

func TestClassify(t *testing.T) {
	r := DefaultRules()
	for _, tc := range classifyCases {
		t.Run(tc.name, func(t *testing.T) {
			got := r.Classify(tc.code, tc.enhanced, tc.text)
			want := Verdict{Type: tc.typ, Class: tc.class, Suppress: tc.suppress}
			if got != want {
				t.Fatalf("Classify(%d, %q, %q) = %+v; want %+v (rule %s)", tc.code, tc.enhanced, tc.text, got, want, r.which(tc.code, tc.enhanced, tc.text))
			}
		})
	}
}

// which names the rule that decides, for failure messages.
func (r *Rules) which(code int, enhanced, text string) string {
	in := newInput(code, enhanced, text)
	for i := range r.list {
		if r.list[i].match(&in) {
			return r.list[i].where
		}
	}
	return "none"
}

func TestEveryClassReachable(t *testing.T) {
	seen := map[Class]bool{}
	for _, tc := range classifyCases {
		seen[tc.class] = true
	}
	for _, c := range Classes() {
		if !c.Valid() {
			t.Errorf("Classes() lists %q, which is not Valid", c)
		}
		if !seen[c] {
			t.Errorf("class %q: no case in classifyCases reaches it", c)
		}
	}
	if Class("bogus").Valid() || Class("").Valid() || Type("").Valid() || !Hard.Valid() || !Soft.Valid() {
		t.Error("Valid accepts something it should not, or refuses Hard/Soft")
	}
}

func TestNilRules(t *testing.T) {
	var r *Rules
	if got := r.Classify(550, "5.1.1", ""); got.Class != InvalidRecipient {
		t.Fatalf("nil Rules: %+v", got)
	}
}

func TestEmbeddedRulesNoRepeats(t *testing.T) {
	// A rule with the same conditions as an earlier one never matches.
	seen := map[string]string{}
	for _, rl := range DefaultRules().list {
		key := fmt.Sprint(rl.reply, rl.status)
		if rl.text != nil {
			key += rl.text.String()
		}
		if prev, ok := seen[key]; ok {
			t.Errorf("%s repeats the conditions of %s", rl.where, prev)
		}
		seen[key] = rl.where
	}
}

func TestLoadRules(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.rules", `# operator rules
reply 550 text /mailbox quarantined/i   mailbox_full hard suppress   # our relay partner
status 5.1.1 text /example-isp/i  spam_block
text /a\/b path/  policy soft
`)
	r, err := LoadRules(context.Background(), good)
	if err != nil {
		t.Fatal(err)
	}
	if r.Len() != 3+DefaultRules().Len() {
		t.Fatalf("Len = %d; want 3 + %d", r.Len(), DefaultRules().Len())
	}
	for _, tc := range []verdictCase{
		{"operator rule with type and suppress", 550, "", "Mailbox QUARANTINED by admin", MailboxFull, Hard, true},
		{"operator rule before the embedded code rule", 550, "5.1.1", "rejected by example-isp filter", SpamBlock, Hard, false},
		{"slash in regexp", 550, "", "see a/b path", Policy, Soft, false},
		{"embedded still apply", 550, "5.1.1", "user unknown", InvalidRecipient, Hard, true},
		{"operator suppress not on 4xx", 450, "", "mailbox quarantined", Other, Soft, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := r.Classify(tc.code, tc.enhanced, tc.text)
			if want := (Verdict{Type: tc.typ, Class: tc.class, Suppress: tc.suppress}); got != want {
				t.Fatalf("Classify(%d, %q, %q) = %+v; want %+v", tc.code, tc.enhanced, tc.text, got, want)
			}
		})
	}

	for _, tc := range []struct{ name, content, want string }{
		{"unknown class", "text /x/ nonsense\n", "bad.rules:1: unknown class \"nonsense\""},
		{"no condition", "\n\ninvalid_recipient\n", "bad.rules:3: \"invalid_recipient\": a rule starts with a condition"},
		{"bad regexp", "# c\ntext /a(/ policy\n", "bad.rules:2: regexp:"},
		{"unclosed regexp", "text /abc policy\n", "bad.rules:1: regexp without its closing '/'"},
		{"bad flag", "text /abc/g policy\n", "bad.rules:1: regexp flags \"g\""},
		{"bad status", "status 5.1 policy\n", "bad.rules:1: status pattern \"5.1\""},
		{"status class 3", "status 3.1.1 policy\n", "bad.rules:1: status pattern \"3.1.1\""},
		{"bad reply", "reply 5x policy\n", "bad.rules:1: reply pattern \"5x\""},
		{"no class", "reply 550\n", "bad.rules:1: no class"},
		{"junk after", "reply 550 policy hard maybe\n", "bad.rules:1: unexpected \"maybe\""},
		{"type twice", "reply 550 policy hard soft\n", "bad.rules:1: \"soft\" out of place"},
		{"condition after class", "reply 550 policy text /x/\n", "bad.rules:1: \"text\" after the class"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadRules(context.Background(), write("bad.rules", tc.content))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadRules(%q) = %v; want an error containing %q", tc.content, err, tc.want)
			}
		})
	}
	if _, err := LoadRules(context.Background(), filepath.Join(dir, "missing")); err == nil {
		t.Fatal("LoadRules of a missing file: no error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := LoadRules(ctx, good); err == nil {
		t.Fatal("LoadRules with a canceled context: no error")
	}
}

// FuzzClassify: whatever the input, Classify returns a valid class and
// type, never suppresses a transient failure, and suppresses every hard
// invalid_recipient.
func FuzzClassify(f *testing.F) {
	for _, tc := range classifyCases {
		f.Add(tc.code, tc.enhanced, tc.text)
	}
	f.Add(-1, "9.9.9", "\x00\xff")
	f.Add(1000, "5.1.1.1", "smtp;")
	r := DefaultRules()
	f.Fuzz(func(t *testing.T, code int, enhanced, text string) {
		v := r.Classify(code, enhanced, text)
		if !v.Class.Valid() || !v.Type.Valid() {
			t.Fatalf("Classify(%d, %q, %q) = %+v: invalid class or type", code, enhanced, text, v)
		}
		if code >= 400 && code < 500 && (v.Type != Soft || v.Suppress) {
			t.Fatalf("Classify(%d, %q, %q) = %+v: a 4xx reply must be soft and not suppress", code, enhanced, text, v)
		}
		if v.Type == Hard && v.Class == InvalidRecipient && !v.Suppress {
			t.Fatalf("Classify(%d, %q, %q) = %+v: hard invalid_recipient must suppress", code, enhanced, text, v)
		}
		if v.Suppress && v.Type != Hard {
			t.Fatalf("Classify(%d, %q, %q) = %+v: suppresses a soft failure", code, enhanced, text, v)
		}
	})
}

// Rules are shared by every relay worker and the inbound processor.
func TestClassifyConcurrent(t *testing.T) {
	r := DefaultRules()
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 200 {
				tc := classifyCases[(g*31+i)%len(classifyCases)]
				if v := r.Classify(tc.code, tc.enhanced, tc.text); v.Class != tc.class {
					t.Errorf("%s: %+v", tc.name, v)
					return
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
}
