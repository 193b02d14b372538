package mail

import (
	"errors"
	"strings"
)

// FieldError says what is wrong with one input field. Field is the JSON path
// of the field ("to[0]", "headers.X-Campaign", "attachments[1].content",
// "raw"). Err, when set, is the kind of problem, one of this package's
// sentinels, for a caller that answers some kinds differently (submission
// replies 5.6.7 to ErrNeedsSMTPUTF8, 5.7.1 to ErrForeignSignature).
type FieldError struct {
	Field  string `json:"field"`
	Detail string `json:"detail"`
	Err    error  `json:"-"`
}

func (e FieldError) Error() string { return e.Field + ": " + e.Detail }

// Kinds of FieldError a caller may tell apart with errors.Is on the
// FieldErrors value.
var (
	// ErrNeedsSMTPUTF8: a raw header has 8-bit octets, but the message
	// was submitted without SMTPUTF8 (BuildOptions.ASCIIHeaders).
	ErrNeedsSMTPUTF8 = errors.New("8-bit header octets without SMTPUTF8")
	// ErrForeignSignature: a raw message carries a DKIM-Signature for a
	// domain it does not claim to come from.
	ErrForeignSignature = errors.New("DKIM-Signature of another domain")
)

// FieldErrors lists every bad field of one submission. Build and ParseRaw
// return it as a value, so errors.As(err, &fieldErrs) finds it, and
// errors.Is(err, ErrNeedsSMTPUTF8) tells whether one field is of that kind.
type FieldErrors []FieldError

func (e FieldErrors) Error() string {
	var b strings.Builder
	for i, f := range e {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(f.Field)
		b.WriteString(": ")
		b.WriteString(f.Detail)
	}
	return b.String()
}

// Unwrap gives the kinds of the fields that have one.
func (e FieldErrors) Unwrap() []error {
	var out []error
	for _, f := range e {
		if f.Err != nil {
			out = append(out, f.Err)
		}
	}
	return out
}

func (e *FieldErrors) add(field, detail string) {
	*e = append(*e, FieldError{Field: field, Detail: detail})
}

func (e *FieldErrors) addKind(field, detail string, kind error) {
	*e = append(*e, FieldError{Field: field, Detail: detail, Err: kind})
}
