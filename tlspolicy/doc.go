// Package tlspolicy decides how securely a message must travel to a
// destination: MTA-STS (RFC 8461), REQUIRETLS (RFC 8689) and the TLS-Required
// header (RFC 8689 5). Client wraps the SMTP client: before a transaction it
// looks up the recipient domain's policy, narrows the MX hosts to those the
// policy names and hands smtpclient a TLSRequirement, so that a policy in
// enforce mode is never delivered in plaintext or to an unverified host.
//
// The MTA-STS code is written here rather than imported from mox's mtasts
// package: mox pulls in its whole module graph, and what is needed — a
// record and policy parser, a wildcard match and a guarded HTTPS fetch — is
// small and checked against RFC 8461's grammar by the tests and a fuzz
// target. Policies are cached in PostgreSQL (store.STSPolicy) so the whole
// fleet shares one fetch.
package tlspolicy
