package submission_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailferry/mailferry/store"
)

// TestSubmit: mail submitted over STARTTLS with AUTH PLAIN is recorded
// and queued like the API's, and the status endpoint answers for the id
// in the 250 reply.
func TestSubmit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHarness(t, harnessOptions{})
	c := h.login()
	msg := "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nBcc: hidden@example.org\r\nSubject: Hi\r\n\r\nHello Bob.\r\n"
	id, err := send(c, "bounces@example.com", []string{"bob@example.net", "hidden@example.org", "carol@Example.NET"}, msg)
	if err != nil {
		t.Fatalf("submit: %v", err)
	}

	view, err := h.store.GetMessage(ctx, tenant, id)
	if err != nil {
		t.Fatalf("GetMessage(%s): %v", id, err)
	}
	var rcpts []string
	for _, r := range view.Recipients {
		rcpts = append(rcpts, r.Email+"="+r.Status)
	}
	if got, want := strings.Join(rcpts, " "), "bob@example.net=queued hidden@example.org=queued carol@example.net=queued"; got != want {
		t.Errorf("recipients %s, want %s", got, want)
	}
	if view.Subject != "Hi" || !strings.HasSuffix(view.MessageID, "@"+hostname) {
		t.Errorf("subject %q, message id %q", view.Subject, view.MessageID)
	}

	var ingress, mailFrom, keyID string
	var body []byte
	if err := h.db.QueryRow(ctx, "SELECT ingress, mail_from, api_key_id, body FROM messages WHERE id = $1", id).
		Scan(&ingress, &mailFrom, &keyID, &body); err != nil {
		t.Fatal(err)
	}
	if ingress != "smtp" || mailFrom != "bounces@example.com" || keyID != h.keyID {
		t.Errorf("ingress %q, mail_from %q, api_key_id %q", ingress, mailFrom, keyID)
	}
	for _, want := range []string{"\r\nDate: ", "\r\nMessage-ID: <" + view.MessageID + ">\r\n", "\r\n\r\nHello Bob.\r\n"} {
		if !strings.Contains(string(body), want) { // RFC 6409 8.2, 8.3
			t.Errorf("stored body lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(string(body), "Bcc") || strings.Contains(string(body), "hidden@") {
		t.Errorf("stored body keeps the Bcc field:\n%s", body)
	}
	if d := h.depth(); d.Ready != 2 {
		t.Errorf("queue depth %+v, want 2 ready jobs (example.net, example.org)", d)
	}

	// The API's status endpoint knows the id, for this tenant only.
	if status, doc := h.getStatus(id.String(), h.secret); status != http.StatusOK || doc["status"] != "pending" {
		t.Errorf("GET /v1/messages/%s: %d %v", id, status, doc)
	}
	_, other, err := h.store.CreateAPIKey(ctx, "globex", []string{"example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if status, _ := h.getStatus(id.String(), other); status != http.StatusNotFound {
		t.Errorf("another tenant's GET: %d, want 404", status)
	}

	if n := h.counter("mailferry_messages_accepted_total", "ingress", "smtp"); n != 1 {
		t.Errorf("accepted{ingress=smtp} = %v, want 1", n)
	}
	if n := h.counter("mailferry_smtp_sessions_total", "listener", "submission"); n != 1 {
		t.Errorf("sessions{listener=submission} = %v, want 1", n)
	}

	// A second message on the same connection: the login stays.
	if _, err := send(c, "alice@example.com", []string{"bob@example.net"}, message("alice@example.com", "bob@example.net", "again")); err != nil {
		t.Fatalf("second message on the connection: %v", err)
	}
	if err := c.Quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}
	if n := h.messageCount(); n != 2 {
		t.Errorf("%d messages in the ledger, want 2", n)
	}
}

func (h *harness) getStatus(id, key string) (int, map[string]any) {
	h.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, h.api.URL+"/v1/messages/"+id, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := h.api.Client().Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var doc map[string]any
	_ = json.Unmarshal(b, &doc)
	return resp.StatusCode, doc
}

// TestExtensions: what EHLO offers before and after TLS on 587, and on 465.
func TestExtensions(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{maxMessageBytes: 50000, maxRecipients: 7})
	r := dialRaw(t, h.addr, nil)
	before := r.cmd("EHLO client.test")
	if !strings.Contains(before, "STARTTLS") || strings.Contains(before, "AUTH") {
		t.Errorf("EHLO before TLS must offer STARTTLS and no AUTH (RFC 4954 4):\n%s", before)
	}
	r.startTLS(h.tls)
	after := r.cmd("EHLO client.test")
	tlsDirect := dialRaw(t, h.addrTLS, h.tls).cmd("EHLO client.test")
	for name, ehlo := range map[string]string{"587 after STARTTLS": after, "465": tlsDirect} {
		for _, ext := range []string{"AUTH PLAIN LOGIN", "SIZE 50000", "8BITMIME", "SMTPUTF8", "PIPELINING", "ENHANCEDSTATUSCODES", "CHUNKING", "LIMITS RCPTMAX=7"} {
			if !strings.Contains(ehlo, "250-"+ext+"\n") && !strings.HasSuffix(ehlo, "250 "+ext) {
				t.Errorf("%s: EHLO does not offer %s:\n%s", name, ext, ehlo)
			}
		}
		if strings.Contains(ehlo, "STARTTLS") {
			t.Errorf("%s: STARTTLS offered under TLS:\n%s", name, ehlo)
		}
	}
}

