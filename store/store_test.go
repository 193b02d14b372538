package store

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// newStore opens a migrated store on a fresh database and, when the test
// ends, checks that no connection was left borrowed.
func newStore(t testing.TB) *Store {
	t.Helper()
	s := openStore(t, testenv.Database(t))
	if _, err := s.Migrate(t.Context()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return s
}

func openStore(t testing.TB, url string) *Store {
	t.Helper()
	opts := Options{URL: url}
	if os.Getenv(poolerEnv) == PoolerPgBouncer {
		// The suite again, through PgBouncer (TestThroughPgBouncer).
		opts = Options{URL: testenv.PgBouncer(t, url), Pooler: PoolerPgBouncer, DirectURL: url}
	}
	s, err := Open(t.Context(), opts)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() {
		if n := s.pool.Stat().AcquiredConns(); n != 0 {
			t.Errorf("%d connections still borrowed at the end of the test", n)
		}
		s.Close()
	})
	return s
}

// newTenant creates a key for a new tenant and returns it.
func newTenant(t testing.TB, s *Store, tenant string) APIKey {
	t.Helper()
	k, _, err := s.CreateAPIKey(t.Context(), tenant, []string{"example.com"})
	if err != nil {
		t.Fatalf("create key: %v", err)
	}
	return k
}

// testMessage is a message of k's tenant to n recipients, created now.
func testMessage(k APIKey, n int) NewMessage {
	id := uuid.Must(uuid.NewV7())
	m := NewMessage{
		ID:        id,
		TenantID:  k.TenantID,
		APIKeyID:  k.ID,
		Ingress:   "api",
		MessageID: id.String() + "@mailferry.test",
		MailFrom:  "bounces@example.com",
		From:      "Alice <alice@example.com>",
		Subject:   "Hello " + id.String(),
		Tags:      []string{"welcome", "t2"},
		Metadata:  map[string]string{"user_id": "42"},
		Body:      []byte("From: alice@example.com\r\nSubject: hi\r\n\r\nhello\r\n"),
		CreatedAt: time.Now().Truncate(time.Microsecond),
	}
	for i := range n {
		m.Recipients = append(m.Recipients, NewRecipient{Email: fmt.Sprintf("user%d@Dest%d.example", i, i%2)})
	}
	return m
}

// count runs a SELECT count(*) query.
func count(t testing.TB, s *Store, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func TestOpen(t *testing.T) {
	t.Parallel()
	url := testenv.Database(t)
	tests := []struct {
		name     string
		opts     Options
		wantConn int32 // exact pool size, or the least with atLeast
		atLeast  bool
		wantErr  string
	}{
		{name: "default pool is at least 8", opts: Options{URL: url}, wantConn: 8, atLeast: true},
		{name: "explicit size", opts: Options{URL: url, MaxConns: 3}, wantConn: 3},
		{name: "size from URL", opts: Options{URL: url + "&pool_max_conns=5"}, wantConn: 5},
		{name: "empty URL", opts: Options{}, wantErr: "URL is empty"},
		{name: "negative size", opts: Options{URL: url, MaxConns: -1}, wantErr: "negative"},
		{name: "bad URL", opts: Options{URL: "postgres://%zz"}, wantErr: "open store"},
		{name: "nobody listening", opts: Options{URL: "postgres://postgres:secretpw@127.0.0.1:1/x?connect_timeout=2"}, wantErr: "open store"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(t.Context(), tt.opts)
			if tt.wantErr != "" {
				if err == nil {
					s.Close()
					t.Fatalf("Open succeeded, want error containing %q", tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %q does not contain %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "secretpw") {
					t.Errorf("error %q shows the password", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer s.Close()
			if got := s.pool.Config().MaxConns; got < tt.wantConn || !tt.atLeast && got != tt.wantConn {
				t.Errorf("MaxConns = %d, want %d", got, tt.wantConn)
			}
			if err := s.Ping(t.Context()); err != nil {
				t.Errorf("Ping: %v", err)
			}
		})
	}
}

func TestPingAfterClose(t *testing.T) {
	t.Parallel()
	s, err := Open(t.Context(), Options{URL: testenv.Database(t)})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := s.Ping(t.Context()); err == nil {
		t.Error("Ping on a closed store succeeded")
	}
}
