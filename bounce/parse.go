package bounce

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"strings"

	"github.com/emersion/go-message/textproto"
)

// ErrNotReport: the message is no DSN, ARF report or known plain-text
// bounce. Parse wraps it.
var ErrNotReport = errors.New("not a delivery status or feedback report")

// The kinds of Report.
const (
	KindDSN   = "dsn"   // RFC 3464 or RFC 6533 delivery status notification
	KindARF   = "arf"   // RFC 5965 feedback report (a complaint)
	KindPlain = "plain" // a plain-text bounce of a known MTA
)

// Report is what Parse found in one report message.
type Report struct {
	Kind         string // KindDSN, KindARF or KindPlain
	ReportingMTA string
	// DSN: the per-recipient fields; ARF: the complained-about
	// recipient(s); plain: the failed addresses found.
	Recipients []ReportRecipient
	Feedback   string          // ARF Feedback-Type (abuse, fraud, …), lower case; "" for DSNs
	Original   OriginalHeaders // from the returned or embedded message or its headers
}

// ReportRecipient is one recipient a report speaks of.
type ReportRecipient struct {
	// Address: Final-Recipient (or Original-Recipient), ARF
	// Original-Rcpt-To, or the address found in plain text; may be "".
	Address string
	// Action: "failed", "delayed", "delivered", "relayed", "expanded"
	// (RFC 3464 2.3.3); "complained" for ARF.
	Action         string
	Status         string // enhanced status code, "5.1.1"; may be ""
	DiagnosticCode string // the text after "smtp;" (the remote server's reply), or the plain-text reason
	SMTPCode       int    // the reply code at the start of the diagnostic, 0 if none
	RemoteMTA      string
}

// OriginalHeaders are fields of the message the report is about.
type OriginalHeaders struct {
	MessageID  string // without <>
	ReturnPath string // without <>; for ARF, Original-Mail-From when the headers have no Return-Path
	From       string // the address
	To         []string
}

// Limits on what Parse reads: a report is a few kilobytes, and the
// inbound listener takes untrusted mail.
const (
	MaxReportSize   = 16 << 20 // octets; larger input is refused
	maxParts        = 100      // MIME parts in all, at any depth
	maxDepth        = 5        // multipart nesting
	maxHeaderSize   = 256 << 10
	maxRecipients   = 1000
	maxFieldLen     = 2048 // a DSN field value we keep
	maxAddressLen   = 512
	maxStatusGroups = maxRecipients + 1
	// maxStatusSize bounds a delivery-status or feedback-report part: a
	// thousand recipients of a kilobyte each.
	maxStatusSize = 1 << 20
	// maxPlainText is how much of each text part the plain-text formats
	// read: the notice and its address list come first, the returned
	// message after.
	maxPlainText = 64 << 10
)

// ErrTooComplex: the message goes past one of Parse's limits (size, MIME
// parts, nesting, header size). Parse wraps it.
var ErrTooComplex = errors.New("report too large or too complex")

// Parse reads one report message: an RFC 3464 DSN (RFC 6533 global DSNs
// too), an RFC 5965 ARF feedback report, or a plain-text bounce of Postfix,
// Exim, Exchange, Gmail, Yahoo or qmail. An error wraps ErrNotReport when
// raw is none of these.
func Parse(raw []byte) (*Report, error) {
	if len(raw) > MaxReportSize {
		return nil, fmt.Errorf("parse report: %d octets, more than %d: %w", len(raw), MaxReportSize, ErrTooComplex)
	}
	top, err := readEntity(raw, maxHeaderSize)
	if err != nil {
		return nil, fmt.Errorf("parse report: %w", err)
	}
	w := &walker{}
	if err := w.walk(top, 0); err != nil {
		return nil, fmt.Errorf("parse report: %w", err)
	}
	mt, params := top.mediaType()
	reportType := strings.ToLower(params["report-type"])
	switch {
	case w.deliveryStatus != nil && (mt != "multipart/report" || reportType == "" ||
		reportType == "delivery-status" || reportType == "global-delivery-status"):
		// RFC 3464 2: multipart/report; report-type=delivery-status. For
		// RFC 6533 global DSNs senders write either that or
		// global-delivery-status; both are taken.
		r, sender, err := parseDSN(w.deliveryStatus)
		if err != nil {
			return nil, fmt.Errorf("parse dsn: %w", err)
		}
		r.Original = w.original()
		if r.Original.ReturnPath == "" {
			// The returned headers seldom have a Return-Path (it is added
			// at final delivery); Postfix names the envelope sender.
			r.Original.ReturnPath = sender
		}
		return r, nil
	case w.feedback != nil:
		// RFC 5965 2: multipart/report; report-type=feedback-report.
		r, err := parseARF(w.feedback, w.original())
		if err != nil {
			return nil, fmt.Errorf("parse arf: %w", err)
		}
		return r, nil
	}
	if r := parsePlain(w.texts); r != nil {
		r.Original = w.original()
		if o := r.Original; o.MessageID == "" && o.ReturnPath == "" && o.From == "" && len(o.To) == 0 {
			r.Original = w.inlineOriginal()
		}
		return r, nil
	}
	return nil, fmt.Errorf("parse report: %s: %w", mt, ErrNotReport)
}

// entity is one MIME entity: its header and its body, transfer-decoded.
type entity struct {
	header textproto.Header
	body   []byte
}

