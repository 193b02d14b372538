package webhooks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/mailferry/mailferry/netguard"
)

// maxURLLength bounds an endpoint URL.
const maxURLLength = 2048

// CheckURL checks an endpoint URL as the API takes it: absolute, https
// (http too when private destinations are allowed, for tests), with a
// host, without user info or fragment; a literal address must be public
// unless allowPrivate. A name is checked again at every send, on the
// addresses it resolves to then (Transport).
func CheckURL(raw string, allowPrivate bool) (*url.URL, error) {
	if len(raw) > maxURLLength {
		return nil, fmt.Errorf("longer than %d bytes", maxURLLength)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errors.New("not a URL")
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && allowPrivate:
	case u.Scheme == "http":
		return nil, errors.New("must be https")
	default:
		return nil, fmt.Errorf("scheme %q is not https", u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, errors.New("has no host")
	}
	if u.User != nil {
		return nil, errors.New("must not carry user info")
	}
	if u.Fragment != "" || u.Opaque != "" {
		return nil, errors.New("must not have a fragment")
	}
	if a, err := netip.ParseAddr(u.Hostname()); err == nil && !allowPrivate {
		if err := netguard.Check(a); err != nil {
			return nil, err
		}
	}
	return u, nil
}

// TransportOptions configures Transport.
type TransportOptions struct {
	AllowPrivate bool
	// DNSServer is host:port of the resolver (MAILFERRY_DNS_SERVER); "":
	// the system's.
	DNSServer string
	// DialTimeout bounds one connect; default 5 s.
	DialTimeout time.Duration
}

// Transport returns the HTTP transport webhooks go through. Its dialer
// resolves the host itself, drops the addresses the guard refuses, and
// dials the address it checked, never the name again; and netguard.Control
// checks the socket address once more just before connect(2). So a DNS
// answer that changes between the check and the connect (rebinding) cannot
// reach a private address. It takes no proxy from the environment: a proxy
// would do the connecting, past the guard.
func Transport(opts TransportOptions) *http.Transport {
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 5 * time.Second
	}
	res := &net.Resolver{PreferGo: true}
	if opts.DNSServer != "" {
		var d net.Dialer
		res.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, opts.DNSServer)
		}
	}
	g := &guardedDialer{allowPrivate: opts.AllowPrivate, resolver: res,
		dialer: &net.Dialer{Timeout: opts.DialTimeout}}
	if !opts.AllowPrivate {
		g.dialer.ControlContext = netguard.Control
	}
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           g.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
	}
}

type guardedDialer struct {
	allowPrivate bool
	resolver     *net.Resolver
	dialer       *net.Dialer
}

// DialContext resolves addr's host, keeps the addresses the guard allows,
// and dials them in turn by address.
func (g *guardedDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("port %q: %w", p, err)
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else {
		addrs, err = g.resolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", host, err)
		}
	}
	var refused []error
	var errs []error
	for _, a := range addrs {
		a = a.Unmap()
		if !g.allowPrivate {
			if err := netguard.Check(a); err != nil {
				refused = append(refused, err)
				continue
			}
		}
		c, err := g.dialer.DialContext(ctx, network, netip.AddrPortFrom(a, uint16(port)).String())
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 && len(refused) > 0 {
		return nil, fmt.Errorf("%s: %w", host, errors.Join(refused...))
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("%s: no address", host)
	}
	return nil, errors.Join(append(errs, refused...)...)
}

// scrub drops the URL from an HTTP client error: the query of an endpoint
// URL may hold the receiver's own token.
func scrub(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	s := err.Error()
	if errors.Is(err, context.DeadlineExceeded) || strings.Contains(s, "Client.Timeout") {
		return "timeout"
	}
	return s
}
