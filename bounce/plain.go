package bounce

import (
	"regexp"
	"strconv"
	"strings"
)

// The plain-text bounces: formats of MTAs that send no RFC 3464 DSN, or
// whose DSN part went missing on the way. Each is recognised by the
// sentence its MTA always writes, and read for the failed addresses, the
// reason and, where the text has one, the server's reply.

// plainFormat is one MTA's plain-text bounce.
type plainFormat struct {
	name   string
	marker *regexp.Regexp
	parse  func(text string) *Report
}

var (
	markQmail    = regexp.MustCompile(`(?i)this is the qmail-send program|wasn't able to deliver your message to the following addresses`)
	markPostfix  = regexp.MustCompile(`(?i)this is the (mail system|postfix program) at host`)
	markYahoo    = regexp.MustCompile(`(?i)unable to deliver your message to the following address`)
	markExim     = regexp.MustCompile(`(?i)created automatically by mail delivery software`)
	markExchange = regexp.MustCompile(`(?i)delivery has failed to these recipients or groups|your message to \S+ couldn't be delivered`)
	markGmail    = regexp.MustCompile(`(?i)delivery to the following recipients? (failed|has been delayed)|\*\* (address not found|message not delivered|message blocked|delivery incomplete) \*\*|your message wasn't delivered to`)
)

func plainFormats() []plainFormat {
	return []plainFormat{
		// qmail-send's bounce (qmail-send.c "Hi. This is the qmail-send program").
		{"qmail", markQmail, parseAngleBlocks},
		// Postfix's bounce(8) text, the "non-delivery" form without the DSN part.
		{"postfix", markPostfix, parseAngleBlocks},
		// Yahoo: "Sorry, we were unable to deliver your message to the following address."
		{"yahoo", markYahoo, parseAngleBlocks},
		// Exim's bounce ("This message was created automatically by mail delivery software.").
		{"exim", markExim, parseExim},
		// Exchange and Microsoft 365 non-delivery reports.
		{"exchange", markExchange, parseExchange},
		// Gmail's bounces, old ("Delivery to the following recipient failed
		// permanently") and new ("** Address not found **").
		{"gmail", markGmail, parseGmail},
	}
}

// parsePlain tries each format on each text part; nil when none fits.
func parsePlain(texts [][]byte) *Report {
	formats := plainFormats()
	for _, t := range texts {
		s := strings.ReplaceAll(strings.ToValidUTF8(string(t), "\uFFFD"), "\r\n", "\n")
		for _, f := range formats {
			if !f.marker.MatchString(s) {
				continue
			}
			if r := f.parse(s); r != nil && len(r.Recipients) > 0 {
				r.Kind = KindPlain
				return r
			}
		}
	}
	return nil
}

var (
	reportingHost = regexp.MustCompile(`(?i)(?:this is the (?:mail system|postfix program|qmail-send program) at(?: host)?|generating server:)\s+([A-Za-z0-9.\-]+[A-Za-z0-9])`)
	angleLine     = regexp.MustCompile(`^<([^<>\s]+@[^<>\s]+)>(?:\s*\([^)]*\))?:\s*(.*)$`)
	postfixHost   = regexp.MustCompile(`(?i)^host\s+(\S+?)(?:\[[^\]]*\])?\s+said:\s*`)
	inReplyTo     = regexp.MustCompile(`(?i)\s*\(in reply to [^)]*\)\s*$`)
	remoteSaid    = regexp.MustCompile(`(?i)remote host said:\s*`)
	qmailStatus   = regexp.MustCompile(`\(#([245]\.\d{1,3}\.\d{1,3})\)`)
	warningOnly   = regexp.MustCompile(`(?i)this is a warning only|has not yet been delivered|has been delayed|delivery incomplete|temporary problem delivering`)
)

func newPlainReport(text string) *Report {
	r := &Report{}
	if m := reportingHost.FindStringSubmatch(text); m != nil {
		r.ReportingMTA = strings.TrimSuffix(m[1], ".")
	}
	return r
}

func plainAction(text string) string {
	if warningOnly.MatchString(text) {
		return "delayed"
	}
	return "failed"
}

// parseAngleBlocks reads the "<address>: reason" blocks of Postfix, qmail
// and Yahoo: the address line, then the reason, on the same line
// (Postfix) or on the lines after it (qmail, Yahoo), up to a blank line.
func parseAngleBlocks(text string) *Report {
	r := newPlainReport(text)
	action := plainAction(text)
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		// A new block starts at the margin; Postfix indents the lines
		// that continue a reason, which may start with "<address>:" too.
		if indent(lines[i]) > 0 {
			continue
		}
		m := angleLine.FindStringSubmatch(strings.TrimSpace(lines[i]))
		if m == nil {
			continue
		}
		addr := cleanAddress(m[1])
		reason := []string{m[2]}
		for i+1 < len(lines) && strings.TrimSpace(lines[i+1]) != "" && !strings.HasPrefix(lines[i+1], "---") &&
			(indent(lines[i+1]) > 0 || !angleLine.MatchString(lines[i+1])) {
			i++
			reason = append(reason, strings.TrimSpace(lines[i]))
		}
		if addr == "" {
			continue
		}
		rc := ReportRecipient{Address: addr, Action: action}
		text := strings.TrimSpace(strings.Join(reason, " "))
		if m := postfixHost.FindStringSubmatchIndex(text); m != nil {
			rc.RemoteMTA = cleanText(text[m[2]:m[3]])
			text = text[m[1]:]
		} else if loc := remoteSaid.FindStringIndex(text); loc != nil {
			text = text[loc[1]:]
		}
		text = inReplyTo.ReplaceAllString(text, "")
		text = strings.TrimSuffix(strings.TrimSpace(text), " Giving up on")
		setDiagnostic(&rc, text)
		r.Recipients = append(r.Recipients, rc)
		if len(r.Recipients) >= maxRecipients {
			break
		}
	}
	return r
}

