package submission_test

import (
	"context"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/google/uuid"
)

// TestSwaks: an outside client, Debian's swaks, submits over STARTTLS with
// AUTH PLAIN and over implicit TLS with AUTH LOGIN.
func TestSwaks(t *testing.T) {
	t.Parallel()
	bin, err := exec.LookPath("swaks")
	if err != nil {
		t.Fatalf("swaks is not installed (apt-get install -y swaks): %v", err)
	}
	h := newHarness(t, harnessOptions{})
	queued := regexp.MustCompile(`(?m)^<~* *250 2\.0\.0 queued as ([0-9a-f-]{36})\r?$`)
	tests := []struct {
		name string
		args []string
	}{
		{"587 STARTTLS PLAIN", []string{"--server", h.addr, "--tls", "--auth", "PLAIN"}},
		{"465 TLS LOGIN", []string{"--server", h.addrTLS, "--tls-on-connect", "--auth", "LOGIN"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			args := append(tt.args, "--auth-user", tenant, "--auth-password", h.secret,
				"--from", "alice@example.com", "--to", "bob@example.net", "--helo", "client.test")
			out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
			if err != nil {
				t.Fatalf("swaks: %v\n%s", err, out)
			}
			m := queued.FindSubmatch(out)
			if m == nil {
				t.Fatalf("no \"250 2.0.0 queued as <id>\" in the transcript:\n%s", out)
			}
			id := uuid.MustParse(string(m[1]))
			view, err := h.store.GetMessage(ctx, tenant, id)
			if err != nil {
				t.Fatalf("GetMessage(%s): %v", id, err)
			}
			if len(view.Recipients) != 1 || view.Recipients[0].Email != "bob@example.net" {
				t.Errorf("recipients %+v", view.Recipients)
			}
		})
	}
}
