package intake_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/mail"
)

func TestCheckSenders(t *testing.T) {
	t.Parallel()
	allowed := []string{"example.com", "example.org"}
	for _, tc := range []struct {
		name   string
		raw    string
		sender string // envelope, "" keeps what ParseRaw chose
		want   []intake.RefusedSender
	}{
		{"own domain", "From: a@example.com\r\n", "", nil},
		{"case differs", "From: a@EXAMPLE.com\r\n", "", nil},
		{"second domain", "From: a@example.org\r\n", "", nil},
		{"foreign From", "From: a@evil.example\r\n", "", []intake.RefusedSender{{Domain: "evil.example", Where: "From header"}}},
		{"foreign Sender", "From: a@example.com\r\nSender: s@evil.example\r\n", "", []intake.RefusedSender{{Domain: "evil.example", Where: "Sender header"}}},
		{"foreign Resent-From", "From: a@example.com\r\nResent-From: r@evil.example\r\n", "", []intake.RefusedSender{{Domain: "evil.example", Where: "Resent-From or Resent-Sender header"}}},
		{"foreign envelope", "From: a@example.com\r\n", "bounce@evil.example", []intake.RefusedSender{{Domain: "evil.example", Where: "envelope sender"}}},
		{"two foreign", "From: a@one.example\r\nSender: s@two.example\r\n", "", []intake.RefusedSender{
			{Domain: "one.example", Where: "From header"}, {Domain: "two.example", Where: "Sender header"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := tc.raw + "To: b@example.net\r\nSubject: x\r\n\r\nbody\r\n"
			msg, err := mail.ParseRaw([]byte(raw), nil, mail.BuildOptions{Hostname: "relay.test"})
			if err != nil {
				t.Fatal(err)
			}
			if tc.sender != "" {
				msg.Sender = tc.sender
			}
			err = intake.CheckSenders(allowed, msg)
			var se *intake.SenderError
			if tc.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.As(err, &se) {
				t.Fatalf("got %v, want a *SenderError", err)
			}
			if !reflect.DeepEqual(se.Refused, tc.want) {
				t.Errorf("refused %+v, want %+v", se.Refused, tc.want)
			}
		})
	}
}
