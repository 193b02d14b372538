package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailferry/mailferry/config"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/wait"
)

// TestDefaultRoles: serve without --roles runs inbound only with a bounce
// domain and a listener address, so a machine whose port 25 is taken runs
// serve as before.
func TestDefaultRoles(t *testing.T) {
	tests := []struct {
		name string
		cfg  config.Config
		want bool
	}{
		{"no bounce domain", config.Config{InboundAddr: ":25"}, false},
		{"bounce domain", config.Config{BounceDomain: "b.example.com", InboundAddr: ":25"}, true},
		{"listener off", config.Config{BounceDomain: "b.example.com"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := slices.Contains(defaultRolesFor(tc.cfg), "inbound"); got != tc.want {
				t.Errorf("inbound in %v: %v, want %v", defaultRolesFor(tc.cfg), got, tc.want)
			}
		})
	}
}

// TestBounceThroughBinary is the README's test bounce, automated: with a
// bounce domain the delivered message's envelope sender is a return path;
// a DSN to it at the inbound listener turns the recipient bounced
// asynchronously, even when the process is killed (-9) right after its
// 250; a forged tag is refused; `inbound list` shows the report
// and a report that is none as unparseable, with its reason.
func TestBounceThroughBinary(t *testing.T) {
	c := newCLI(t)
	dns := testmx.StartDNS(t)
	port, lns := testmx.Listen(t, "127.0.0.2")
	mx := testmx.StartSMTP(t, lns[0], testmx.SMTPOptions{})
	dns.MX("example.net", 10, "mx.example.net")
	dns.A("mx.example.net", "127.0.0.2")
	inboundAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	c.env = append(c.env,
		"MAILFERRY_DNS_SERVER="+dns.Addr(),
		fmt.Sprintf("MAILFERRY_SMTP_PORT=%d", port),
		"MAILFERRY_ALLOW_PRIVATE_DESTINATIONS=true",
		"MAILFERRY_SECRET_KEY="+strings.Repeat("k", 40),
		"MAILFERRY_BOUNCE_DOMAIN=bounces.example.com",
		"MAILFERRY_INBOUND_ADDR="+inboundAddr,
	)
	if _, stderr, err := c.run("migrate"); err != nil {
		t.Fatalf("migrate: %v %s", err, stderr)
	}
	secret, stderr, err := c.run("keys", "create", "--tenant", "acme", "--domain", "example.com")
	if err != nil {
		t.Fatalf("keys create: %v %s", err, stderr)
	}
	secret = strings.TrimSpace(secret)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	srv := c.start(t, addr) // no --roles: inbound runs, as a bounce domain is set
	base := "http://" + addr
	status, answer := request(t, "POST", base+"/v1/messages", secret,
		`{"from":"Alice <alice@example.com>","to":["bob@example.net"],"subject":"Hi","text":"Hello Bob"}`)
	if status != http.StatusAccepted {
		t.Fatalf("POST: %d %s", status, answer)
	}
	var sent struct{ ID string }
	json.Unmarshal(answer, &sent)
	wait.Within(t, 30*time.Second, "the message to reach the MX", func() bool { return len(mx.Messages()) == 1 })
	verp := mx.Messages()[0].From
	if !strings.HasPrefix(verp, "b-") || !strings.HasSuffix(verp, "@bounces.example.com") {
		t.Fatalf("envelope sender %q is not a return path", verp)
	}
	forged := verp[:len("b-")] + strings.Map(func(r rune) rune {
		if r == 'a' {
			return 'b'
		}
		return r
	}, verp[len("b-"):])
	if forged == verp {
		forged = strings.Replace(verp, "-0-", "-1-", 1)
	}
	var se *smtp.SMTPError
	if err := smtpSend(inboundAddr, forged, dsnFor(forged, "bob@example.net")); !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
		t.Errorf("DSN to a forged return path: %v, want 550 5.7.1", err)
	}
	if err := smtpSend(inboundAddr, verp, dsnFor(verp, "bob@example.net")); err != nil {
		t.Fatalf("DSN: %v\n%s", err, srv.logs.String())
	}
	// kill -9 right after the 250: the report was stored before it, so a
	// restarted process applies it if the dead one had not yet.
	if err := srv.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-srv.done
	srv = c.start(t, addr)
	if err := smtpSend(inboundAddr, verp, "Subject: hi\r\n\r\nnot a report\r\n"); err != nil {
		t.Fatalf("non-report: %v", err)
	}
	var msg struct {
		Events []struct {
			Type         string
			Async        bool
			ReportingMTA string `json:"reporting_mta"`
		}
		Recipients []struct {
			Status      string
			BounceType  string `json:"bounce_type"`
			BounceClass string `json:"bounce_class"`
		}
	}
	// A report the killed process had claimed waits out its lease (20 s).
	wait.Within(t, time.Minute, "the recipient to be bounced", func() bool {
		_, b := request(t, "GET", base+"/v1/messages/"+sent.ID, secret, "")
		json.Unmarshal(b, &msg)
		return len(msg.Recipients) == 1 && msg.Recipients[0].Status == "bounced"
	})
	if r := msg.Recipients[0]; r.BounceType != "hard" || r.BounceClass != "invalid_recipient" {
		t.Errorf("recipient %+v", r)
	}
	if !slices.ContainsFunc(msg.Events, func(e struct {
		Type         string
		Async        bool
		ReportingMTA string `json:"reporting_mta"`
	}) bool {
		return e.Type == "bounced" && e.Async && e.ReportingMTA == "mx.example.net"
	}) {
		t.Errorf("no async bounced event from mx.example.net: %+v", msg.Events)
	}
	var list string
	wait.Within(t, 30*time.Second, "inbound list to show the unparseable report", func() bool {
		list, _, _ = c.run("inbound", "list", "--status", "unparseable")
		return strings.Contains(list, "unparseable")
	})
	if !strings.Contains(list, verp) || strings.Contains(list, "\tprocessed") {
		t.Errorf("inbound list --status unparseable:\n%s", list)
	}
	if all, _, err := c.run("inbound", "list"); err != nil || !strings.Contains(all, "processed") || !strings.Contains(all, "dsn") {
		t.Errorf("inbound list: %v\n%s", err, all)
	}
	if _, _, err := c.run("inbound", "list", "--status", "nonsense"); err == nil {
		t.Error("inbound list took an unknown status")
	}
	srv.stop(t)
}

