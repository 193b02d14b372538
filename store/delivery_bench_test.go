package store

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mailferry/mailferry/internal/testenv"
)

// BenchmarkDeliveryLedger measures the ledger's share of one delivery as
// the worker drives it: LoadDelivery, SaveSignature, TakeLease and
// RecordOutcomes for a message of 4 KB to one recipient, delivered.
// Besides ns/op it reports, per delivery, the client's socket writes (one
// per round trip), PostgreSQL's committed transactions and rows written
// (pg_stat_database) and, when /proc shows the server, its CPU time. The
// test PostgreSQL runs with fsync=off: this is CPU and protocol cost.
func BenchmarkDeliveryLedger(b *testing.B) {
	for _, workers := range []int{1, 16} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			benchDeliveries(b, workers)
		})
	}
}

func benchDeliveries(b *testing.B, workers int) {
	url := testenv.Database(b)
	ctx := context.Background()
	msgs := func() []NewMessage {
		setup := openStore(b, url)
		defer setup.Close() // its backends flush their statistics on exit
		if _, err := setup.Migrate(ctx); err != nil {
			b.Fatalf("migrate: %v", err)
		}
		k := newTenant(b, setup, "bench")
		body := benchBody(4096)
		msgs := make([]NewMessage, b.N)
		for lo := 0; lo < len(msgs); lo += 500 {
			batch := msgs[lo:min(lo+500, len(msgs))]
			for i := range batch {
				batch[i] = testMessage(k, 1)
				batch[i].Body = body
			}
			if err := setup.AcceptBatch(ctx, batch); err != nil {
				b.Fatal(err)
			}
		}
		return msgs
	}()

	var writes atomic.Int64
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = int32(max(workers, minDefaultConns))
	cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		return &countingConn{Conn: c, writes: &writes}, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	s := &Store{pool: pool}
	// Warm a connection's statement cache, as a running worker has. With
	// many workers the pool's other connections prepare on first use: a
	// few hundredths of a round trip per delivery.
	if err := deliverOne(ctx, s, msgs[0], "warmup"); err != nil {
		b.Fatal(err)
	}
	msgs = msgs[1:]
	before := pgStats(b, url)
	cpu0, cpuOK := pgCPU(b, pool)
	writes.Store(0)
	var next atomic.Int64
	b.SetParallelism((workers + 1) / 2) // RunParallel multiplies by GOMAXPROCS
	b.ResetTimer()
	if workers == 1 {
		for i, m := range msgs {
			if err := deliverOne(ctx, s, m, strconv.Itoa(i)); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := next.Add(1) - 1
				if i >= int64(len(msgs)) {
					continue // b.N counts the warm-up message too
				}
				if err := deliverOne(ctx, s, msgs[i], strconv.FormatInt(i, 10)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.StopTimer()
	cpu1, _ := pgCPU(b, pool)
	n := float64(len(msgs))
	if n == 0 {
		pool.Close()
		return
	}
	b.ReportMetric(float64(writes.Load())/n, "roundtrips/op")
	pool.Close()
	after := pgStats(b, url)
	b.ReportMetric(float64(after.xacts-before.xacts)/n, "xacts/op")
	b.ReportMetric(float64(after.updated-before.updated)/n, "updates/op")
	b.ReportMetric(float64(after.inserted-before.inserted)/n, "inserts/op")
	if cpuOK {
		b.ReportMetric(float64(cpu1-cpu0)/n/float64(time.Microsecond), "pg-cpu-µs/op")
	}
}

// deliverOne is what the worker asks of the ledger for one message.
func deliverOne(ctx context.Context, s *Store, m NewMessage, owner string) error {
	domain := strings.ToLower(m.Recipients[0].Email[strings.IndexByte(m.Recipients[0].Email, '@')+1:])
	d, err := s.LoadDelivery(ctx, m.ID, domain)
	if err != nil {
		return err
	}
	if len(d.Recipients) == 0 {
		return nil
	}
	if !d.Signed {
		if _, err := s.SaveSignature(ctx, m.ID, "DKIM-Signature: v=1; a=ed25519-sha256; d=example.com; s=s1\r\n"); err != nil {
			return err
		}
	}
	now := time.Now()
	idxs := []int{d.Recipients[0].Idx}
	taken, err := s.TakeLease(ctx, m.ID, idxs, Lease{Owner: owner, For: time.Minute, Next: now.Add(5 * time.Minute), DueBy: now.Add(time.Second)})
	if err != nil || len(taken) != 1 {
		return fmt.Errorf("take lease: %v %w", taken, err)
	}
	complete, err := s.RecordOutcomes(ctx, m.ID, []Outcome{{Attempt: Attempt{
		Recipient: taken[0], Attempt: d.Recipients[0].Attempts + 1, StartedAt: now, Duration: 30 * time.Millisecond,
		MXHost: "mx." + domain, MXIP: "192.0.2.25", TLSVersion: "TLS1.3", TLSCipher: "TLS_AES_128_GCM_SHA256", TLSVerified: true,
		SMTPCode: 250, EnhancedCode: "2.0.0", Response: "2.0.0 Ok: queued", Outcome: RecipientDelivered,
	}}})
	if err != nil {
		return err
	}
	if !complete {
		return fmt.Errorf("message %s not complete", m.ID)
	}
	return nil
}

type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

type dbStats struct{ xacts, updated, inserted int64 }

// pgStats reads the database's counters once every other session has
// ended: backends report their counts when they exit.
func pgStats(b *testing.B, url string) dbStats {
	b.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	for deadline := time.Now().Add(10 * time.Second); ; {
		var others int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&others); err != nil {
			b.Fatal(err)
		}
		if others == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	var st dbStats
	if err := conn.QueryRow(ctx, `SELECT xact_commit + xact_rollback, tup_updated, tup_inserted
FROM pg_stat_database WHERE datname = current_database()`).Scan(&st.xacts, &st.updated, &st.inserted); err != nil {
		b.Fatal(err)
	}
	return st
}

// pgCPU is the CPU time of the whole PostgreSQL server (the postmaster,
// its live children and those it has reaped), if /proc shows it.
func pgCPU(b *testing.B, pool *pgxpool.Pool) (time.Duration, bool) {
	b.Helper()
	var backend int
	if err := pool.QueryRow(context.Background(), `SELECT pg_backend_pid()`).Scan(&backend); err != nil {
		b.Fatal(err)
	}
	st, ok := procStat(backend)
	if !ok {
		return 0, false
	}
	postmaster := st[1]
	pm, ok := procStat(postmaster)
	if !ok {
		return 0, false
	}
	ticks := pm[11] + pm[12] + pm[13] + pm[14]
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if c, ok := procStat(pid); ok && c[1] == postmaster {
			ticks += c[11] + c[12]
		}
	}
	return time.Duration(ticks) * 10 * time.Millisecond, true // USER_HZ is 100
}

// procStat returns /proc/pid/stat's fields from the third (state) on, as
// numbers where they are: [1] is the ppid, [11:15] utime, stime, cutime,
// cstime.
func procStat(pid int) ([]int, bool) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, false
	}
	s := string(raw)
	end := strings.LastIndexByte(s, ')')
	if end < 0 {
		return nil, false
	}
	fields := strings.Fields(s[end+1:])
	if len(fields) < 15 {
		return nil, false
	}
	out := make([]int, len(fields))
	for i, f := range fields {
		out[i], _ = strconv.Atoi(f)
	}
	return out, true
}
