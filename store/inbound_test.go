package store

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/internal/wait"
)

// TestInboundLifecycle: a saved report is claimed once while its lease
// holds, claimed again after it lapses (its processor died), and once
// finished it is listed with its status and reason.
func TestInboundLifecycle(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := t.Context()
	var ids []uuid.UUID
	for i := range 3 {
		id, err := s.SaveInbound(ctx, InboundMessage{RemoteIP: netip.MustParseAddr("127.0.0.9"), Helo: "mx.example",
			MailFrom: "", RcptTo: []string{"b-x@bounces.example"}, Body: []byte{'r', byte('0' + i), 0xff, 0}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	first, err := s.ClaimInbound(ctx, 2, time.Hour)
	if err != nil || len(first) != 2 {
		t.Fatalf("claim: %d rows, %v", len(first), err)
	}
	if first[0].ID != ids[0] || first[0].Tries != 1 || string(first[0].Body[:2]) != "r0" || first[0].RemoteIP.String() != "127.0.0.9" {
		t.Errorf("first claim: %+v", first[0])
	}
	second, err := s.ClaimInbound(ctx, 5, time.Millisecond)
	if err != nil || len(second) != 1 || second[0].ID != ids[2] {
		t.Fatalf("second claim took %v, %v; want only the third", second, err)
	}
	// The third's lease of a millisecond lapses: it comes back, tries 2.
	var again []InboundRow
	wait.For(t, "the lapsed lease to be claimable", func() bool {
		again, err = s.ClaimInbound(ctx, 5, time.Hour)
		return err != nil || len(again) > 0
	})
	if len(again) != 1 || again[0].ID != ids[2] || again[0].Tries != 2 {
		t.Fatalf("after the lease lapsed: %+v", again)
	}
	if err := s.FinishInbound(ctx, ids[0], InboundProcessed, "dsn", ""); err != nil {
		t.Fatal(err)
	}
	if err := s.FinishInbound(ctx, ids[1], InboundUnparseable, "", "no delivery-status part"); err != nil {
		t.Fatal(err)
	}
	if err := s.FinishInbound(ctx, ids[2], "pending", "", ""); err == nil {
		t.Error("finishing as pending succeeded")
	}
	bad, next, err := s.ListInbound(ctx, InboundUnparseable, "", 10)
	if err != nil || len(bad) != 1 || next != "" || bad[0].ID != ids[1] || bad[0].Reason != "no delivery-status part" || bad[0].Size != 4 {
		t.Fatalf("unparseable: %+v %q %v", bad, next, err)
	}
	var all []uuid.UUID
	for cursor := ""; ; {
		page, next, err := s.ListInbound(ctx, "", cursor, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page {
			all = append(all, r.ID)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	slices.Reverse(all)
	if !slices.Equal(all, ids) {
		t.Errorf("pages gave %v, want %v newest first", all, ids)
	}
	if _, _, err := s.ListInbound(ctx, "", "garbage", 2); err == nil {
		t.Error("a bad cursor was taken")
	}
}

// TestClaimInboundShared: processes claiming at once get disjoint rows.
func TestClaimInboundShared(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := t.Context()
	const n = 40
	for range n {
		if _, err := s.SaveInbound(ctx, InboundMessage{MailFrom: "", RcptTo: []string{"x@b.example"}, Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	got := make(chan []InboundRow, 4)
	for range 4 {
		go func() {
			var mine []InboundRow
			for {
				rows, err := s.ClaimInbound(ctx, 3, time.Hour)
				if err != nil || len(rows) == 0 {
					got <- mine
					return
				}
				mine = append(mine, rows...)
			}
		}()
	}
	seen := map[uuid.UUID]bool{}
	for range 4 {
		for _, r := range <-got {
			if seen[r.ID] {
				t.Errorf("%s claimed twice", r.ID)
			}
			seen[r.ID] = true
		}
	}
	if len(seen) != n {
		t.Errorf("%d claimed, want %d", len(seen), n)
	}
}

// TestRetryInbound: a claimed report put back comes back after the delay
// asked for, not after its lease; a finished one is never put back.
func TestRetryInbound(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := t.Context()
	id, err := s.SaveInbound(ctx, InboundMessage{RcptTo: []string{"x@b.example"}, Body: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if rows, err := s.ClaimInbound(ctx, 1, time.Hour); err != nil || len(rows) != 1 {
		t.Fatalf("claim: %d, %v", len(rows), err)
	}
	if err := s.RetryInbound(ctx, id, 0); err != nil {
		t.Fatal(err)
	}
	rows, err := s.ClaimInbound(ctx, 1, time.Hour)
	if err != nil || len(rows) != 1 || rows[0].Tries != 2 {
		t.Fatalf("claim after retry: %+v, %v", rows, err)
	}
	if err := s.FinishInbound(ctx, id, InboundProcessed, "dsn", ""); err != nil {
		t.Fatal(err)
	}
	if err := s.RetryInbound(ctx, id, 0); err != nil {
		t.Fatal(err)
	}
	if rows, err := s.ClaimInbound(ctx, 1, time.Hour); err != nil || len(rows) != 0 {
		t.Errorf("a finished report was claimed again: %+v, %v", rows, err)
	}
}