// TestInboundRoleNeedsBounceDomain: --roles inbound without a bounce
// domain stops with a line naming the variable.
func TestInboundRoleNeedsBounceDomain(t *testing.T) {
	c := newCLI(t)
	c.env = append(c.env, fmt.Sprintf("MAILFERRY_HTTP_ADDR=127.0.0.1:%d", freePort(t)))
	_, stderr, err := c.run("serve", "--roles", "inbound")
	if err == nil || !strings.Contains(stderr, "MAILFERRY_BOUNCE_DOMAIN") {
		t.Errorf("serve --roles inbound without a bounce domain: %v %s", err, stderr)
	}
}

func smtpSend(addr, rcpt, body string) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("mx.example.net"); err != nil {
		return err
	}
	if err := c.Mail("", nil); err != nil {
		return err
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(body)); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return errors.Join(c.Quit())
}

func dsnFor(verp, rcpt string) string {
	return strings.Join([]string{
		"From: MAILER-DAEMON@mx.example.net", "To: " + verp, "Subject: Undelivered Mail", "MIME-Version: 1.0",
		`Content-Type: multipart/report; report-type=delivery-status; boundary="b"`, "",
		"--b", "Content-Type: message/delivery-status", "", "Reporting-MTA: dns; mx.example.net", "",
		"Final-Recipient: rfc822; " + rcpt, "Action: failed", "Status: 5.1.1",
		"Diagnostic-Code: smtp; 550 5.1.1 <" + rcpt + ">: user unknown", "", "--b--", "",
	}, "\r\n")
}
