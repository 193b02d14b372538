package store

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// TestDeliveryPlansUsePrimaryKey: the delivery path's lookups read one
// message's recipients by primary key, whatever the backlog, and even
// before the table has statistics (a new database, the first minute of a
// burst), when the planner would otherwise also scan every entry of the
// pending index per lookup.
func TestDeliveryPlansUsePrimaryKey(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()
	const backlog = 5000
	for _, q := range []string{
		`INSERT INTO tenants (id) VALUES ('plan') ON CONFLICT DO NOTHING`,
		`INSERT INTO messages (id, tenant_id, ingress, message_id, mail_from, from_header, subject, size, body, created_at)
		 SELECT gen_random_uuid(), 'plan', 'api', 'm' || g, 'a@example.com', 'a@example.com', 's', 4, '\x41'::bytea, now()
		 FROM generate_series(1, 5000) g`,
		`INSERT INTO recipients (message_id, idx, email, domain, next_attempt_at)
		 SELECT id, 0, 'b@example.net', 'example.net', now() FROM messages WHERE tenant_id = 'plan'`,
	} {
		if _, err := s.pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var id uuid.UUID
	if err := s.pool.QueryRow(ctx, `SELECT id FROM messages WHERE tenant_id = 'plan' LIMIT 1`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		query string
		args  []any
	}{
		{"load pending recipients", selectPending, []any{id, "example.net"}},
		{"take lease", takeLease, []any{id, []int16{0}, nil, "owner", int64(1), nil}},
		{"take leases", takeLeases, []any{[]uuid.UUID{id, uuid.New()}, []int16{0, 0}, []time.Time{time.Now(), time.Now()},
			[]string{"a", "b"}, []int64{1, 1}, []time.Time{time.Now(), time.Now()}}},
		{"renew lease", renewLease, []any{id, []int16{0}, "owner", int64(1)}},
		{"complete message", completeMessage, []any{id}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := s.pool.Query(ctx, "EXPLAIN "+tc.query, tc.args...)
			if err != nil {
				t.Fatalf("explain: %v", err)
			}
			var plan []string
			for rows.Next() {
				var line string
				if err := rows.Scan(&line); err != nil {
					t.Fatal(err)
				}
				plan = append(plan, line)
			}
			if err := rows.Err(); err != nil {
				t.Fatalf("explain: %v", err)
			}
			text := strings.Join(plan, "\n")
			if strings.Contains(text, "recipients_pending_idx") || !strings.Contains(text, "recipients_pkey") {
				t.Errorf("with %d pending recipients and no statistics, the plan reads more than the message's rows:\n%s", backlog, text)
			}
		})
	}
}
