package submission_test

import (
	"context"
	"strings"
	"testing"

	"github.com/mailferry/mailferry/store"
)

// TestSubmitSuppressed: over SMTP a message to a suppressed recipient gets
// its 250 all the same; that recipient is recorded suppressed and queued
// for no one, the other goes out.
func TestSubmitSuppressed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := newHarness(t, harnessOptions{})
	if _, _, err := h.store.PutSuppression(ctx, store.Suppression{TenantID: tenant, Email: "gone@example.org", Reason: store.SuppressedHardBounce}); err != nil {
		t.Fatal(err)
	}
	before := h.depth().Ready
	c := h.login()
	msg := "From: Alice <alice@example.com>\r\nTo: bob@example.net, gone@example.org\r\nSubject: Hi\r\n\r\nHello.\r\n"
	id, err := send(c, "bounces@example.com", []string{"bob@example.net", "gone@EXAMPLE.org"}, msg)
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	view, err := h.store.GetMessage(ctx, tenant, id)
	if err != nil {
		t.Fatal(err)
	}
	var rcpts []string
	for _, r := range view.Recipients {
		rcpts = append(rcpts, r.Email+"="+r.Status)
	}
	if got, want := strings.Join(rcpts, " "), "bob@example.net=queued gone@example.org=suppressed"; got != want {
		t.Errorf("recipients %s, want %s", got, want)
	}
	if n := h.depth().Ready - before; n != 1 {
		t.Errorf("%d jobs queued, want 1 (example.net only)", n)
	}
}
