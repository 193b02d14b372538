package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/mailferry/mailferry/config"
	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/store"
)

// TestStartSubmission: the wiring serve uses starts both listeners from
// the configuration, takes mail into the ledger, and stops.
func TestStartSubmission(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, store.Options{URL: testenv.Database(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	ro, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(ro)
	t.Cleanup(func() { rdb.Close() })
	q, err := queue.New(rdb, queue.Options{Prefix: testenv.KeyPrefix(t)})
	if err != nil {
		t.Fatal(err)
	}
	in, err := intake.New(intake.Options{Ledger: st, Queue: q})
	if err != nil {
		t.Fatal(err)
	}
	_, secret, err := st.CreateAPIKey(ctx, "acme", []string{"example.com"})
	if err != nil {
		t.Fatal(err)
	}
	ca := testmx.NewCA(t)
	certFile, keyFile := writeCert(t, t.TempDir(), ca.Issue(t, "relay.test"))
	cfg := config.Config{
		SubmissionAddr: "127.0.0.1:0", SubmissionsAddr: "127.0.0.1:0",
		TLSCert: certFile, TLSKey: keyFile,
		Hostname: "relay.test", MaxMessageBytes: 1 << 20, MaxRecipients: 100,
	}

	t.Run("both listeners", func(t *testing.T) {
		logs := &logBuffer{}
		stop, err := startSubmission(ctx, cfg, submissionDeps{intake: in, auth: st, reg: prometheus.NewRegistry(), log: logs.logger()})
		if err != nil {
			t.Fatalf("startSubmission: %v", err)
		}
		addrs := logs.listening(t)
		clientTLS := &tls.Config{RootCAs: ca.Pool, ServerName: "relay.test"}

		c, err := smtp.DialTLS(addrs["MAILFERRY_SUBMISSIONS_ADDR"], clientTLS)
		if err != nil {
			t.Fatalf("dial 465: %v", err)
		}
		if err := c.Auth(sasl.NewPlainClient("", "acme", secret)); err != nil {
			t.Fatalf("AUTH: %v", err)
		}
		if err := c.SendMail("alice@example.com", []string{"bob@example.net"},
			strings.NewReader("From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nhi\r\n")); err != nil {
			t.Fatalf("send: %v", err)
		}
		c.Close()
		d, err := q.Depth(ctx)
		if err != nil || d.Ready != 1 {
			t.Errorf("queue depth %+v %v, want 1 ready", d, err)
		}

		c, err = smtp.DialStartTLS(addrs["MAILFERRY_SUBMISSION_ADDR"], clientTLS)
		if err != nil {
			t.Fatalf("dial 587 with STARTTLS: %v", err)
		}
		if ok, _ := c.Extension("AUTH"); !ok {
			t.Errorf("587 offers no AUTH after STARTTLS")
		}
		c.Close()

		stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := stop(stopCtx); err != nil {
			t.Errorf("stop: %v", err)
		}
		if conn, err := net.Dial("tcp", addrs["MAILFERRY_SUBMISSION_ADDR"]); err == nil {
			conn.Close()
			t.Errorf("587 still accepts after stop")
		}
	})

	t.Run("no certificate", func(t *testing.T) {
		logs := &logBuffer{}
		c := cfg
		c.TLSCert, c.TLSKey = "", ""
		stop, err := startSubmission(ctx, c, submissionDeps{intake: in, auth: st, reg: prometheus.NewRegistry(), log: logs.logger()})
		if err != nil || stop == nil {
			t.Fatalf("startSubmission: %v", err)
		}
		if !strings.Contains(logs.String(), "SMTP submission is off: set MAILFERRY_TLS_CERT and MAILFERRY_TLS_KEY") {
			t.Errorf("no warning: %s", logs)
		}
		if err := stop(ctx); err != nil {
			t.Error(err)
		}
	})

	t.Run("both off", func(t *testing.T) {
		logs := &logBuffer{}
		c := cfg
		c.SubmissionAddr, c.SubmissionsAddr, c.TLSCert, c.TLSKey = "", "", "", ""
		if _, err := startSubmission(ctx, c, submissionDeps{intake: in, auth: st, reg: prometheus.NewRegistry(), log: logs.logger()}); err != nil {
			t.Fatal(err)
		}
		if logs.String() != "" {
			t.Errorf("logged with submission off: %s", logs)
		}
	})

	t.Run("unreadable certificate", func(t *testing.T) {
		c := cfg
		c.TLSCert = filepath.Join(t.TempDir(), "missing.pem")
		_, err := startSubmission(ctx, c, submissionDeps{intake: in, auth: st, reg: prometheus.NewRegistry(), log: (&logBuffer{}).logger()})
		if err == nil || !strings.Contains(err.Error(), "MAILFERRY_TLS_CERT") {
			t.Errorf("error %v does not name MAILFERRY_TLS_CERT", err)
		}
	})

	t.Run("address in use", func(t *testing.T) {
		busy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		c := cfg
		c.SubmissionsAddr = busy.Addr().String()
		_, err = startSubmission(ctx, c, submissionDeps{intake: in, auth: st, reg: prometheus.NewRegistry(), log: (&logBuffer{}).logger()})
		if err == nil || !strings.Contains(err.Error(), "MAILFERRY_SUBMISSIONS_ADDR") {
			t.Errorf("error %v does not name MAILFERRY_SUBMISSIONS_ADDR", err)
		}
	})
}

// TestCertificateReload: a renewed certificate is served without a restart.
func TestCertificateReload(t *testing.T) {
	dir := t.TempDir()
	first := testmx.SelfSigned(t, "relay.test")
	certFile, keyFile := writeCert(t, dir, first)
	c, err := loadCertificate(certFile, keyFile, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := c.get(nil); !bytes.Equal(got.Certificate[0], first.Certificate[0]) {
		t.Fatal("not the first certificate")
	}
	second := testmx.SelfSigned(t, "relay.test")
	writeCert(t, dir, second)
	later := time.Now().Add(time.Minute)
	for _, f := range []string{certFile, keyFile} {
		if err := os.Chtimes(f, later, later); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := c.get(nil); !bytes.Equal(got.Certificate[0], first.Certificate[0]) {
		t.Error("reloaded before the check interval")
	}
	c.mu.Lock()
	c.checked = time.Time{}
	c.mu.Unlock()
	if got, _ := c.get(nil); !bytes.Equal(got.Certificate[0], second.Certificate[0]) {
		t.Error("renewed certificate not loaded")
	}

	// A broken pair (mid-renewal) keeps the old certificate.
	if err := os.WriteFile(keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	evenLater := later.Add(time.Minute)
	_ = os.Chtimes(keyFile, evenLater, evenLater)
	c.mu.Lock()
	c.checked = time.Time{}
	c.mu.Unlock()
	if got, err := c.get(nil); err != nil || !bytes.Equal(got.Certificate[0], second.Certificate[0]) {
		t.Errorf("broken renewal: %v", err)
	}
}

func writeCert(t *testing.T, dir string, cert tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// logBuffer collects JSON log lines; the server logs from its goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// listening reads the bound addresses from the "listening" log lines.
func (b *logBuffer) listening(t *testing.T) map[string]string {
	t.Helper()
	addrs := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		var e struct{ Msg, Listener, Addr string }
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if e.Msg == "SMTP submission listening" {
			addrs[e.Listener] = e.Addr
		}
	}
	if len(addrs) != 2 {
		t.Fatalf("listening addresses %v in logs:\n%s", addrs, b)
	}
	return addrs
}
