// Package submission is Mailferry's SMTP message submission server (RFC
// 6409): applications and framework mailers that speak SMTP rather than the
// HTTP API hand their mail in here, and it takes the same path as the API's
// — one shared intake records it in PostgreSQL and queues it in Redis.
//
// Two listeners share one server: port 587 offers STARTTLS (RFC 3207) and
// port 465 speaks TLS from the first byte (RFC 8314 3.3). AUTH PLAIN and
// LOGIN (RFC 4954) are accepted only under TLS; the user name is the tenant
// and the password an API key of that tenant. MAIL FROM and every sender
// the message names (From, Sender) must be in the key's domains, as in the
// API. The reply to DATA or BDAT LAST names the message's id, so the status
// endpoint GET /v1/messages/{id} answers for it.
//
// The protocol itself (command parsing, PIPELINING, CHUNKING, SIZE,
// 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES) is emersion/go-smtp's server;
// this package adds authentication, sender policy, a connection limit,
// timeouts, a per-address limit on failed logins, graceful shutdown and
// metrics.
package submission
