// Package smtpclient delivers a message over SMTP to the first of a list of
// hosts that will take it: dial with a context, EHLO, STARTTLS, AUTH for a
// smarthost, and MAIL/RCPT/DATA with a Result per recipient. It keeps idle
// connections for the next message to the same host and needs nothing of
// the queue or the ledger.
//
// It is written on net, bufio and crypto/tls rather than around
// emersion/go-smtp's client, for three reasons. PIPELINING (RFC 2920) needs
// control over when replies are read: MAIL, every RCPT and DATA go out in
// one write and their replies are read in order, which go-smtp's
// command-at-a-time API cannot express. STARTTLS needs a fresh reader over
// the TLS stream, so that bytes a man in the middle slipped in before the
// handshake are dropped (RFC 3207 4.2); go-smtp offers that only after an
// EHLO with its own name, which forced a synthetic-greeting trick. And every
// reply goes through one bounded parser (reply.go), so a hostile server
// costs a deferral, never unbounded memory.
//
// The message body is read from a Body that can be opened again for each
// host and each transaction, and is normalised (bare CR and LF become CRLF)
// and dot-stuffed while it streams: no copy of the message is made.
package smtpclient
