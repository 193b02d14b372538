// Package tlspolicy decides how securely a message must travel to a
// destination: DANE (RFC 7672), MTA-STS (RFC 8461), REQUIRETLS (RFC 8689)
// and the TLS-Required header (RFC 8689 5). Client wraps the SMTP client:
// before a transaction it looks up the recipient domain's policy, narrows
// the MX hosts to those the policy allows and hands smtpclient a
// TLSRequirement, so that a policy is never met in plaintext or with an
// unverified host. Every attempt under a policy is counted for TLS-RPT
// (RFC 8460), and Reporter sends the daily reports.
//
// The policy code is written here rather than imported from mox's mtasts,
// dane and tlsrpt packages: mox v0.0.17 pulls in its whole module graph,
// and what is needed — a record and policy parser, a wildcard match, a
// guarded HTTPS fetch, TLSA matching and a report struct — is small and
// checked against the RFCs' grammar and rules by the tests and fuzz
// targets. DANE trusts the AD bit of a validating resolver (dane.go) rather
// than validating with mjl-/adns. Policies and counts live in PostgreSQL
// (store/tlspolicy.go) so the whole fleet shares one fetch and one report.
package tlspolicy