// setDiagnostic fills DiagnosticCode, SMTPCode and Status from a reason
// that may hold the server's reply.
func setDiagnostic(rc *ReportRecipient, text string) {
	// qmail ends its lines with "Giving up on 192.0.2.1."; keep the reply.
	if i := strings.Index(text, " Giving up on "); i > 0 {
		text = text[:i]
	}
	rc.DiagnosticCode = cleanText(text)
	rc.SMTPCode = leadingReplyCode(rc.DiagnosticCode)
	in := newInput(rc.SMTPCode, "", rc.DiagnosticCode)
	if in.hasStatus {
		rc.Status = statusText(in.status)
	} else if m := qmailStatus.FindStringSubmatch(rc.DiagnosticCode); m != nil {
		rc.Status = m[1]
	}
}

func statusText(st [3]int) string {
	return strconv.Itoa(st[0]) + "." + strconv.Itoa(st[1]) + "." + strconv.Itoa(st[2])
}

var (
	eximHeading = regexp.MustCompile(`(?i)(address\(es\) failed|addresses failed|address failed|has not yet been delivered is|have not yet been delivered are|delivered (is|are)):\s*$`)
	eximHost    = regexp.MustCompile(`(?i)^host\s+(\S+)\s+\[`)
	replyStart  = regexp.MustCompile(`^[245]\d\d[ -]`)
)

// parseExim reads Exim's list: after "The following address(es) failed:",
// each address on a line indented by two spaces, the reason on the lines
// indented deeper.
func parseExim(text string) *Report {
	r := newPlainReport(text)
	action := plainAction(text)
	lines := strings.Split(text, "\n")
	start := -1
	for i, l := range lines {
		if eximHeading.MatchString(strings.TrimSpace(l)) {
			start = i + 1
			break
		}
	}
	if start < 0 {
		return nil
	}
	for i := start; i < len(lines); i++ {
		l := lines[i]
		t := strings.TrimSpace(l)
		if t == "" {
			continue
		}
		if strings.HasPrefix(t, "------") || indent(l) == 0 && !strings.Contains(t, "@") {
			break
		}
		if indent(l) > 2 {
			continue
		}
		addr := cleanAddress(strings.Fields(t)[0])
		var reason []string
		for i+1 < len(lines) && indent(lines[i+1]) > indent(l) && strings.TrimSpace(lines[i+1]) != "" {
			i++
			reason = append(reason, strings.TrimSpace(lines[i]))
		}
		if addr == "" {
			continue
		}
		rc := ReportRecipient{Address: addr, Action: action}
		var diag []string
		for k, line := range reason {
			if m := eximHost.FindStringSubmatch(line); m != nil && rc.RemoteMTA == "" {
				rc.RemoteMTA = cleanText(m[1])
			}
			if replyStart.MatchString(line) {
				diag = reason[k:]
				break
			}
		}
		if diag == nil {
			diag = reason
		}
		setDiagnostic(&rc, strings.Join(diag, " "))
		r.Recipients = append(r.Recipients, rc)
		if len(r.Recipients) >= maxRecipients {
			break
		}
	}
	return r
}

func indent(l string) int {
	return len(l) - len(strings.TrimLeft(l, " \t"))
}

var (
	remoteReturned = regexp.MustCompile(`(?i)remote server returned '([^']*)'`)
	exchangeHash   = regexp.MustCompile(`^#([245]\d\d\s.*?)\s*##`)
	exchangeNew    = regexp.MustCompile(`(?i)your message to (\S+) couldn't be delivered`)
)

