// Package mail turns what a client submits into the message Mailferry stores
// and sends: it parses and checks addresses, builds an RFC 5322 message with
// its MIME structure from a JSON Draft (Build), and checks and normalises a
// ready message (ParseRaw): CRLF line endings, line lengths, no Bcc header,
// Date and Message-ID present.
//
// Validation failures come back as FieldErrors naming each bad field by its
// JSON path, so the API can list them all in one answer.
//
// The package does no I/O and keeps no mutable package-level state; it is
// safe for concurrent use.
package mail
