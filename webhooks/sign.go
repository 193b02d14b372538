// Package webhooks sends Mailferry's events to the webhook endpoints of
// each tenant: signed as Standard Webhooks (webhook-id, webhook-timestamp,
// webhook-signature), at least once, retried on a schedule, under the
// private-destination guard. Senders keep no state of their own: they
// claim due deliveries from the store under a lease, so any number of
// processes share the work and a sender that dies mid-flight leaves its
// deliveries to the others once the lease lapses.
package webhooks

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Standard Webhooks headers.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// secretPrefix marks a signing secret as Standard Webhooks libraries
// expect it: "whsec_" + base64 of the key bytes.
const secretPrefix = "whsec_"

// EncodeSecret formats key bytes as the secret shown to the tenant.
func EncodeSecret(key []byte) string {
	return secretPrefix + base64.StdEncoding.EncodeToString(key)
}

// DecodeSecret is EncodeSecret's inverse.
func DecodeSecret(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, secretPrefix))
	if err != nil || len(b) == 0 {
		return nil, errors.New("not a whsec_ secret")
	}
	return b, nil
}

// Sign returns the webhook-signature value for body sent as id at ts: one
// "v1,<base64 HMAC-SHA256(key, id.timestamp.body)>" per key, separated by
// spaces, so that during a rotation a receiver holding either secret
// verifies it.
func Sign(keys [][]byte, id string, ts time.Time, body []byte) string {
	var b strings.Builder
	unix := strconv.FormatInt(ts.Unix(), 10)
	for i, k := range keys {
		m := hmac.New(sha256.New, k)
		m.Write([]byte(id))
		m.Write([]byte{'.'})
		m.Write([]byte(unix))
		m.Write([]byte{'.'})
		m.Write(body)
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("v1,")
		b.WriteString(base64.StdEncoding.EncodeToString(m.Sum(nil)))
	}
	return b.String()
}
