package relay

import (
	"cmp"

	"github.com/mailferry/mailferry/smtpclient"
	"github.com/mailferry/mailferry/store"
)

// requireTLS is the TLS demand a message itself makes: REQUIRETLS (RFC
// 8689) asked for at submission. Domain policies (MTA-STS, DANE) are added
// by the policy layer around the Client (package tlspolicy).
func requireTLS(d *store.Delivery) *smtpclient.TLSRequirement {
	if !d.RequireTLS {
		return nil
	}
	return &smtpclient.TLSRequirement{RequireTLS: true}
}

// tlsPolicyOf is the policy an attempt ran under: what the policy layer
// said, else "none" once a host was reached (a Client without the layer
// does opportunistic TLS), else "" (no host, nothing to say).
func tlsPolicyOf(att Attempt) string {
	if att.Host == "" && att.TLSPolicy == "" {
		return ""
	}
	return cmp.Or(att.TLSPolicy, "none")
}
