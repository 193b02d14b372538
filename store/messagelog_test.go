package store

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// seedLog writes perTenant messages for each of tenants in SQL (fast), as
// accept would: one recipient each (tenant and created_at copied), one of
// ten tags in message_tags, the four statuses in turn, a second apart.
// The recipient user<g%20>@Dest.example has perTenant/20 messages.
func seedLog(t testing.TB, s *Store, tenants []string, perTenant int) time.Time {
	t.Helper()
	ctx := t.Context()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tenant := range tenants {
		for _, q := range []string{
			`INSERT INTO tenants (id) VALUES ($1) ON CONFLICT DO NOTHING`,
			`INSERT INTO messages (id, tenant_id, ingress, message_id, mail_from, from_header, subject, tags, size,
				created_at, status, completed_at)
			 SELECT gen_random_uuid(), $1, 'api', 'm' || g, 'a@example.com', 'a@example.com', 's', ARRAY['t' || (g % 10)], 4,
				$3::timestamptz + g * interval '1 second',
				(ARRAY['pending', 'delivered', 'partially_delivered', 'bounced'])[g % 4 + 1], now()
			 FROM generate_series(1, $2::int) g`,
			`INSERT INTO recipients (message_id, idx, email, domain, status, tenant_id, created_at, addr)
			 SELECT id, 0, 'user' || (substring(message_id from 2)::int % 20) || '@Dest.example', 'dest.example',
				CASE status WHEN 'pending' THEN 'queued' WHEN 'bounced' THEN 'bounced' ELSE 'delivered' END, tenant_id, created_at,
				'user' || (substring(message_id from 2)::int % 20) || '@dest.example'
			 FROM messages WHERE tenant_id = $1`,
			`INSERT INTO message_tags (tenant_id, tag, created_at, message_id)
			 SELECT tenant_id, tags[1], created_at, id FROM messages WHERE tenant_id = $1`,
		} {
			var args []any
			switch {
			case strings.Contains(q, "$3"):
				args = []any{tenant, perTenant, base}
			default:
				args = []any{tenant}
			}
			if _, err := s.pool.Exec(ctx, q, args...); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	}
	for _, q := range []string{`ANALYZE messages`, `ANALYZE recipients`, `ANALYZE message_tags`} {
		if _, err := s.pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	return base
}

// logFilters are the filters the plan test and the benchmark run over
// seedLog's table, each alone, page size 50.
func logFilters(base time.Time, after MessageKey) []struct {
	name  string
	f     MessageFilter
	index string // the index that must drive the page
} {
	mid := base.Add(5000 * time.Second)
	return []struct {
		name  string
		f     MessageFilter
		index string
	}{
		{"none", MessageFilter{Limit: 50}, "messages_log_idx"},
		{"status", MessageFilter{Status: StatusBounced, Limit: 50}, "messages_log_status_idx"},
		{"recipient", MessageFilter{Recipient: "user7@DEST.example", Limit: 50}, "recipients_log_idx"},
		{"tag", MessageFilter{Tag: "t3", Limit: 50}, "message_tags_pkey"},
		{"since-until", MessageFilter{Since: mid.Add(-time.Hour), Until: mid, Limit: 50}, "messages_log_idx"},
		{"cursor", MessageFilter{After: &after, Limit: 50}, "messages_log_idx"},
	}
}

// planNode is the part of EXPLAIN (FORMAT JSON) the test reads.
type planNode struct {
	NodeType      string     `json:"Node Type"`
	IndexName     string     `json:"Index Name"`
	RelationName  string     `json:"Relation Name"`
	ActualRows    float64    `json:"Actual Rows"`
	ActualLoops   float64    `json:"Actual Loops"`
	RemovedFilter float64    `json:"Rows Removed by Filter"`
	Plans         []planNode `json:"Plans"`
}

func (n planNode) walk(f func(planNode)) {
	f(n)
	for _, c := range n.Plans {
		c.walk(f)
	}
}

// TestListMessagesPlans: over 50,000 messages of five tenants, each
// filter's page is read through its index in log order, with no sort and
// no sequential scan, and no node reads more than a page's rows per loop
// (plus the one look-ahead row): the cost is the page's, not the
// table's, so it holds at 10 M messages.
func TestListMessagesPlans(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()
	tenants := []string{"log0", "log1", "log2", "log3", "log4"}
	base := seedLog(t, s, tenants, 10000)
	var after MessageKey
	if err := s.pool.QueryRow(ctx, `SELECT created_at, id FROM messages WHERE tenant_id = 'log2' AND message_id = 'm5000'`).
		Scan(&after.CreatedAt, &after.ID); err != nil {
		t.Fatal(err)
	}
	for _, tc := range logFilters(base, after) {
		t.Run(tc.name, func(t *testing.T) {
			q, args := listMessagesQuery(tc.f)
			args[0] = "log2"
			var raw []byte
			if err := s.pool.QueryRow(ctx, "EXPLAIN (ANALYZE, FORMAT JSON) "+q, args...).Scan(&raw); err != nil {
				t.Fatalf("explain: %v", err)
			}
			var plans []struct {
				Plan planNode `json:"Plan"`
			}
			if err := json.Unmarshal(raw, &plans); err != nil || len(plans) != 1 {
				t.Fatalf("explain output %s: %v", raw, err)
			}
			used := false
			var worst float64
			plans[0].Plan.walk(func(n planNode) {
				switch n.NodeType {
				case "Seq Scan", "Sort", "Incremental Sort", "Bitmap Heap Scan":
					t.Errorf("%s node (on %s): reads more than the page", n.NodeType, n.RelationName)
				}
				if n.IndexName == tc.index {
					used = true
				}
				if strings.Contains(n.NodeType, "Scan") {
					worst = max(worst, n.ActualRows+n.RemovedFilter)
				}
			})
			if !used {
				t.Errorf("the plan does not use %s", tc.index)
			}
			if limit := float64(tc.f.Limit); worst > limit {
				t.Errorf("a scan node reads %v rows per loop, more than the page of %v", worst, limit)
			}
			if t.Failed() {
				pretty, _ := json.MarshalIndent(plans, "", " ")
				t.Logf("%s\n%s", q, pretty)
			}
		})
	}
}

// BenchmarkListMessages reads one page of 50 for each filter from 10,000
// and from 50,000 messages of five tenants: the cost is the page's, so it
// should not change with the table's size.
func BenchmarkListMessages(b *testing.B) {
	for _, perTenant := range []int{2000, 10000} {
		s := newStore(b)
		tenants := []string{"log0", "log1", "log2", "log3", "log4"}
		base := seedLog(b, s, tenants, perTenant)
		var after MessageKey
		if err := s.pool.QueryRow(b.Context(), `SELECT created_at, id FROM messages WHERE tenant_id = 'log2' AND message_id = $1`,
			fmt.Sprintf("m%d", perTenant/2)).Scan(&after.CreatedAt, &after.ID); err != nil {
			b.Fatal(err)
		}
		for _, tc := range logFilters(base, after) {
			b.Run(fmt.Sprintf("messages=%d/%s", perTenant*len(tenants), tc.name), func(b *testing.B) {
				for b.Loop() {
					list, err := s.ListMessages(b.Context(), "log2", tc.f)
					if err != nil {
						b.Fatal(err)
					}
					if len(list) != tc.f.Limit {
						b.Fatalf("%d messages, want %d", len(list), tc.f.Limit)
					}
				}
			})
		}
	}
}

// logIDs lists every page of f for tenant, page size limit, calling
// between after each page, and returns the ids in the order listed.
func logIDs(t *testing.T, s *Store, tenant string, f MessageFilter, between func()) []uuid.UUID {
	t.Helper()
	var ids []uuid.UUID
	for range 1000 {
		list, err := s.ListMessages(t.Context(), tenant, f)
		if err != nil {
			t.Fatalf("list messages: %v", err)
		}
		for _, m := range list {
			ids = append(ids, m.ID)
		}
		if len(list) < f.Limit {
			return ids
		}
		k := list[len(list)-1].Key()
		f.After = &k
		if between != nil {
			between()
		}
	}
	t.Fatal("more than 1000 pages")
	return nil
}

func TestListMessages(t *testing.T) {
	s := newStore(t)
	ctx := t.Context()
	k := newTenant(t, s, "logf-"+uuid.NewString())
	other := newTenant(t, s, "logf-"+uuid.NewString())
	start := time.Now().Truncate(time.Microsecond)

	type made struct {
		m    NewMessage
		want string // status
	}
	var all []made
	accept := func(key APIKey, n int, tags []string, rcpt string, at time.Time, suppressed bool) NewMessage {
		t.Helper()
		m := testMessage(key, n)
		m.Tags = tags
		m.CreatedAt = at
		if rcpt != "" {
			m.Recipients[0].Email = rcpt
		}
		if suppressed {
			for i := range m.Recipients {
				m.Recipients[i].Suppressed = SuppressedHardBounce
			}
		}
		if err := s.AcceptBatch(ctx, []NewMessage{m}); err != nil {
			t.Fatalf("accept: %v", err)
		}
		return m
	}
	record := func(m NewMessage, outcomes ...string) {
		t.Helper()
		var outs []Outcome
		for i, o := range outcomes {
			a := Attempt{Recipient: i, Attempt: 1, StartedAt: time.Now(), Duration: time.Millisecond, Outcome: o,
				SMTPCode: 250, EnhancedCode: "2.0.0", Response: "ok"}
			if o == RecipientBounced {
				a.SMTPCode, a.EnhancedCode, a.Response, a.BounceType, a.BounceClass = 550, "5.1.1", "no such user", BounceHard, "invalid_recipient"
			}
			outs = append(outs, Outcome{Attempt: a})
		}
		if _, err := s.RecordOutcomes(ctx, m.ID, outs); err != nil {
			t.Fatalf("record outcomes: %v", err)
		}
	}
	at := func(i int) time.Time { return start.Add(time.Duration(i) * time.Second) }
	// 0: pending, tag a; 1: delivered, tag b, to Ann@Example.ORG;
	// 2: partially delivered, tags a b; 3: bounced (suppressed at accept);
	// 4: bounced by a DSN after delivery; same instant as 5 (the id
	// breaks the tie).
	m0 := accept(k, 1, []string{"a"}, "", at(0), false)
	all = append(all, made{m0, StatusPending})
	m1 := accept(k, 1, []string{"b", "b"}, "Ann@Example.ORG", at(1), false)
	record(m1, RecipientDelivered)
	all = append(all, made{m1, StatusDelivered})
	m2 := accept(k, 2, []string{"a", "b"}, "", at(2), false)
	record(m2, RecipientDelivered, RecipientBounced)
	all = append(all, made{m2, StatusPartiallyDelivered})
	m3 := accept(k, 1, nil, "ann@example.org", at(3), true)
	all = append(all, made{m3, StatusBounced})
	m4 := accept(k, 1, []string{"a"}, "", at(4), false)
	record(m4, RecipientDelivered)
	if _, err := s.ApplyReport(ctx, AsyncReport{MessageID: m4.ID, RcptIdx: 0, Type: EventBounced, SMTPCode: 550,
		EnhancedCode: "5.1.1", Response: "gone", BounceType: BounceHard, BounceClass: "invalid_recipient"}); err != nil {
		t.Fatalf("apply report: %v", err)
	}
	all = append(all, made{m4, StatusBounced})
	m5 := accept(k, 1, nil, "", at(4), false)
	all = append(all, made{m5, StatusPending})
	// The other tenant has messages matching every filter.
	for i := range 3 {
		o := accept(other, 1, []string{"a", "b"}, "ann@example.org", at(i+1), i == 2)
		record(o, RecipientDelivered)
	}
	// Newest first: created_at, then id.
	slices.SortFunc(all, func(a, b made) int {
		if c := b.m.CreatedAt.Compare(a.m.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(b.m.ID.String(), a.m.ID.String())
	})
	ids := func(pick func(made) bool) []uuid.UUID {
		var out []uuid.UUID
		for _, x := range all {
			if pick(x) {
				out = append(out, x.m.ID)
			}
		}
		return out
	}
	is := func(ms ...NewMessage) func(made) bool {
		return func(x made) bool {
			return slices.ContainsFunc(ms, func(m NewMessage) bool { return m.ID == x.m.ID })
		}
	}
	for _, tc := range []struct {
		name string
		f    MessageFilter
		want []uuid.UUID
	}{
		{"all", MessageFilter{}, ids(func(made) bool { return true })},
		{"pending", MessageFilter{Status: StatusPending}, ids(is(m0, m5))},
		{"delivered", MessageFilter{Status: StatusDelivered}, ids(is(m1))},
		{"partially delivered", MessageFilter{Status: StatusPartiallyDelivered}, ids(is(m2))},
		{"bounced: suppressed at accept, and a DSN after delivery", MessageFilter{Status: StatusBounced}, ids(is(m3, m4))},
		{"recipient, domain case folded", MessageFilter{Recipient: "Ann@EXAMPLE.org"}, ids(is(m1))},
		{"recipient, local part kept", MessageFilter{Recipient: "ann@example.org"}, ids(is(m3))},
		{"tag a", MessageFilter{Tag: "a"}, ids(is(m0, m2, m4))},
		{"tag b, given twice", MessageFilter{Tag: "b"}, ids(is(m1, m2))},
		{"tag and status", MessageFilter{Tag: "a", Status: StatusPending}, ids(is(m0))},
		{"tag and recipient", MessageFilter{Tag: "b", Recipient: "Ann@example.org"}, ids(is(m1))},
		{"recipient and status", MessageFilter{Recipient: "ann@example.org", Status: StatusBounced}, ids(is(m3))},
		{"since inclusive", MessageFilter{Since: at(3)}, ids(is(m3, m4, m5))},
		{"until exclusive", MessageFilter{Until: at(2)}, ids(is(m0, m1))},
		{"since and until", MessageFilter{Since: at(1), Until: at(4)}, ids(is(m1, m2, m3))},
		{"no match", MessageFilter{Tag: "zzz"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, limit := range []int{1, 2, 50} {
				f := tc.f
				f.Limit = limit
				got := logIDs(t, s, k.TenantID, f, nil)
				if !slices.Equal(got, tc.want) {
					t.Errorf("limit %d: got %v, want %v", limit, got, tc.want)
				}
			}
		})
	}

	t.Run("summary", func(t *testing.T) {
		list, err := s.ListMessages(ctx, k.TenantID, MessageFilter{Tag: "a", Status: StatusPartiallyDelivered, Limit: 10})
		if err != nil || len(list) != 1 {
			t.Fatalf("list: %v %v", list, err)
		}
		got := list[0]
		want := []RecipientSummary{{m2.Recipients[0].Email, RecipientDelivered}, {m2.Recipients[1].Email, RecipientBounced}}
		if got.ID != m2.ID || got.MessageID != m2.MessageID || got.Subject != m2.Subject || got.From != m2.From ||
			!slices.Equal(got.Tags, []string{"a", "b"}) || got.Metadata["user_id"] != "42" ||
			!got.CreatedAt.Equal(m2.CreatedAt) || got.SendAt != nil || !slices.Equal(got.Recipients, want) {
			t.Errorf("summary %+v, want message %s with recipients %v", got, m2.ID, want)
		}
	})

	t.Run("an undone accept takes its tags along", func(t *testing.T) {
		m := accept(k, 1, []string{"undone", "undone2"}, "", at(9), false)
		if err := s.DeleteMessages(ctx, []uuid.UUID{m.ID}); err != nil {
			t.Fatal(err)
		}
		if n := count(t, s, `SELECT count(*) FROM message_tags WHERE message_id = $1`, m.ID); n != 0 {
			t.Errorf("%d message_tags rows left", n)
		}
	})

	t.Run("limit out of range", func(t *testing.T) {
		for _, n := range []int{0, MaxMessagePage + 1} {
			if _, err := s.ListMessages(ctx, k.TenantID, MessageFilter{Limit: n}); err == nil {
				t.Errorf("limit %d accepted", n)
			}
		}
	})
}

// TestListMessagesPagesWhileAccepting: messages accepted while a client
// pages (newer than its cursor, and some with the same created_at as a
// page's last message) neither repeat nor hide any message that existed
// when it started.
func TestListMessagesPagesWhileAccepting(t *testing.T) {
	s := newStore(t)
	k := newTenant(t, s, "logp-"+uuid.NewString())
	start := time.Now().Truncate(time.Microsecond)
	var want []NewMessage
	for i := range 30 {
		m := testMessage(k, 1)
		m.CreatedAt = start.Add(time.Duration(i/3) * time.Millisecond) // three per instant
		want = append(want, m)
	}
	if err := s.AcceptBatch(t.Context(), want); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(want, func(a, b NewMessage) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID.String(), a.ID.String())
	})
	n := 0
	got := logIDs(t, s, k.TenantID, MessageFilter{Limit: 4}, func() {
		n++
		m := testMessage(k, 1)
		m.CreatedAt = time.Now().Add(time.Duration(n) * time.Second)
		if err := s.AcceptBatch(t.Context(), []NewMessage{m}); err != nil {
			t.Fatal(err)
		}
	})
	if n < 7 {
		t.Fatalf("%d pages, want at least 8", n+1)
	}
	if len(got) != len(want) {
		t.Fatalf("listed %d messages, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i].ID {
			t.Fatalf("message %d: got %s, want %s", i, got[i], fmt.Sprint(want[i].ID))
		}
	}
}
