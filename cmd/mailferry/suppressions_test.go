package main

import (
	"strings"
	"testing"
	"time"

	"github.com/mailferry/mailferry/store"
)

// TestSuppressionsCommand: an operator adds an address (domain
// normalised), sees it in the list with its reason and expiry, and
// removes it; bad input is refused with the reason and changes nothing.
func TestSuppressionsCommand(t *testing.T) {
	c := newCLI(t)
	if _, stderr, err := c.run("migrate"); err != nil {
		t.Fatalf("migrate: %v %s", err, stderr)
	}
	ctx := t.Context()
	st, err := store.Open(ctx, store.Options{URL: c.getenv("MAILFERRY_DATABASE_URL")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, _, err := st.CreateAPIKey(ctx, "acme", []string{"example.com"}); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := c.run("suppressions", "add", "--tenant", "acme", "Bob@Example.NET"); err != nil {
		t.Fatalf("add: %v %s", err, stderr)
	}
	if _, stderr, err := c.run("suppressions", "add", "--tenant", "acme", "--reason", "complaint", "--expires", "720h", "carol@example.net"); err != nil {
		t.Fatalf("add with expiry: %v %s", err, stderr)
	}
	out, stderr, err := c.run("suppressions", "list", "--tenant", "acme")
	if err != nil {
		t.Fatalf("list: %v %s", err, stderr)
	}
	if !strings.Contains(out, "Bob@example.net") || !strings.Contains(out, "manual") || !strings.Contains(out, "never") ||
		!strings.Contains(out, "carol@example.net") || !strings.Contains(out, "complaint") {
		t.Errorf("list:\n%s", out)
	}
	out, _, _ = c.run("suppressions", "list", "--tenant", "acme", "--reason", "complaint")
	if strings.Contains(out, "Bob@") || !strings.Contains(out, "carol@") {
		t.Errorf("list --reason complaint:\n%s", out)
	}
	if out, _, _ := c.run("suppressions", "list", "--tenant", "other"); strings.Contains(out, "@") {
		t.Errorf("another tenant's list:\n%s", out)
	}
	sup, err := st.GetSuppression(ctx, "acme", "carol@example.net")
	if err != nil || sup.ExpiresAt == nil || sup.ExpiresAt.Before(time.Now().Add(719*time.Hour)) {
		t.Errorf("carol's entry %+v %v", sup, err)
	}
	for _, args := range [][]string{
		{"suppressions", "add", "--tenant", "acme", "not-an-address"},
		{"suppressions", "add", "--tenant", "acme", "--reason", "bored", "x@example.net"},
		{"suppressions", "add", "--tenant", "acme", "--expires", "2001-01-01T00:00:00Z", "x@example.net"},
		{"suppressions", "add", "x@example.net"},
		{"suppressions", "remove", "--tenant", "acme", "nobody@example.net"},
	} {
		if _, stderr, err := c.run(args...); err == nil || stderr == "" {
			t.Errorf("%v: %v, stderr %q; want a refusal", args, err, stderr)
		}
	}
	if _, err := st.GetSuppression(ctx, "acme", "x@example.net"); err == nil {
		t.Errorf("a refused add listed the address")
	}
	if _, stderr, err := c.run("suppressions", "remove", "--tenant", "acme", "Bob@example.net"); err != nil {
		t.Fatalf("remove: %v %s", err, stderr)
	}
	if _, err := st.GetSuppression(ctx, "acme", "Bob@example.net"); err == nil {
		t.Errorf("still listed after remove")
	}
}