// TestImplicitTLS: port 465 speaks TLS at once (RFC 8314 3.3); LOGIN works.
func TestImplicitTLS(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHarness(t, harnessOptions{})
	c, err := smtp.DialTLS(h.addrTLS, h.tls)
	if err != nil {
		t.Fatalf("dial 465: %v", err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewLoginClient(tenant, h.secret)); err != nil {
		t.Fatalf("AUTH LOGIN: %v", err)
	}
	id, err := send(c, "alice@example.com", []string{"bob@example.net"}, message("alice@example.com", "bob@example.net", "over 465"))
	if err != nil {
		t.Fatalf("submit over 465: %v", err)
	}
	if _, err := h.store.GetMessage(ctx, tenant, id); err != nil {
		t.Errorf("GetMessage: %v", err)
	}
	if n := h.counter("mailferry_smtp_sessions_total", "listener", "submissions"); n != 1 {
		t.Errorf("sessions{listener=submissions} = %v, want 1", n)
	}
	// Plaintext SMTP on 465 gets no SMTP reply, only a TLS alert or EOF.
	conn, err := net.Dial("tcp", h.addrTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "EHLO client.test\r\n")
	got, _ := io.ReadAll(conn)
	if strings.Contains(string(got), "250") || strings.Contains(string(got), "220") {
		t.Errorf("plaintext on 465 got an SMTP reply: %q", got)
	}
}

// TestAuthRequired: no transaction without AUTH (RFC 6409 4.3, RFC 4954 6).
func TestAuthRequired(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	c := h.client()
	err := c.Mail("alice@example.com", nil)
	wantSMTPError(t, "MAIL without AUTH", err, 530, smtp.EnhancedCode{5, 7, 0})

	// On 465 too, and RCPT or DATA cannot skip ahead.
	r := dialRaw(t, h.addrTLS, h.tls)
	r.cmd("EHLO client.test")
	if got := r.cmd("MAIL FROM:<alice@example.com>"); !strings.HasPrefix(got, "530 5.7.0 ") {
		t.Errorf("MAIL without AUTH on 465: %q", got)
	}
	if got := r.cmd("RCPT TO:<bob@example.net>"); !strings.HasPrefix(got, "5") {
		t.Errorf("RCPT without MAIL: %q", got)
	}
	if got := r.cmd("DATA"); !strings.HasPrefix(got, "5") {
		t.Errorf("DATA without MAIL: %q", got)
	}
	if n := h.messageCount(); n != 0 {
		t.Errorf("%d messages in the ledger", n)
	}
	if n := h.counter("mailferry_smtp_refusals_total", "reason", "auth_required"); n != 2 {
		t.Errorf("refusals{auth_required} = %v, want 2", n)
	}
}

// TestPlaintextAuthRefused: AUTH before STARTTLS gets 538 5.7.11 (RFC 4954
// 6), even with a good key, and does not log the client in.
func TestPlaintextAuthRefused(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	r := dialRaw(t, h.addr, nil)
	r.cmd("EHLO client.test")
	if got := r.cmd("AUTH PLAIN " + plainIR(tenant, h.secret)); !strings.HasPrefix(got, "538 5.7.11 ") {
		t.Errorf("AUTH PLAIN in plaintext: %q, want 538 5.7.11", got)
	}
	if got := r.cmd("AUTH LOGIN"); !strings.HasPrefix(got, "538 5.7.11 ") {
		t.Errorf("AUTH LOGIN in plaintext: %q, want 538 5.7.11", got)
	}
	if got := r.cmd("MAIL FROM:<alice@example.com>"); !strings.HasPrefix(got, "530 5.7.0 ") {
		t.Errorf("MAIL after the refused AUTH: %q, want 530", got)
	}
	// STARTTLS then AUTH works, on the same connection.
	r.startTLS(h.tls)
	r.cmd("EHLO client.test")
	if got := r.cmd("AUTH PLAIN " + plainIR(tenant, h.secret)); !strings.HasPrefix(got, "235 ") {
		t.Errorf("AUTH after STARTTLS: %q", got)
	}
	if n := h.counter("mailferry_smtp_auth_failures_total", "reason", "plaintext"); n != 2 {
		t.Errorf("auth_failures{plaintext} = %v, want 2", n)
	}
}

// TestAuthFailures: each wrong credential gets 535 5.7.8 (RFC 4954 6).
func TestAuthFailures(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHarness(t, harnessOptions{})
	revoked, revokedSecret, err := h.store.CreateAPIKey(ctx, tenant, []string{"example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.store.RevokeAPIKey(ctx, revoked.ID); err != nil {
		t.Fatal(err)
	}
	_, globexSecret, err := h.store.CreateAPIKey(ctx, "globex", []string{"example.com"})
	if err != nil {
		t.Fatal(err)
	}
	_, readOnlySecret, err := h.store.CreateKey(ctx, store.KeySpec{Tenant: tenant, Scopes: []string{store.ScopeRead, store.ScopeManage}})
	if err != nil {
		t.Fatal(err)
	}
	wrong := h.secret[:len(h.secret)-4] + "AAAA"
	if wrong == h.secret {
		wrong = h.secret[:len(h.secret)-4] + "BBBB"
	}
	tests := []struct {
		name string
		auth sasl.Client
	}{
		{"wrong password", sasl.NewPlainClient("", tenant, wrong)},
		{"wrong password LOGIN", sasl.NewLoginClient(tenant, wrong)},
		{"not a key", sasl.NewPlainClient("", tenant, "hunter2")},
		{"empty password", sasl.NewPlainClient("", tenant, "")},
		{"user is not the key's tenant", sasl.NewPlainClient("", "globex", h.secret)},
		{"another tenant's key", sasl.NewPlainClient("", tenant, globexSecret)},
		{"revoked key", sasl.NewPlainClient("", tenant, revokedSecret)},
		{"key without the send scope", sasl.NewPlainClient("", tenant, readOnlySecret)},
		{"authorization identity of someone else", sasl.NewPlainClient("globex", tenant, h.secret)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := h.client()
			err := c.Auth(tt.auth)
			se := wantSMTPError(t, "AUTH", err, 535, smtp.EnhancedCode{5, 7, 8})
			if strings.Contains(se.Message, h.secret) {
				t.Errorf("the reply shows the secret: %q", se.Message)
			}
			wantSMTPError(t, "MAIL after failed AUTH", c.Mail("alice@example.com", nil), 530, smtp.EnhancedCode{5, 7, 0})
		})
	}
	if n := h.counter("mailferry_smtp_auth_failures_total", "reason", "credentials"); n != float64(len(tests)) {
		t.Errorf("auth_failures{credentials} = %v, want %d", n, len(tests))
	}
	// An unknown mechanism is 504 5.7.4.
	r := dialRaw(t, h.addrTLS, h.tls)
	r.cmd("EHLO client.test")
	if got := r.cmd("AUTH CRAM-MD5"); !strings.HasPrefix(got, "504 5.7.4") {
		t.Errorf("AUTH CRAM-MD5: %q", got)
	}
}

// TestFailedLoginLimit: after AuthFailures failures from one address, AUTH
// is refused with 454 4.7.0 for AuthBlock, even with the right key.
func TestFailedLoginLimit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{authFailures: 3})
	for i := range 3 {
		err := h.client().Auth(sasl.NewPlainClient("", tenant, "wrong"))
		wantSMTPError(t, fmt.Sprintf("failure %d", i+1), err, 535, smtp.EnhancedCode{5, 7, 8})
	}
	c := h.client()
	se := wantSMTPError(t, "AUTH after 3 failures", c.Auth(sasl.NewPlainClient("", tenant, h.secret)), 454, smtp.EnhancedCode{4, 7, 0})
	if !strings.Contains(se.Message, "try again in 60 seconds") {
		t.Errorf("refusal does not say when to retry: %q", se.Message)
	}
	wantSMTPError(t, "MAIL", c.Mail("alice@example.com", nil), 530, smtp.EnhancedCode{5, 7, 0})
	if n := h.counter("mailferry_smtp_auth_failures_total", "reason", "rate_limited"); n != 1 {
		t.Errorf("auth_failures{rate_limited} = %v, want 1", n)
	}

	h.clock.Advance(61e9)
	if err := h.client().Auth(sasl.NewPlainClient("", tenant, h.secret)); err != nil {
		t.Fatalf("AUTH after the block: %v", err)
	}
}

