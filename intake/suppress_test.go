package intake_test

import (
	"context"
	"testing"
	"time"

	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/teststack"
	"github.com/mailferry/mailferry/store"
)

// TestAcceptSuppressed: a recipient on the tenant's list is accepted as
// suppressed and gets no job; a domain with others still gets one; another
// tenant's list and an expired entry suppress nothing; a message with
// every recipient suppressed is accepted and queues nothing.
func TestAcceptSuppressed(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, teststack.Options{})
		ctx := context.Background()
		past := time.Now().Add(-time.Hour)
		for _, sup := range []store.Suppression{
			{TenantID: f.key.TenantID, Email: "gone@one.example", Reason: store.SuppressedHardBounce},
			{TenantID: f.key.TenantID, Email: "Gone@two.example", Reason: store.SuppressedManual},
			{TenantID: f.key.TenantID, Email: "old@two.example", Reason: store.SuppressedManual, ExpiresAt: &past},
		} {
			if _, _, err := f.st.PutSuppression(ctx, sup); err != nil {
				t.Fatal(err)
			}
		}
		otherKey, _, err := f.st.CreateAPIKey(ctx, "other", []string{"example.com"})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := f.st.PutSuppression(ctx, store.Suppression{TenantID: otherKey.TenantID, Email: "ok@three.example", Reason: store.SuppressedManual}); err != nil {
			t.Fatal(err)
		}

		tests := []struct {
			name       string
			to         []string
			suppressed map[string]string
			jobs       int
		}{
			{"one of two in a domain", []string{"gone@ONE.example", "ok@one.example"},
				map[string]string{"gone@one.example": store.SuppressedHardBounce}, 1},
			{"a whole domain", []string{"Gone@two.example", "ok@one.example"},
				map[string]string{"Gone@two.example": store.SuppressedManual}, 1},
			{"local part differs in case", []string{"gone@two.example"}, nil, 1},
			{"expired entry", []string{"old@two.example"}, nil, 1},
			{"another tenant's entry", []string{"ok@three.example"}, nil, 1},
			{"every recipient", []string{"gone@one.example", "Gone@two.example"},
				map[string]string{"gone@one.example": store.SuppressedHardBounce, "Gone@two.example": store.SuppressedManual}, 0},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				before, err := f.q.Depth(ctx)
				if err != nil {
					t.Fatal(err)
				}
				s := f.submission(t, tt.to...)
				r, err := f.in.NewReceipt(s)
				if err != nil {
					t.Fatal(err)
				}
				got, err := f.in.Accept(ctx, r, s)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != len(tt.suppressed) {
					t.Errorf("suppressed %v, want %v", got, tt.suppressed)
				}
				for _, g := range got {
					if tt.suppressed[g.Email] != g.Reason {
						t.Errorf("suppressed %s (%s), want %v", g.Email, g.Reason, tt.suppressed)
					}
				}
				after, err := f.q.Depth(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if n := int(after.Ready - before.Ready); n != tt.jobs {
					t.Errorf("%d jobs queued, want %d", n, tt.jobs)
				}
				v, err := f.st.GetMessage(ctx, f.key.TenantID, r.ID)
				if err != nil {
					t.Fatal(err)
				}
				for _, rc := range v.Recipients {
					want := store.RecipientQueued
					if tt.suppressed[rc.Email] != "" {
						want = store.RecipientSuppressed
					}
					if rc.Status != want {
						t.Errorf("%s is %s, want %s", rc.Email, rc.Status, want)
					}
				}
			})
		}
	})
}

// TestSubmitIdempotentSuppressed: the answer stored with the key is built
// after the lookup, so it names the suppressed recipient.
func TestSubmitIdempotentSuppressed(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, teststack.Options{})
		ctx := context.Background()
		if _, _, err := f.st.PutSuppression(ctx, store.Suppression{TenantID: f.key.TenantID, Email: "gone@one.example", Reason: store.SuppressedComplaint}); err != nil {
			t.Fatal(err)
		}
		s := f.submission(t, "gone@one.example")
		r, err := f.in.NewReceipt(s)
		if err != nil {
			t.Fatal(err)
		}
		var seen []string
		existing, err := f.in.SubmitIdempotent(ctx, r, s, store.Idempotency{Key: "k1", Status: 202},
			func(sup []intake.Suppression) ([]byte, error) {
				for _, x := range sup {
					seen = append(seen, x.Email+" "+x.Reason)
				}
				return []byte(`{}`), nil
			})
		if err != nil || existing != nil {
			t.Fatalf("submit: %v %v", existing, err)
		}
		if len(seen) != 1 || seen[0] != "gone@one.example complaint" {
			t.Errorf("answer given %v", seen)
		}
		d, err := f.q.Depth(ctx)
		if err != nil || d.Ready != 0 {
			t.Errorf("jobs %+v %v, want none", d, err)
		}
	})
}
