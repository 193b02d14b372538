package mail

import (
	"strings"
	"testing"
)

// BenchmarkBuild builds a 4 KB text message, the common transactional case.
func BenchmarkBuild(b *testing.B) {
	d := Draft{
		From:    "Example Shop <orders@shop.example.com>",
		To:      []string{"Jörg Müller <joerg@example.de>"},
		Subject: "Your order #12345 has shipped",
		Text:    strings.Repeat("Thank you for your order. Your parcel is on its way to you.\n", 68),
		Headers: map[string]string{"X-Campaign": "shipping"},
	}
	opts := testOpts()
	b.ReportAllocs()
	b.SetBytes(int64(len(d.Text)))
	for b.Loop() {
		if _, err := Build(d, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBuildHTMLAttachment builds text, html and a 100 KB attachment.
func BenchmarkBuildHTMLAttachment(b *testing.B) {
	d := Draft{
		From:        "Example Shop <orders@shop.example.com>",
		To:          []string{"joerg@example.de"},
		Subject:     "Ihre Rechnung – März",
		Text:        strings.Repeat("Grüße aus Köln. ", 256),
		HTML:        "<html><body>" + strings.Repeat("<p>Grüße aus Köln.</p>", 256) + "</body></html>",
		Attachments: []Attachment{{Filename: "Rechnung März.pdf", Content: b64(strings.Repeat("%PDF-1.4 binary\x00\xff", 6000))}},
	}
	opts := testOpts()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Build(d, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseRaw checks a 4 KB raw message that needs its Bcc removed.
func BenchmarkParseRaw(b *testing.B) {
	raw := []byte("From: Example Shop <orders@shop.example.com>\r\nTo: joerg@example.de\r\nBcc: audit@shop.example.com\r\n" +
		"Subject: Your order\r\nDate: Wed, 04 Mar 2026 05:06:07 +0100\r\nMessage-ID: <a@shop.example.com>\r\n\r\n" +
		strings.Repeat("Thank you for your order. Your parcel is on its way to you.\r\n", 68))
	opts := testOpts()
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := ParseRaw(raw, nil, opts); err != nil {
			b.Fatal(err)
		}
	}
}
