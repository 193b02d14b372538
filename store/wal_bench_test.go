package store

import (
	"testing"
)

// BenchmarkLedgerWAL measures what the hot path writes, in WAL bytes per
// message (PostgreSQL's own count, steady where timings on a shared
// machine are not): accept in batches of 100 (4 KB, one recipient, two
// tags), then the delivery's ledger work (deliverOne). Each index a
// schema change adds shows here.
func BenchmarkLedgerWAL(b *testing.B) {
	s := newStore(b)
	k := newTenant(b, s, "wal")
	ctx := b.Context()
	body := benchBody(4096)
	lsn := func() int64 {
		var n int64
		if err := s.pool.QueryRow(ctx, `SELECT pg_current_wal_lsn() - '0/0'::pg_lsn`).Scan(&n); err != nil {
			b.Fatal(err)
		}
		return n
	}
	var acceptWAL, deliverWAL, n int64
	for b.Loop() {
		batch := make([]NewMessage, 100)
		for i := range batch {
			batch[i] = testMessage(k, 1)
			batch[i].Body = body
		}
		w0 := lsn()
		if err := s.AcceptBatch(ctx, batch); err != nil {
			b.Fatal(err)
		}
		w1 := lsn()
		for _, m := range batch {
			if err := deliverOne(ctx, s, m, "wal"); err != nil {
				b.Fatal(err)
			}
		}
		w2 := lsn()
		acceptWAL += w1 - w0
		deliverWAL += w2 - w1
		n += int64(len(batch))
	}
	b.ReportMetric(float64(acceptWAL)/float64(n), "wal-B/accept")
	b.ReportMetric(float64(deliverWAL)/float64(n), "wal-B/delivery")
}
