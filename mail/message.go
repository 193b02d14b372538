package mail

import (
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"golang.org/x/net/idna"
)

// Message is what the rest of the system stores and sends.
type Message struct {
	From         []Address // From header mailbox(es); Build gives exactly one
	Sender       string    // envelope MAIL FROM addr-spec
	SenderHeader string    // addr-spec of the Sender: header field; "" when there is none
	Resent       []string  // addr-specs of every Resent-From and Resent-Sender mailbox (RFC 5322 3.6.6)
	Recipients   []string  // envelope RCPT TO addr-specs, de-duplicated, in order
	MessageID    string    // Message-ID without angle brackets
	Subject      string    // decoded subject, valid UTF-8
	Body         []byte    // the RFC 5322 message: CRLF only, lines ≤ 998 octets, no Bcc
	Needs8Bit    bool      // Body has 8-bit octets (8BITMIME, RFC 6152)
	NeedsUTF8    bool      // an address or a header needs SMTPUTF8 (RFC 6531)

	head []byte // free room in front of Body in its array, for Prepend
}

// Prepend puts a header field, such as the Received trace field an MSA
// adds on top (RFC 5321 4.4), in front of the message. field must be one
// complete field: printable ASCII lines ending in CRLF, folded lines
// starting with white space. It uses the room ParseRaw left when
// BuildOptions.TraceRoom asked for it, so the body is not copied.
func (m *Message) Prepend(field string) error {
	if err := checkTraceField(field); err != nil {
		return err
	}
	n := len(field)
	if n <= len(m.head) && len(m.head) < cap(m.head) && len(m.Body) > 0 &&
		&m.head[:len(m.head)+1][len(m.head)] == &m.Body[0] {
		start := len(m.head) - n
		copy(m.head[start:], field)
		m.Body = m.head[start : len(m.head)+len(m.Body)]
		m.head = m.head[:start]
		return nil
	}
	body := make([]byte, 0, n+len(m.Body))
	m.Body = append(append(body, field...), m.Body...)
	m.head = nil
	return nil
}

func checkTraceField(f string) error {
	name, _, ok := strings.Cut(f, ":")
	if !ok || !validFieldName([]byte(name)) || !strings.HasSuffix(f, "\r\n") {
		return fmt.Errorf("prepend: not one header field ending in CRLF")
	}
	for i, line := range strings.Split(strings.TrimSuffix(f, "\r\n"), "\r\n") {
		if len(line) == 0 || len(line) > maxLineLen || (i > 0 && line[0] != ' ' && line[0] != '\t') {
			return fmt.Errorf("prepend: line %d is too long or not a folded continuation", i+1)
		}
		for j := 0; j < len(line); j++ {
			if c := line[j]; (c < 0x20 && c != '\t') || c > 0x7e {
				return fmt.Errorf("prepend: control or 8-bit octet in line %d", i+1)
			}
		}
	}
	return nil
}

// SenderDomains lists, lower-case and once each, every domain the message
// claims to come from: each From mailbox, the Sender header, each
// Resent-From and Resent-Sender mailbox, and the envelope sender. A caller
// that limits who may send from which domain must check all of them, or a
// raw Sender: or Resent-From: header would make an open relay.
//
// These are the originator fields of RFC 5322 3.6.2 and 3.6.6 that name
// who wrote or sent the message, which mail readers show as its sender.
// Reply-To is left out on purpose: it names where answers go, not who
// sent (3.6.2), receivers authenticate nothing against it (DMARC aligns
// From, SPF the envelope), and replying to a help desk or a customer on
// another domain is its everyday use.
func (m *Message) SenderDomains() []string {
	var out []string
	add := func(addr string) {
		if addr == "" {
			return
		}
		d := strings.ToLower(domainOf(addr))
		for _, o := range out {
			if o == d {
				return
			}
		}
		out = append(out, d)
	}
	for _, a := range m.From {
		add(a.Addr)
	}
	add(m.SenderHeader)
	for _, a := range m.Resent {
		add(a)
	}
	add(m.Sender)
	return out
}

// BuildOptions are what Build and ParseRaw need besides the message.
type BuildOptions struct {
	Hostname      string           // domain of generated Message-IDs; "" → the From domain
	Now           func() time.Time // Date header; nil → time.Now
	MaxRecipients int              // 0 → 1000
	NewID         func() string    // unique left part of Message-IDs; nil → a UUIDv7
	TraceRoom     int              // ParseRaw: bytes left free in front of Body for Message.Prepend
	// ASCIIHeaders (ParseRaw) refuses 8-bit header octets: set it for an
	// SMTP submission without the SMTPUTF8 parameter (RFC 6531 3.4). The
	// API has no such parameter; there, valid UTF-8 headers are taken.
	ASCIIHeaders bool
}

const defaultMaxRecipients = 1000

func (o BuildOptions) withDefaults() BuildOptions {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxRecipients <= 0 {
		o.MaxRecipients = defaultMaxRecipients
	}
	return o
}

// messageID makes a new msg-id (RFC 5322 3.6.4) without its angle brackets.
func (o BuildOptions) messageID(fromDomain string) (string, error) {
	var left string
	if o.NewID != nil {
		left = o.NewID()
	} else {
		u, err := uuid.NewV7()
		if err != nil {
			return "", fmt.Errorf("new message id: %w", err)
		}
		left = u.String()
	}
	if !isDotAtom(left) || !isASCII(left) {
		return "", fmt.Errorf("new message id: NewID gave %q, not a dot-atom", left)
	}
	host := o.Hostname
	if host == "" {
		host = fromDomain
	}
	right, err := idna.Lookup.ToASCII(host)
	if err != nil || !isDotAtom(right) {
		return "", fmt.Errorf("new message id: hostname %q is not a domain name", host)
	}
	return left + "@" + right, nil
}

// dateValue formats t as an RFC 5322 3.3 date-time.
func dateValue(t time.Time) string { return t.Format(time.RFC1123Z) }

// recipientSet gathers envelope recipients once each, in order. Addr domains
// are already lower-case, so equal strings are equal recipients.
type recipientSet struct {
	list []string
	seen map[string]struct{}
}

func (r *recipientSet) add(a Address) {
	if r.seen == nil {
		r.seen = make(map[string]struct{})
	}
	if _, ok := r.seen[a.Addr]; ok {
		return
	}
	r.seen[a.Addr] = struct{}{}
	r.list = append(r.list, a.Addr)
}

// has8bit reports whether b has an octet above 127, eight at a time.
func has8bit(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b)&0x8080808080808080 != 0 {
			return true
		}
		b = b[8:]
	}
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}
