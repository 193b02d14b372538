package dkim

import (
	"context"
	"strings"
	"testing"
)

// benchMessage is a 5 KB transactional message: the usual header fields
// and 72-column text.
func benchMessage() []byte {
	var b strings.Builder
	b.WriteString("From: Example Shop <orders@example.com>\r\n" +
		"To: customer@example.net\r\n" +
		"Subject: Your receipt for order #1042\r\n" +
		"Date: Sun, 01 Mar 2026 12:00:00 +0000\r\n" +
		"Message-ID: <20260301120000.1042@mail.example.com>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n" +
		"List-Unsubscribe: <https://example.com/unsubscribe/1042>\r\n" +
		"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" +
		"\r\n")
	// Every other line has trailing spaces, so both the verbatim and the
	// rewriting path of body canonicalization are measured.
	lines := [2]string{
		"Thank you for your order. Your items will ship within two business\r\n",
		"days; we will send the tracking number as soon as we have it.  \r\n",
	}
	for i := 0; b.Len() < 5*1024; i++ {
		b.WriteString(lines[i%2])
	}
	return []byte(b.String())
}

func benchSign(b *testing.B, keys []Key) {
	msg := benchMessage()
	s := NewSigner(SignOptions{})
	ctx := context.Background()
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Sign(ctx, keys, msg); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func BenchmarkSignEd25519(b *testing.B) {
	benchSign(b, []Key{testEd25519Key(b)})
}

func BenchmarkSignRSA2048(b *testing.B) {
	benchSign(b, []Key{genKey(b, "example.com", "rsa", AlgorithmRSA2048)})
}

func BenchmarkSignDual(b *testing.B) {
	benchSign(b, []Key{genKey(b, "example.com", "rsa", AlgorithmRSA2048), testEd25519Key(b)})
}
