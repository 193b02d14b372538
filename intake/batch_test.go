package intake_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/teststack"
	"github.com/mailferry/mailferry/mail"
)

// TestAcceptAll: a batch is written in one transaction, in order, each
// message answered alone; an empty batch is no work.
func TestAcceptAll(t *testing.T) {
	t.Parallel()
	testenv.EachRedis(t, func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, teststack.Options{})
		if sup, errs := f.in.AcceptAll(t.Context(), nil, nil); len(sup) != 0 || len(errs) != 0 {
			t.Fatalf("empty batch: %v %v", sup, errs)
		}
		var rs []intake.Receipt
		var ss []intake.Submission
		for i := range 50 {
			s := f.submission(t, fmt.Sprintf("u%d@example.net", i))
			r, err := f.in.NewReceipt(s)
			if err != nil {
				t.Fatal(err)
			}
			rs, ss = append(rs, r), append(ss, s)
		}
		_, errs := f.in.AcceptAll(t.Context(), rs, ss)
		for i, err := range errs {
			if err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
			if !f.stored(t, rs[i].ID) {
				t.Fatalf("message %d not stored", i)
			}
		}
	})
}

// BenchmarkBatchVersusSingles accepts 100 messages as one AcceptAll and
// as 100 concurrent Accept calls (group-committed as they arrive); the
// report is messages a second.
func BenchmarkBatchVersusSingles(b *testing.B) {
	ts := teststack.New(b, teststack.Options{})
	key, _, err := ts.Store.CreateAPIKey(context.Background(), "acme", []string{"example.com"})
	if err != nil {
		b.Fatal(err)
	}
	const n = 100
	build := func() ([]intake.Receipt, []intake.Submission) {
		rs, ss := make([]intake.Receipt, n), make([]intake.Submission, n)
		for i := range n {
			msg, err := mail.Build(mail.Draft{From: "alice@example.com", To: []string{fmt.Sprintf("u%d@example.net", i)}, Subject: "hi", Text: "hello"},
				mail.BuildOptions{Hostname: "relay.test"})
			if err != nil {
				b.Fatal(err)
			}
			ss[i] = intake.Submission{TenantID: key.TenantID, APIKeyID: key.ID, Ingress: "api", Message: msg}
			if rs[i], err = ts.Intake.NewReceipt(ss[i]); err != nil {
				b.Fatal(err)
			}
		}
		return rs, ss
	}
	b.Run("batch", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			rs, ss := build()
			b.StartTimer()
			if _, errs := ts.Intake.AcceptAll(context.Background(), rs, ss); errs[0] != nil {
				b.Fatal(errs[0])
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
	b.Run("singles", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			rs, ss := build()
			b.StartTimer()
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := ts.Intake.Accept(context.Background(), rs[i], ss[i]); err != nil {
						b.Error(err)
					}
				}()
			}
			wg.Wait()
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "msgs/s")
	})
}
