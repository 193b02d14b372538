package relay

import (
	"context"

	"github.com/mailferry/mailferry/smtpclient"
	"github.com/mailferry/mailferry/store"
)

// Client is what a Worker needs of the SMTP client: carry one envelope to
// the first of hosts that takes it, and manage the idle connections it
// keeps. *smtpclient.Client is the one in use; declaring the three methods
// here keeps relay to the client's value types and lets cmd wrap it (a
// client per TLS policy, say) without relay changing.
type Client interface {
	Deliver(ctx context.Context, hosts []Host, env smtpclient.Envelope) smtpclient.Attempt
	CloseIdle()
	SweepIdle()
}

var _ Client = (*smtpclient.Client)(nil)

// IdleTrimmer is a Client that can close its idle connections to a
// destination's hosts down to a count (smtpclient.Client.TrimIdle). A
// Worker whose Client has it counts idle connections against the
// destination's leases, so the MX sees at most max_connections from the
// fleet (relay/slots.go, release).
type IdleTrimmer interface {
	TrimIdle(hosts []string, keep int)
}

var _ IdleTrimmer = (*smtpclient.Client)(nil)

// The client's value types, under the names relay has always used.
type (
	Host    = smtpclient.Host
	Result  = smtpclient.Result
	Attempt = smtpclient.Attempt
)

// recipientOutcome is the store's verdict on one Result, and the only
// place a Result becomes one: 2xx delivered, a permanent failure bounced,
// anything else (4xx, a network error) deferred (README.md, Delivery).
func recipientOutcome(r Result) string {
	switch {
	case r.Permanent:
		return store.RecipientBounced
	case r.Err == nil && r.Code/100 == 2:
		return store.RecipientDelivered
	default:
		return store.RecipientDeferred
	}
}

// Enhanced status codes (RFC 3463) for routing outcomes.
const (
	enhNullMX      = "5.1.10" // RFC 7505 3, 4.1: recipient address has null MX
	enhNoDomain    = "5.1.2"  // RFC 3463 3.2 X.1.2: bad destination system address
	enhNoRoute     = "5.4.4"  // RFC 3463 3.5 X.4.4: unable to route
	enhNoRouteTemp = "4.4.4"
	enhDNSTemp     = "4.4.3" // RFC 3463 3.5 X.4.3: directory server failure
)
