package tlspolicy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/mailferry/mailferry/netguard"
)

// maxPolicyBody caps a policy body: RFC 8461 3.3 lets senders limit it,
// and 64 KB is far above any real policy.
const maxPolicyBody = 64 << 10

// fetcher gets policies over HTTPS (RFC 8461 3.3).
type fetcher struct {
	client *http.Client
}

// newFetcher builds an HTTPS client that resolves names with res, dials
// only addresses the private-destination guard allows (unless
// allowPrivate), and verifies certificates against roots (nil: the system
// pool, which honours SSL_CERT_FILE). port, unless 0, replaces the URL's
// port (tests).
func newFetcher(res *resolver, allowPrivate bool, roots *x509.CertPool, port int, timeout time.Duration) *fetcher {
	return &fetcher{client: guardedClient(res, allowPrivate, roots, port, timeout)}
}

func guardedClient(res *resolver, allowPrivate bool, roots *x509.CertPool, port int, timeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: timeout}
	if !allowPrivate {
		d.ControlContext = netguard.Control // defence in depth
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, p, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		dport := port
		if dport == 0 {
			n, err := strconv.Atoi(p)
			if err != nil {
				return nil, fmt.Errorf("port %q: %w", p, err)
			}
			dport = n
		}
		ips, err := res.addrs(ctx, host)
		if err != nil {
			return nil, err
		}
		var errs []error
		for _, ip := range ips {
			if !allowPrivate {
				if err := netguard.Check(ip); err != nil {
					errs = append(errs, err)
					continue
				}
			}
			// The checked address is the one dialled: no second lookup
			// an attacker's DNS could answer differently.
			c, err := d.DialContext(ctx, network, netip.AddrPortFrom(ip, uint16(dport)).String())
			if err == nil {
				return c, nil
			}
			errs = append(errs, err)
		}
		return nil, errors.Join(errs...)
	}
	tr := &http.Transport{
		DialContext:           dial,
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		DisableKeepAlives:     true,
		Proxy:                 nil, // RFC 8461 3.3 names the host; no proxy in between
	}
	return &http.Client{
		Transport: tr,
		Timeout:   timeout,
		// RFC 8461 3.3: "HTTP 3xx redirects MUST NOT be followed"; nor
		// does a TLS-RPT POST follow one (RFC 8460 5.4).
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// fetch gets and parses domain's policy from
// https://mta-sts.<domain>/.well-known/mta-sts.txt (RFC 8461 3.3).
func (f *fetcher) fetch(ctx context.Context, domain string) (Policy, error) {
	url := "https://mta-sts." + domain + "/.well-known/mta-sts.txt"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return Policy{}, fmt.Errorf("fetch %s: %w", url, err)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return Policy{}, fmt.Errorf("fetch %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// RFC 8461 3.3: only 200 is a policy.
		return Policy{}, fmt.Errorf("fetch %s: HTTP %d", url, resp.StatusCode)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "text/plain" {
		return Policy{}, fmt.Errorf("fetch %s: media type %q, want text/plain (RFC 8461 3.2)", url, resp.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxPolicyBody+1))
	if err != nil {
		return Policy{}, fmt.Errorf("fetch %s: %w", url, err)
	}
	if len(body) > maxPolicyBody {
		return Policy{}, fmt.Errorf("fetch %s: body over %s bytes", url, strconv.Itoa(maxPolicyBody))
	}
	p, err := ParsePolicy(string(body))
	if err != nil {
		return Policy{}, &policyError{typ: "sts-policy-invalid", err: fmt.Errorf("fetch %s: %w", url, err)}
	}
	return p, nil
}

// policyError is a failed fetch with its TLS-RPT result type (RFC 8460
// 4.3.2).
type policyError struct {
	typ string
	err error
}

func (e *policyError) Error() string { return e.err.Error() }
func (e *policyError) Unwrap() error { return e.err }

// fetchResultType names a fetch failure for TLS-RPT: the policy did not
// parse, the HTTPS certificate did not verify, or anything else.
func fetchResultType(err error) string {
	var pe *policyError
	var cv *tls.CertificateVerificationError
	switch {
	case errors.As(err, &pe):
		return pe.typ
	case errors.As(err, &cv):
		return "sts-webpki-invalid"
	}
	return "sts-policy-fetch-error"
}
