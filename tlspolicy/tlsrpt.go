package tlspolicy

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/mailferry/mailferry/store"
)

// Report is an aggregate TLS report (RFC 8460 4.4).
type Report struct {
	OrganizationName string         `json:"organization-name"`
	DateRange        ReportRange    `json:"date-range"`
	ContactInfo      string         `json:"contact-info"`
	ReportID         string         `json:"report-id"`
	Policies         []ReportPolicy `json:"policies"`
}

// ReportRange is the report's period (RFC 8460 4.4: RFC 3339 date-times).
type ReportRange struct {
	Start string `json:"start-datetime"`
	End   string `json:"end-datetime"`
}

// ReportPolicy is one policy's summary and failures.
type ReportPolicy struct {
	Policy         ReportPolicyID  `json:"policy"`
	Summary        ReportSummary   `json:"summary"`
	FailureDetails []FailureDetail `json:"failure-details,omitempty"`
}

// ReportPolicyID names the policy (RFC 8460 4.4: policy-type sts, tlsa or
// no-policy-found).
type ReportPolicyID struct {
	Type   string   `json:"policy-type"`
	String []string `json:"policy-string,omitempty"`
	Domain string   `json:"policy-domain"`
	MXHost []string `json:"mx-host,omitempty"`
}

// ReportSummary counts sessions.
type ReportSummary struct {
	Successful int64 `json:"total-successful-session-count"`
	Failure    int64 `json:"total-failure-session-count"`
}

// FailureDetail is one result type at one MX host (RFC 8460 4.4).
type FailureDetail struct {
	ResultType  string `json:"result-type"`
	MXHost      string `json:"receiving-mx-hostname,omitempty"`
	FailedCount int64  `json:"failed-session-count"`
}

