package bounce

import (
	"errors"
	"strings"
)

// parseARF reads the body of a message/feedback-report part (RFC 5965
// 3.1): one block of fields. The complained-about recipients are the
// Original-Rcpt-To fields (RFC 5965 3.3, optional, may repeat); without
// them, the To of the embedded message. Original-Mail-From (RFC 5965 3.2)
// is the envelope sender, our return path, which names the message and
// recipient even when the provider has redacted the rest.
func parseARF(body []byte, orig OriginalHeaders) (*Report, error) {
	groups, err := fieldGroups(body)
	if err != nil {
		return nil, err
	}
	if len(groups) == 0 {
		return nil, errors.New("empty feedback report (RFC 5965 3.1)")
	}
	g := groups[0]
	ft := strings.ToLower(firstWord(g.Get("Feedback-Type")))
	if ft == "" {
		return nil, errors.New("no Feedback-Type (RFC 5965 3.1)")
	}
	if !safeText(ft) || len(ft) > 64 {
		return nil, errors.New("bad Feedback-Type")
	}
	r := &Report{Kind: KindARF, Feedback: ft, Original: orig}
	r.ReportingMTA = mtaName(g.Get("Reporting-Mta"))
	if orig.ReturnPath == "" {
		r.Original.ReturnPath = cleanAddress(g.Get("Original-Mail-From"))
	}
	for _, v := range g.Values("Original-Rcpt-To") {
		if len(r.Recipients) >= maxRecipients {
			break
		}
		if a := cleanAddress(v); a != "" {
			r.Recipients = append(r.Recipients, ReportRecipient{Address: a, Action: "complained"})
		}
	}
	if len(r.Recipients) == 0 {
		for _, a := range orig.To {
			r.Recipients = append(r.Recipients, ReportRecipient{Address: a, Action: "complained"})
		}
	}
	if len(r.Recipients) == 0 {
		// Still a complaint: the caller finds the recipient from the
		// return path.
		r.Recipients = []ReportRecipient{{Action: "complained"}}
	}
	return r, nil
}