// TestSenderDomain: MAIL FROM and the From and Sender headers must be in
// the key's domains: 550 5.7.1, and nothing is kept.
func TestSenderDomain(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	c := h.login()

	se := wantSMTPError(t, "MAIL FROM another domain", c.Mail("mallory@example.org", nil), 550, smtp.EnhancedCode{5, 7, 1})
	if !strings.Contains(se.Message, "example.org") || !strings.Contains(se.Message, "example.com") {
		t.Errorf("refusal does not name the domain and the allowed ones: %q", se.Message)
	}
	wantSMTPError(t, "MAIL FROM a subdomain", c.Mail("alice@mail.example.com", nil), 550, smtp.EnhancedCode{5, 7, 1})
	wantSMTPError(t, "null reverse-path", c.Mail("", nil), 550, smtp.EnhancedCode{5, 7, 1})

	tests := []struct {
		name, msg, where string
	}{
		{"From header", message("mallory@example.org", "bob@example.net", "spoof"), "From header: "},
		{"second From mailbox", "From: alice@example.com, eve@example.org\r\nSender: alice@example.com\r\nTo: bob@example.net\r\nSubject: x\r\n\r\nx\r\n", "From header: "},
		{"Sender header", "From: alice@example.com\r\nSender: eve@example.org\r\nTo: bob@example.net\r\nSubject: x\r\n\r\nx\r\n", "Sender header: "},
		{"Resent-From header", "Resent-From: eve@example.org\r\nFrom: alice@example.com\r\nTo: bob@example.net\r\nSubject: x\r\n\r\nx\r\n", "Resent-From or Resent-Sender header: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := send(c, "alice@example.com", []string{"bob@example.net"}, tt.msg)
			se := wantSMTPError(t, "DATA", err, 550, smtp.EnhancedCode{5, 7, 1})
			if !strings.HasPrefix(se.Message, tt.where) || !strings.Contains(se.Message, "example.org") {
				t.Errorf("refusal %q does not name %s and the domain", se.Message, tt.where)
			}
		})
	}
	if n := h.messageCount(); n != 0 {
		t.Errorf("%d messages in the ledger after refusals", n)
	}
	// The key's domain is fine in either case.
	if _, err := send(c, "Alice@EXAMPLE.com", []string{"bob@example.net"}, message("alice@Example.Com", "bob@example.net", "fine")); err != nil {
		t.Errorf("allowed sender: %v", err)
	}
}