// ParseTLSRPT reads a _smtp._tls TXT record (RFC 8460 3): "v=TLSRPTv1;
// rua=<uri>[,<uri>]". Only mailto: and https: URIs are returned.
func ParseTLSRPT(txt string) ([]*url.URL, error) {
	fields := strings.Split(txt, ";")
	if strings.TrimSpace(fields[0]) != "v=TLSRPTv1" {
		return nil, errors.New(`TLS-RPT record does not start with "v=TLSRPTv1"`)
	}
	var out []*url.URL
	for _, f := range fields[1:] {
		k, v, ok := strings.Cut(strings.TrimSpace(f), "=")
		if !ok || strings.TrimSpace(k) != "rua" {
			continue
		}
		for _, u := range strings.Split(v, ",") {
			p, err := url.Parse(strings.TrimSpace(u))
			if err != nil || (p.Scheme != "mailto" && p.Scheme != "https") {
				continue
			}
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("TLS-RPT record has no usable rua")
	}
	return out, nil
}

// Mailer sends a report by mail through Mailferry's own queue (cmd wires
// it to intake, so it is DKIM-signed like any message).
type Mailer interface {
	MailReport(ctx context.Context, from, to string, raw []byte) error
}

// ReporterOptions configure a Reporter.
type ReporterOptions struct {
	Store *store.Store
	// From is MAILFERRY_TLSRPT_FROM; its domain is the organization.
	From   string
	Mailer Mailer
	// DNSServer, ResolvConf, AllowPrivate, RootCAs and HTTPSPort are as in
	// Options; the POST to an https: rua goes through the same guard.
	DNSServer, ResolvConf string
	AllowPrivate          bool
	RootCAs               *x509.CertPool
	HTTPSPort             int
	Timeout               time.Duration
	Logger                *slog.Logger
	Now                   func() time.Time
}

// Reporter sends each policy domain's daily report (RFC 8460 4.1).
type Reporter struct {
	opts ReporterOptions
	res  *resolver
	http *http.Client
}

// NewReporter checks opts.
func NewReporter(opts ReporterOptions) (*Reporter, error) {
	if opts.Store == nil || opts.From == "" || !strings.Contains(opts.From, "@") {
		return nil, errors.New("tlspolicy: reporter needs Store and a From address")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.ResolvConf == "" {
		opts.ResolvConf = "/etc/resolv.conf"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	res, err := newResolver(opts.DNSServer, opts.ResolvConf, opts.Timeout)
	if err != nil {
		return nil, fmt.Errorf("tlspolicy: %w", err)
	}
	return &Reporter{opts: opts, res: res, http: guardedClient(res, opts.AllowPrivate, opts.RootCAs, opts.HTTPSPort, opts.Timeout)}, nil
}

// Run sends the reports of each finished UTC day, checking every every,
// until ctx ends.
func (r *Reporter) Run(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		yesterday := r.opts.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -1)
		if n, err := r.SendDay(ctx, yesterday); err != nil {
			r.opts.Logger.WarnContext(ctx, "TLS-RPT reports", "day", yesterday.Format(time.DateOnly), "sent", n, "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// SendDay sends the reports of day not yet claimed by another process and
// returns how many it sent.
func (r *Reporter) SendDay(ctx context.Context, day time.Time) (int, error) {
	day = day.UTC().Truncate(24 * time.Hour)
	domains, err := r.opts.Store.TLSReportDomains(ctx, day)
	if err != nil {
		return 0, err
	}
	var errs []error
	sent := 0
	for _, d := range domains {
		won, err := r.opts.Store.ClaimTLSReport(ctx, day, d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !won {
			continue // another process has it
		}
		if err := r.send(ctx, day, d); err != nil {
			// Claimed and not sent: RFC 8460 5.4 asks for best effort, not
			// retries for ever; the failure is logged.
			errs = append(errs, fmt.Errorf("%s: %w", d, err))
			continue
		}
		sent++
	}
	return sent, errors.Join(errs...)
}

// BuildReport gathers domain's counts for day into a report.
func (r *Reporter) BuildReport(ctx context.Context, day time.Time, domain string) (Report, error) {
	counts, err := r.opts.Store.TLSResultCounts(ctx, domain, day, day.AddDate(0, 0, 1))
	if err != nil {
		return Report{}, err
	}
	id := make([]byte, 8)
	rand.Read(id)
	org := r.opts.From[strings.LastIndexByte(r.opts.From, '@')+1:]
	rep := Report{
		OrganizationName: org,
		DateRange: ReportRange{Start: day.Format(time.RFC3339),
			End: day.Add(24*time.Hour - time.Second).Format(time.RFC3339)},
		ContactInfo: r.opts.From,
		ReportID:    day.Format("2006-01-02") + "_" + domain + "_" + hex.EncodeToString(id),
	}
	byType := map[string]*ReportPolicy{}
	for _, c := range counts {
		p := byType[c.PolicyType]
		if p == nil {
			p = &ReportPolicy{Policy: ReportPolicyID{Type: c.PolicyType, Domain: domain}}
			if c.PolicyType == "sts" {
				if sp, err := r.opts.Store.STSPolicy(ctx, domain); err == nil && sp != nil {
					// RFC 8460 4.4: the policy as fetched, one line per string.
					p.Policy.String = append([]string{"version: STSv1", "mode: " + sp.Mode},
						append(mxLines(sp.MX), "max_age: "+strconv.FormatInt(int64(sp.MaxAge/time.Second), 10))...)
					p.Policy.MXHost = sp.MX
				}
			}
			byType[c.PolicyType] = p
		}
		if c.Result == "" {
			p.Summary.Successful += c.Count
			continue
		}
		p.Summary.Failure += c.Count
		p.FailureDetails = append(p.FailureDetails, FailureDetail{ResultType: c.Result, MXHost: c.MXHost, FailedCount: c.Count})
	}
	for _, t := range []string{"tlsa", "sts", "no-policy-found"} {
		if p := byType[t]; p != nil {
			rep.Policies = append(rep.Policies, *p)
		}
	}
	return rep, nil
}

func mxLines(mx []string) []string {
	out := make([]string, len(mx))
	for i, m := range mx {
		out[i] = "mx: " + m
	}
	return out
}

func (r *Reporter) send(ctx context.Context, day time.Time, domain string) error {
	txts, err := r.res.txt(ctx, "_smtp._tls."+domain)
	if err != nil {
		if errors.Is(err, errNXDomain) {
			return nil // no TLS-RPT record: nobody asked for a report
		}
		return err
	}
	var ruas []*url.URL
	for _, t := range txts {
		if strings.HasPrefix(t, "v=TLSRPTv1") {
			if ruas, err = ParseTLSRPT(t); err != nil {
				return err
			}
			break
		}
	}
	if len(ruas) == 0 {
		return nil
	}
	rep, err := r.BuildReport(ctx, day, domain)
	if err != nil {
		return err
	}
	js, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(js)
	if err := zw.Close(); err != nil {
		return err
	}
	var errs []error
	for _, u := range ruas {
		switch u.Scheme {
		case "https":
			errs = append(errs, r.post(ctx, u, gz.Bytes()))
		case "mailto":
			if r.opts.Mailer == nil {
				errs = append(errs, fmt.Errorf("%s: no mailer", u))
				continue
			}
			errs = append(errs, r.opts.Mailer.MailReport(ctx, r.opts.From, u.Opaque, reportMessage(r.opts.From, u.Opaque, domain, rep, gz.Bytes())))
		}
	}
	return errors.Join(errs...)
}

// post delivers the report to an https: rua (RFC 8460 5.4).
func (r *Reporter) post(ctx context.Context, u *url.URL, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/tlsrpt+gzip")
	resp, err := r.http.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", u, err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: HTTP %d", u, resp.StatusCode)
	}
	return nil
}

// reportMessage is the mail form of a report (RFC 8460 5.3):
// multipart/report with report-type "tlsrpt", the gzipped JSON attached.
func reportMessage(from, to, domain string, rep Report, gz []byte) []byte {
	boundary := "tlsrpt-" + rep.ReportID
	submitter := from[strings.LastIndexByte(from, '@')+1:]
	var b strings.Builder
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\n", from, to)
	fmt.Fprintf(&b, "Subject: Report Domain: %s Submitter: %s Report-ID: <%s>\r\n", domain, submitter, rep.ReportID)
	fmt.Fprintf(&b, "TLS-Report-Domain: %s\r\nTLS-Report-Submitter: %s\r\n", domain, submitter)
	// RFC 8460 5.3: reports go even over a broken TLS path.
	b.WriteString("TLS-Required: No\r\nMIME-Version: 1.0\r\n")
	fmt.Fprintf(&b, "Content-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"%s\"\r\n\r\n", boundary)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n", boundary)
	fmt.Fprintf(&b, "TLS report for %s from %s, %s to %s.\r\n\r\n", domain, submitter, rep.DateRange.Start, rep.DateRange.End)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: application/tlsrpt+gzip\r\nContent-Transfer-Encoding: base64\r\n", boundary)
	fmt.Fprintf(&b, "Content-Disposition: attachment; filename=\"%s!%s!%d!%d.json.gz\"\r\n\r\n", submitter, domain,
		mustUnix(rep.DateRange.Start), mustUnix(rep.DateRange.End))
	enc := base64Lines(gz)
	b.WriteString(enc)
	fmt.Fprintf(&b, "--%s--\r\n", boundary)
	return []byte(b.String())
}

func mustUnix(s string) int64 {
	t, _ := time.Parse(time.RFC3339, s)
	return t.Unix()
}

// base64Lines encodes b in lines of 76 characters (RFC 2045 6.8).
func base64Lines(b []byte) string {
	s := base64.StdEncoding.EncodeToString(b)
	var out strings.Builder
	for len(s) > 76 {
		out.WriteString(s[:76] + "\r\n")
		s = s[76:]
	}
	out.WriteString(s + "\r\n")
	return out.String()
}
