package bounce_test

import (
	"fmt"

	"github.com/mailferry/mailferry/bounce"
)

func ExampleRules_Classify() {
	r := bounce.DefaultRules()
	fmt.Println(r.Classify(550, "5.1.1", "The email account that you tried to reach does not exist."))
	fmt.Println(r.Classify(550, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"))
	fmt.Println(r.Classify(452, "4.2.2", "The email account that you tried to reach is over quota."))
	fmt.Println(r.Classify(0, "4.4.7", "delivery time expired"))
	// Output:
	// {hard invalid_recipient true}
	// {hard spam_block false}
	// {soft mailbox_full false}
	// {soft expired false}
}

func ExampleParse() {
	raw := "From: MAILER-DAEMON@mx.example.com\r\n" +
		"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n" +
		"--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n" +
		"--b\r\nContent-Type: message/delivery-status\r\n\r\n" +
		"Reporting-MTA: dns; mx.example.com\r\n\r\n" +
		"Final-Recipient: rfc822; nobody@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n" +
		"Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.com>: Recipient address\r\n rejected: User unknown\r\n" +
		"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <m1@shop.example>\r\n" +
		"--b--\r\n"
	r, err := bounce.Parse([]byte(raw))
	if err != nil {
		fmt.Println(err)
		return
	}
	rc := r.Recipients[0]
	fmt.Println(r.Kind, r.ReportingMTA, r.Original.MessageID)
	fmt.Println(rc.Address, rc.Action, rc.Status, rc.SMTPCode)
	fmt.Println(rc.DiagnosticCode)
	fmt.Println(bounce.DefaultRules().Classify(rc.SMTPCode, rc.Status, rc.DiagnosticCode))
	// Output:
	// dsn mx.example.com m1@shop.example
	// nobody@example.com failed 5.1.1 550
	// 550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown
	// {hard invalid_recipient true}
}
