package submission

import (
	"net/netip"
	"strings"
	"time"

	"github.com/mailferry/mailferry/mail"
)

// traceRoom is what Data asks mail.ParseRaw to leave in front of the
// message for the Received field: enough for a 255-octet EHLO name and
// hostname, an IPv6 literal, the id and the date, folded.
const traceRoom = 768

// receivedOptions is what the Received field says.
type receivedOptions struct {
	helo       string     // EHLO argument as the client sent it
	ip         netip.Addr // the client's address
	hideClient bool       // leave ip out
	by         string     // our hostname
	tls, auth  bool
	id         string
	now        time.Time
}

// received is the trace field RFC 5321 4.4 has an MSA put on top of the
// message: "Received: from <helo> ([ip]) by <host> with ESMTPSA id <id>;
// <date>", folded within 78 octets where the names allow.
func received(o receivedOptions) string {
	// RFC 3848 2: ESMTP, +S under TLS, +A when authenticated.
	with := "ESMTP"
	if o.tls {
		with += "S"
	}
	if o.auth {
		with += "A"
	}
	words := []string{"from", heloName(o.helo)}
	if !o.hideClient && o.ip.IsValid() {
		// RFC 5321 4.4 TCP-info: the address literal of the connection.
		words = append(words, "("+addressLiteral(o.ip)+")")
	}
	words = append(words, "by", o.by, "with", with, "id", o.id+";", o.now.Format(time.RFC1123Z))
	return fold("Received:", words)
}

// heloName is the client's EHLO argument when it is a domain or an
// address literal, as the grammar of From-domain allows; anything else
// (go-smtp passes any word) is written "unknown", so that no client can
// put its own text into the header.
func heloName(h string) string {
	if mail.IsDomainName(strings.TrimSuffix(h, ".")) {
		return h
	}
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		lit := strings.TrimPrefix(h[1:len(h)-1], "IPv6:")
		if a, err := netip.ParseAddr(lit); err == nil && a.Zone() == "" {
			return addressLiteral(a)
		}
	}
	return "unknown"
}

// addressLiteral is RFC 5321 4.1.3: [192.0.2.1] or [IPv6:2001:db8::1].
func addressLiteral(a netip.Addr) string {
	a = a.Unmap()
	if a.Is6() {
		return "[IPv6:" + a.String() + "]"
	}
	return "[" + a.String() + "]"
}

// fold writes name and words as one field, breaking lines before a word
// that would take the line past 78 octets (RFC 5322 2.1.1, 2.2.3).
func fold(name string, words []string) string {
	var b strings.Builder
	b.WriteString(name)
	col := len(name)
	for _, w := range words {
		if col+1+len(w) > 78 && col > 1 {
			b.WriteString("\r\n\t")
			col = 1
		} else {
			b.WriteByte(' ')
			col++
		}
		b.WriteString(w)
		col += len(w)
	}
	b.WriteString("\r\n")
	return b.String()
}
