package bounce

import (
	"strings"
	"testing"
)

// BenchmarkClassifyLongText: the worst case the rules see, a text of
// maxText octets that no rule matches.
func BenchmarkClassifyLongText(b *testing.B) {
	r := DefaultRules()
	text := strings.Repeat("qwerty uiop ", maxText/12+1)
	for b.Loop() {
		r.Classify(550, "5.0.0", text)
	}
}

func BenchmarkClassifyTypical(b *testing.B) {
	r := DefaultRules()
	for b.Loop() {
		r.Classify(550, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org")
	}
}
