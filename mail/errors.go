package mail

import "strings"

// FieldError says what is wrong with one input field. Field is the JSON path
// of the field ("to[0]", "headers.X-Campaign", "attachments[1].content",
// "raw").
type FieldError struct {
	Field  string `json:"field"`
	Detail string `json:"detail"`
}

func (e FieldError) Error() string { return e.Field + ": " + e.Detail }

// FieldErrors lists every bad field of one submission. Build and ParseRaw
// return it as a value, so errors.As(err, &fieldErrs) finds it.
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

func (e *FieldErrors) add(field, detail string) {
	*e = append(*e, FieldError{Field: field, Detail: detail})
}