func (e *entity) mediaType() (string, map[string]string) {
	v := e.header.Get("Content-Type")
	if v == "" {
		return "text/plain", map[string]string{} // RFC 2045 5.2
	}
	mt, params, err := mime.ParseMediaType(v)
	if err != nil {
		// Keep what is before the first ';' so a bad parameter does not
		// hide a report.
		mt, _, _ = strings.Cut(v, ";")
		return strings.ToLower(strings.TrimSpace(mt)), map[string]string{}
	}
	return mt, params
}

// readEntity splits raw into header and body, the header at most
// maxHeader octets, and undoes the transfer encoding of the body.
func readEntity(raw []byte, maxHeader int) (*entity, error) {
	head, body := splitHeader(raw)
	if len(head) > maxHeader {
		return nil, fmt.Errorf("header of %d octets, more than %d: %w", len(head), maxHeader, ErrTooComplex)
	}
	h, err := textproto.ReadHeader(bufio.NewReader(io.MultiReader(bytes.NewReader(head), strings.NewReader("\r\n"))))
	if err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	return &entity{header: h, body: decodeTransfer(h.Get("Content-Transfer-Encoding"), body)}, nil
}

// splitHeader returns the header lines and the body after the blank line.
// With no blank line the whole is header (as for text/rfc822-headers).
func splitHeader(raw []byte) (head, body []byte) {
	for i := 0; i < len(raw); {
		j := bytes.IndexByte(raw[i:], '\n')
		if j < 0 {
			return raw, nil
		}
		line := raw[i : i+j]
		if len(line) == 0 || len(line) == 1 && line[0] == '\r' {
			return raw[:i], raw[i+j+1:]
		}
		i += j + 1
	}
	return raw, nil
}

// decodeTransfer undoes base64 and quoted-printable (RFC 2045 6); a body
// that does not decode is kept as it is.
func decodeTransfer(cte string, body []byte) []byte {
	switch strings.ToLower(strings.TrimSpace(cte)) {
	case "base64":
		// Padding is optional here: senders differ, and a part cut short
		// still gives what it has.
		clean := bytes.Map(func(r rune) rune {
			if r == '\r' || r == '\n' || r == ' ' || r == '\t' || r == '=' {
				return -1
			}
			return r
		}, body)
		out := make([]byte, base64.RawStdEncoding.DecodedLen(len(clean)))
		n, _ := base64.RawStdEncoding.Decode(out, clean)
		return out[:n]
	case "quoted-printable":
		b, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(body)))
		if err != nil {
			return body
		}
		return b
	}
	return body
}

// walker collects the parts Parse cares about.
type walker struct {
	parts          int
	deliveryStatus []byte   // message/delivery-status or message/global-delivery-status
	feedback       []byte   // message/feedback-report
	headers        [][]byte // returned message or its headers, in order found
	texts          [][]byte // text/plain parts, in order found
}

func (w *walker) walk(e *entity, depth int) error {
	w.parts++
	if w.parts > maxParts {
		return fmt.Errorf("more than %d MIME parts: %w", maxParts, ErrTooComplex)
	}
	mt, params := e.mediaType()
	switch {
	case strings.HasPrefix(mt, "multipart/"):
		if depth >= maxDepth {
			return fmt.Errorf("multipart nested deeper than %d: %w", maxDepth, ErrTooComplex)
		}
		boundary := params["boundary"]
		if boundary == "" {
			w.texts = append(w.texts, clip(e.body, maxPlainText))
			return nil
		}
		mr := textproto.NewMultipartReader(bytes.NewReader(e.body), boundary)
		for {
			p, err := mr.NextPart()
			if err != nil {
				// io.EOF, or a truncated or broken structure: keep what
				// was read, as MTAs truncate returned messages.
				return nil
			}
			b, err := io.ReadAll(p)
			if err != nil && len(b) == 0 {
				return nil
			}
			h := p.Header
			child := &entity{header: h, body: decodeTransfer(h.Get("Content-Transfer-Encoding"), b)}
			if err := w.walk(child, depth+1); err != nil {
				return err
			}
		}
	case mt == "message/delivery-status" || mt == "message/global-delivery-status":
		if len(e.body) > maxStatusSize {
			return fmt.Errorf("%s part of %d octets, more than %d: %w", mt, len(e.body), maxStatusSize, ErrTooComplex)
		}
		if w.deliveryStatus == nil {
			w.deliveryStatus = e.body
		}
	case mt == "message/feedback-report":
		if len(e.body) > maxStatusSize {
			return fmt.Errorf("%s part of %d octets, more than %d: %w", mt, len(e.body), maxStatusSize, ErrTooComplex)
		}
		if w.feedback == nil {
			w.feedback = e.body
		}
	case mt == "message/rfc822" || mt == "message/global" || mt == "text/rfc822-headers" ||
		mt == "message/rfc822-headers" || mt == "message/global-headers":
		// RFC 6522 (text/rfc822-headers), RFC 6533 (message/global, message/global-headers).
		w.headers = append(w.headers, e.body)
	case mt == "text/plain" || mt == "":
		w.texts = append(w.texts, clip(e.body, maxPlainText))
	}
	return nil
}

// clip returns at most n octets of b, cut at a line end when there is one.
func clip(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	b = b[:n]
	if i := bytes.LastIndexByte(b, '\n'); i > 0 {
		b = b[:i+1]
	}
	return b
}