// TestBadMessages: what ParseRaw refuses is 554 5.6.0 with its detail;
// bad addresses are 553.
func TestBadMessages(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	c := h.login()
	_, err := send(c, "alice@example.com", []string{"bob@example.net"}, "To: bob@example.net\r\nSubject: no from\r\n\r\nx\r\n")
	se := wantSMTPError(t, "no From", err, 554, smtp.EnhancedCode{5, 6, 0})
	if !strings.Contains(se.Message, "From header field is required") {
		t.Errorf("554 without the detail: %q", se.Message)
	}
	_, err = send(c, "alice@example.com", []string{"bob@example.net"}, "From: alice@example.com\r\nSubject: "+strings.Repeat("x", 1000)+"\r\n\r\nx\r\n")
	wantSMTPError(t, "long line", err, 554, smtp.EnhancedCode{5, 6, 0})

	wantSMTPError(t, "bad sender", c.Mail("alice@localhost", nil), 553, smtp.EnhancedCode{5, 1, 7})
	if err := c.Mail("alice@example.com", nil); err != nil {
		t.Fatal(err)
	}
	wantSMTPError(t, "bad recipient", c.Rcpt("bob@[127.0.0.1]", nil), 553, smtp.EnhancedCode{5, 1, 3})
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	if n := h.messageCount(); n != 0 {
		t.Errorf("%d messages in the ledger after refusals", n)
	}
}