// parseExchange reads an Exchange / Microsoft 365 report: in "Diagnostic
// information for administrators", each address line followed by "Remote
// Server returned '550 5.1.10 …'" (or "#550 5.1.1 … ##"); without that
// section, the addresses under "Delivery has failed to these recipients".
func parseExchange(text string) *Report {
	r := newPlainReport(text)
	action := plainAction(text)
	lines := strings.Split(text, "\n")
	diagStart := -1
	for i, l := range lines {
		if strings.Contains(strings.ToLower(l), "diagnostic information for administrators") {
			diagStart = i + 1
			break
		}
	}
	if diagStart >= 0 {
		var cur *ReportRecipient
		for _, l := range lines[diagStart:] {
			t := strings.TrimSpace(l)
			if strings.HasPrefix(strings.ToLower(t), "original message headers") {
				break
			}
			if a := exchangeAddress(t); a != "" {
				r.Recipients = append(r.Recipients, ReportRecipient{Address: a, Action: action})
				cur = &r.Recipients[len(r.Recipients)-1]
				continue
			}
			if cur == nil || cur.DiagnosticCode != "" {
				continue
			}
			if m := remoteReturned.FindStringSubmatch(t); m != nil {
				setDiagnostic(cur, m[1])
			} else if m := exchangeHash.FindStringSubmatch(t); m != nil {
				setDiagnostic(cur, m[1])
			}
			if len(r.Recipients) >= maxRecipients {
				break
			}
		}
		if len(r.Recipients) > 0 {
			return r
		}
	}
	// Only the user part: addresses, each maybe followed by a reason line.
	in := false
	for i := 0; i < len(lines); i++ {
		t := strings.TrimSpace(lines[i])
		low := strings.ToLower(t)
		if strings.Contains(low, "delivery has failed to these recipients") {
			in = true
			continue
		}
		if !in {
			if m := exchangeNew.FindStringSubmatch(t); m != nil {
				if a := cleanAddress(m[1]); a != "" {
					r.Recipients = append(r.Recipients, ReportRecipient{Address: a, Action: action})
				}
			}
			continue
		}
		if a := exchangeAddress(t); a != "" {
			rc := ReportRecipient{Address: a, Action: action}
			if i+1 < len(lines) && strings.TrimSpace(lines[i+1]) != "" && exchangeAddress(strings.TrimSpace(lines[i+1])) == "" {
				setDiagnostic(&rc, strings.TrimSpace(lines[i+1]))
			}
			r.Recipients = append(r.Recipients, rc)
		}
	}
	return r
}

// exchangeAddress reads a line that is only an address, as Exchange lists
// them: "user@example.com", "user@example.com (user@example.com)",
// "'Name' <user@example.com>" ; "" otherwise.
func exchangeAddress(t string) string {
	if t == "" || len(t) > maxAddressLen {
		return ""
	}
	if i := strings.Index(t, " ("); i > 0 && strings.HasSuffix(t, ")") {
		t = t[:i]
	}
	if strings.HasSuffix(t, ">") {
		if i := strings.LastIndexByte(t, '<'); i >= 0 {
			t = t[i:]
		}
	}
	if strings.ContainsAny(strings.Trim(t, "<>"), " \t'") {
		return ""
	}
	return cleanAddress(t)
}

var (
	gmailDeliveredTo = regexp.MustCompile(`(?i)(?:wasn't delivered to|delivering your message to|couldn't be delivered to)\s+<?([^\s<>]+@[^\s<>]+?)>?[.,]?(?:\s|$)`)
	gmailResponse    = regexp.MustCompile(`(?i)^(the response from the remote server was|the error that the other server returned was|the response was):?\s*(.*)$`)
	gmailListHeading = regexp.MustCompile(`(?i)delivery to the following recipients? (failed|has been delayed)`)
)

// parseGmail reads Gmail's bounces: the addresses indented under
// "Delivery to the following recipient failed permanently:" (older), or
// named in "Your message wasn't delivered to X because …" (newer); the
// server's reply after "The error that the other server returned was:" or
// "The response from the remote server was:".
func parseGmail(text string) *Report {
	r := newPlainReport(text)
	action := plainAction(text)
	lines := strings.Split(text, "\n")
	var addrs []string
	for i := 0; i < len(lines); i++ {
		t := strings.TrimSpace(lines[i])
		if gmailListHeading.MatchString(t) {
			for i+1 < len(lines) {
				n := strings.TrimSpace(lines[i+1])
				if n == "" && len(addrs) == 0 {
					i++
					continue
				}
				if n == "" {
					break
				}
				i++
				if a := cleanAddress(n); a != "" {
					addrs = append(addrs, a)
				}
			}
			continue
		}
		for _, m := range gmailDeliveredTo.FindAllStringSubmatch(t, -1) {
			if a := cleanAddress(m[1]); a != "" {
				addrs = append(addrs, a)
			}
		}
	}
	var diag string
	for i := 0; i < len(lines); i++ {
		m := gmailResponse.FindStringSubmatch(strings.TrimSpace(lines[i]))
		if m == nil {
			continue
		}
		parts := []string{m[2]}
		for i+1 < len(lines) && (strings.TrimSpace(lines[i+1]) != "" || strings.TrimSpace(strings.Join(parts, "")) == "") {
			i++
			parts = append(parts, strings.TrimSpace(lines[i]))
		}
		diag = strings.Join(parts, "\n")
		break
	}
	seen := map[string]bool{}
	for _, a := range addrs {
		if seen[strings.ToLower(a)] || len(r.Recipients) >= maxRecipients {
			continue
		}
		seen[strings.ToLower(a)] = true
		rc := ReportRecipient{Address: a, Action: action}
		if diag != "" {
			setDiagnostic(&rc, diag)
		}
		r.Recipients = append(r.Recipients, rc)
	}
	return r
}
