package api_test

import (
	"net/http"
	"testing"
)

// TestSendRequireTLS: "require_tls" is stored with the message for the
// worker; absent or false stores false; a wrong type is refused.
func TestSendRequireTLS(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOptions{})
	for _, tc := range []struct {
		name   string
		body   map[string]any
		status int
		want   bool
	}{
		{"true", with("require_tls", true), http.StatusAccepted, true},
		{"false", with("require_tls", false), http.StatusAccepted, false},
		{"absent", with(), http.StatusAccepted, false},
		{"not a boolean", with("require_tls", "yes"), http.StatusBadRequest, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.post(tc.body, nil)
			if r.status != tc.status {
				t.Fatalf("POST: %d %s, want %d", r.status, r.body, tc.status)
			}
			if tc.status != http.StatusAccepted {
				return
			}
			var sent sendAnswer
			r.json(t, &sent)
			var got bool
			if err := h.db.QueryRow(t.Context(), `SELECT require_tls FROM messages WHERE id = $1`, mustUUID(t, sent.ID)).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("require_tls stored %v, want %v", got, tc.want)
			}
		})
	}
}