// TestOversize: SIZE is enforced at MAIL (RFC 1870 6.1), on DATA and on
// BDAT: 552 5.3.4.
func TestOversize(t *testing.T) {
	t.Parallel()
	const limit = 4096
	h := newHarness(t, harnessOptions{maxMessageBytes: limit})
	c := h.login()
	if size, ok := c.MaxMessageSize(); !ok || size != limit {
		t.Errorf("SIZE advertised %d %v, want %d", size, ok, limit)
	}
	wantSMTPError(t, "MAIL SIZE=5000", c.Mail("alice@example.com", &smtp.MailOptions{Size: 5000}), 552, smtp.EnhancedCode{5, 3, 4})

	big := message("alice@example.com", "bob@example.net", "big") + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n", 80)
	_, err := send(c, "alice@example.com", []string{"bob@example.net"}, big)
	se := wantSMTPError(t, "DATA over the limit", err, 552, smtp.EnhancedCode{5, 3, 4})
	if !strings.Contains(se.Message, "4096") {
		t.Errorf("552 does not name the limit: %q", se.Message)
	}

	r := dialRaw(t, h.addrTLS, h.tls)
	r.cmd("EHLO client.test")
	r.cmd("AUTH PLAIN " + plainIR(tenant, h.secret))
	r.cmd("MAIL FROM:<alice@example.com>")
	r.cmd("RCPT TO:<bob@example.net>")
	r.write(fmt.Sprintf("BDAT %d LAST\r\n", len(big)), big)
	if got := r.reply(); !strings.HasPrefix(got, "552 5.3.4 ") {
		t.Errorf("BDAT over the limit: %q", got)
	}
	if n := h.messageCount(); n != 0 {
		t.Errorf("%d messages in the ledger after refusals", n)
	}
	// The connection is still usable for a message that fits.
	if _, err := send(c, "alice@example.com", []string{"bob@example.net"}, message("alice@example.com", "bob@example.net", "small")); err != nil {
		t.Errorf("small message after the refusal: %v", err)
	}
	if n := h.counter("mailferry_smtp_refusals_total", "reason", "too_large"); n != 1 {
		t.Errorf("refusals{too_large} = %v, want 1 (the DATA one; MAIL SIZE and BDAT are refused by go-smtp)", n)
	}
}

// TestTooManyRecipients: RCPT beyond the limit gets 452 4.5.3 (RFC 5321
// 4.5.3.1.10) and the message goes to those accepted.
func TestTooManyRecipients(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHarness(t, harnessOptions{maxRecipients: 2})
	c := h.login()
	if err := c.Mail("alice@example.com", nil); err != nil {
		t.Fatal(err)
	}
	for _, rcpt := range []string{"a@example.net", "b@example.net"} {
		if err := c.Rcpt(rcpt, nil); err != nil {
			t.Fatalf("RCPT %s: %v", rcpt, err)
		}
	}
	wantSMTPError(t, "third RCPT", c.Rcpt("c@example.net", nil), 452, smtp.EnhancedCode{4, 5, 3})
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, message("alice@example.com", "a@example.net", "two of three"))
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	id := queuedAs.FindStringSubmatch(resp.StatusText)
	if id == nil {
		t.Fatalf("reply %q", resp.StatusText)
	}
	var n int
	if err := h.db.QueryRow(ctx, "SELECT count(*) FROM recipients WHERE message_id = $1", id[1]).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("%d recipients recorded, want 2", n)
	}
}

