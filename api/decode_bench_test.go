package api

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

// benchBodies are typical POST /v1/messages bodies: a short structured
// message, one with metadata and an attachment, and a ready message.
func benchBodies(b *testing.B) map[string][]byte {
	b.Helper()
	small := `{"from":"Alice <alice@example.com>","to":["bob@example.net"],"subject":"Welcome","text":"Hello Bob, welcome aboard.","tags":["welcome"],"metadata":{"user_id":"42"}}`
	att, err := json.Marshal(map[string]any{
		"from": "Alice <alice@example.com>", "to": []string{"bob@example.net", "carol@example.net"},
		"cc": []string{"dave@example.org"}, "reply_to": "help@example.com", "subject": "Your receipt",
		"text": strings.Repeat("Thank you for your order. ", 40), "html": "<p>" + strings.Repeat("Thank you for your order. ", 40) + "</p>",
		"headers":     map[string]string{"X-Campaign": "receipts"},
		"attachments": []map[string]string{{"filename": "receipt.pdf", "content_type": "application/pdf", "content": base64.StdEncoding.EncodeToString([]byte(strings.Repeat("%PDF-1.4 receipt ", 1000)))}},
		"tags":        []string{"receipt", "shop"}, "metadata": map[string]string{"user_id": "42", "order": "A-1001"},
		"send_at": "2026-12-01T09:00:00Z",
	})
	if err != nil {
		b.Fatal(err)
	}
	raw := `{"raw":"` + base64.StdEncoding.EncodeToString([]byte("From: alice@example.com\r\nTo: bob@example.net\r\nSubject: Hi\r\n\r\n"+strings.Repeat("hello\r\n", 200))) + `","to":["bob@example.net"]}`
	return map[string][]byte{"small": []byte(small), "attachment": att, "raw": []byte(raw)}
}

// BenchmarkDecodeSend measures decodeSend against the three-pass decoder
// it replaced (legacyDecodeSend, in decode_test.go).
func BenchmarkDecodeSend(b *testing.B) {
	s := &server{}
	for _, name := range []string{"small", "attachment", "raw"} {
		body := benchBodies(b)[name]
		for _, impl := range []struct {
			name   string
			decode func([]byte) (*sendRequest, *problem)
		}{{"legacy", legacyDecodeSend}, {"once", s.decodeSend}} {
			b.Run(name+"/"+impl.name, func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(body)))
				for b.Loop() {
					if _, p := impl.decode(body); p != nil {
						b.Fatal(p)
					}
				}
			})
		}
	}
}
