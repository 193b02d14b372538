package submission_test

import (
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

// TestRequireTLS: REQUIRETLS (RFC 8689 2) is offered only after STARTTLS,
// and a message sent with it is stored as needing it.
func TestRequireTLS(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	r := dialRaw(t, h.addr, nil)
	if got := r.cmd("EHLO client.test"); strings.Contains(got, "REQUIRETLS") {
		t.Errorf("REQUIRETLS offered before STARTTLS: %q", got)
	}
	r.startTLS(h.tls)
	if got := r.cmd("EHLO client.test"); !strings.Contains(got, "REQUIRETLS") {
		t.Errorf("REQUIRETLS not offered after STARTTLS: %q", got)
	}

	for _, tc := range []struct {
		name string
		opts *smtp.MailOptions
		want bool
	}{
		{"with REQUIRETLS", &smtp.MailOptions{RequireTLS: true}, true},
		{"without", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := h.login()
			id, err := sendWith(c, tc.opts, "alice@example.com", []string{"bob@example.net"},
				message("alice@example.com", "bob@example.net", tc.name))
			if err != nil {
				t.Fatal(err)
			}
			d, err := h.store.LoadDelivery(t.Context(), id, "example.net")
			if err != nil {
				t.Fatal(err)
			}
			if d.RequireTLS != tc.want {
				t.Errorf("stored require_tls %v, want %v", d.RequireTLS, tc.want)
			}
		})
	}
}
