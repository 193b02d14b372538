// Package reliability holds no code, only tests: each runs the real
// mailferry binary against real Redis and PostgreSQL servers it starts for
// itself (so it can kill, wipe and restart them), a DNS server and SMTP
// sinks on loopback, and breaks something on purpose while mail flows:
//
//   - TestKill9: `kill -9` of mailferry serve mid-delivery, then a restart;
//   - TestSIGTERM: a graceful stop under load, then a restart;
//   - TestRedisDataLoss: FLUSHALL, a Redis restart without persistence, and
//     `mailferry requeue` after a wipe while mailferry is stopped;
//   - TestPostgresRestart: PostgreSQL stopped and restarted mid-run.
//
// Each checks the promise RELIABILITY.md makes for its fault, counting
// every accepted message at the sinks by its Message-ID, and logs the
// numbers (t.Logf, shown with -v) that RELIABILITY.md quotes.
//
// A plain `go test ./reliability` runs small loads, about a minute in all.
// MAILFERRY_RELIABILITY=1 (make reliability) runs the full sizes: thousands
// of messages and a 60-second PostgreSQL outage.
package reliability