// TestPipelining: commands sent in one write without waiting for replies
// (RFC 2920), with DATA, and with BDAT (RFC 3030 4.2), get their replies in
// order.
func TestPipelining(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHarness(t, harnessOptions{})
	r := dialRaw(t, h.addrTLS, h.tls)
	r.cmd("EHLO client.test")
	if got := r.cmd("AUTH PLAIN " + plainIR(tenant, h.secret)); !strings.HasPrefix(got, "235 ") {
		t.Fatalf("AUTH: %q", got)
	}
	r.write("MAIL FROM:<alice@example.com>\r\n", "RCPT TO:<bob@example.net>\r\n", "RCPT TO:<carol@example.org>\r\n", "DATA\r\n")
	for i, want := range []string{"250 ", "250 ", "250 ", "354 "} {
		if got := r.reply(); !strings.HasPrefix(got, want) {
			t.Fatalf("pipelined reply %d: %q, want %s", i+1, got, want)
		}
	}
	body := message("alice@example.com", "bob@example.net", "pipelined") + "..a dot-stuffed line\r\n"
	chunk := message("alice@example.com", "dave@example.net", "chunked")
	r.write(body, ".\r\n",
		"MAIL FROM:<alice@example.com>\r\n", "RCPT TO:<dave@example.net>\r\n",
		fmt.Sprintf("BDAT %d\r\n", 10), chunk[:10], fmt.Sprintf("BDAT %d LAST\r\n", len(chunk)-10), chunk[10:],
		"QUIT\r\n")
	var ids []string
	for i, want := range []string{"250 2.0.0 queued as ", "250 ", "250 ", "250 ", "250 2.0.0 queued as ", "221 "} {
		got := r.reply()
		if !strings.HasPrefix(got, want) {
			t.Fatalf("pipelined reply %d: %q, want %s", i+1, got, want)
		}
		if strings.Contains(got, "queued as ") {
			ids = append(ids, strings.TrimPrefix(got, want))
		}
	}
	var body1, body2 []byte
	if err := h.db.QueryRow(ctx, "SELECT body FROM messages WHERE id = $1", ids[0]).Scan(&body1); err != nil {
		t.Fatalf("first message %s: %v", ids[0], err)
	}
	if err := h.db.QueryRow(ctx, "SELECT body FROM messages WHERE id = $1", ids[1]).Scan(&body2); err != nil {
		t.Fatalf("chunked message %s: %v", ids[1], err)
	}
	if !strings.Contains(string(body1), "\r\n.a dot-stuffed line\r\n") {
		t.Errorf("dot-stuffing not undone:\n%s", body1)
	}
	if !strings.Contains(string(body2), "Subject: chunked\r\n") {
		t.Errorf("chunks not joined:\n%s", body2)
	}
	if d := h.depth(); d.Ready != 3 {
		t.Errorf("queue depth %+v, want 3 ready jobs", d)
	}
}

// TestMailTwice: a second MAIL inside a transaction is a sequence error,
// and cannot make DATA go to the header recipients.
func TestMailTwice(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	r := dialRaw(t, h.addrTLS, h.tls)
	r.cmd("EHLO client.test")
	r.cmd("AUTH PLAIN " + plainIR(tenant, h.secret))
	r.cmd("MAIL FROM:<alice@example.com>")
	r.cmd("RCPT TO:<bob@example.net>")
	if got := r.cmd("MAIL FROM:<alice@example.com>"); !strings.HasPrefix(got, "503 5.5.1 ") {
		t.Errorf("second MAIL: %q, want 503 5.5.1", got)
	}
	if got := r.cmd("RSET"); !strings.HasPrefix(got, "250 ") {
		t.Errorf("RSET: %q", got)
	}
	if got := r.cmd("MAIL FROM:<alice@example.com>"); !strings.HasPrefix(got, "250 ") {
		t.Errorf("MAIL after RSET: %q", got)
	}
}
