package store

import (
	"errors"
	"fmt"
	"slices"
)

// Bounce types, as recipients.bounce_type and attempts.bounce_type hold
// them (package bounce's Type values).
const (
	BounceHard = "hard"
	BounceSoft = "soft"
)

// BounceSuppressed is the class of a recipient suppressed at accept.
const BounceSuppressed = "suppressed"

// bounceClasses are the failure classes the schema's CHECK allows
// (migrations/0006_bounces.sql; package bounce's Class values). The store
// keeps its own copy, as the database does, so it need not import bounce.
var bounceClasses = [...]string{
	"invalid_recipient", "mailbox_full", "message_too_large", "content_rejected", "spam_block", "policy",
	"auth_failure", "rate_limited", "dns_failure", "tls_failure", "connection_failure", "protocol_error",
	"expired", BounceSuppressed, "other",
}

// checkBounce refuses a class the schema would refuse, a class without a
// type (or the reverse), and a delivery that carries one.
func checkBounce(a Attempt) error {
	var errs []error
	switch a.BounceType {
	case "", BounceHard, BounceSoft:
	default:
		errs = append(errs, fmt.Errorf("bounce type %q is not hard or soft", a.BounceType))
	}
	if a.BounceClass != "" && !slices.Contains(bounceClasses[:], a.BounceClass) {
		errs = append(errs, fmt.Errorf("bounce class %q is not one of the taxonomy", a.BounceClass))
	}
	if (a.BounceType == "") != (a.BounceClass == "") {
		errs = append(errs, errors.New("bounce type and class go together"))
	}
	if a.Outcome == RecipientDelivered && a.BounceType != "" {
		errs = append(errs, errors.New("a delivery has no bounce type or class"))
	}
	return errors.Join(errs...)
}
