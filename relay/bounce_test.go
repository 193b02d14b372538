package relay

import (
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mailferry/mailferry/bounce"
	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/returnpath"
	"github.com/mailferry/mailferry/store"
)

// TestVERPAndSyncClass: with a bounce domain each transaction's MAIL FROM
// is a return path naming the message (and the recipient when it is the
// only one), which the signer verifies; a 550 5.1.1 bounces the recipient
// as a hard invalid_recipient, a null MX (a route failure) gets a class
// too, and both are counted as sync bounces.
func TestVERPAndSyncClass(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		net1 := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{})
		net1.OnRcpt("gone@example.net", "550 5.1.1 The email account that you tried to reach does not exist")
		org := p.mx("example.org", "127.0.0.3", testmx.SMTPOptions{})
		signer, err := returnpath.New("bounces.example.com", []byte("0123456789abcdef0123456789abcdef"))
		if err != nil {
			t.Fatal(err)
		}
		var counted []string
		countc := make(chan string, 10)
		p.start("w1", func(o *WorkerOptions) {
			o.ReturnPaths = signer
			o.Rules = bounce.DefaultRules()
			o.CountBounce = func(class string) { countc <- class }
		})
		p.dns.MX("nullmx.example", 0, ".") // RFC 7505: a route failure, bounced at once
		id := p.send(mail.Draft{From: "Alice <alice@example.com>", To: []string{"bob@example.net", "gone@example.net", "carol@example.org", "dan@nullmx.example"},
			Subject: "VERP", Text: "hi"})
		v := p.wait(id, 20*time.Second)

		tests := []struct {
			name string
			mx   *testmx.SMTP
			idx  int
		}{
			{"several recipients", net1, -1},
			{"one recipient", org, 2},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				msgs := tc.mx.Messages()
				if len(msgs) != 1 {
					t.Fatalf("%d messages", len(msgs))
				}
				gotID, gotIdx, err := signer.Parse(msgs[0].From)
				if err != nil || gotID != id || gotIdx != tc.idx {
					t.Errorf("MAIL FROM %q parses to %s %d (%v), want %s %d", msgs[0].From, gotID, gotIdx, err, id, tc.idx)
				}
			})
		}
		if r := rcpt(t, v, "gone@example.net"); r.Status != store.RecipientBounced {
			t.Errorf("gone@example.net: %s", r.Status)
		}
		var nullMXClass string
		db, err := pgx.Connect(t.Context(), p.dbURL)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close(t.Context())
		for _, tc := range []struct {
			idx        int
			typ, class string
		}{{0, "", ""}, {1, "hard", "invalid_recipient"}, {3, "hard", "*"}} {
			var typ, class *string
			var async bool
			if err := db.QueryRow(t.Context(), `SELECT bounce_type, bounce_class, bounce_async FROM recipients WHERE message_id = $1 AND idx = $2`,
				id, tc.idx).Scan(&typ, &class, &async); err != nil {
				t.Fatal(err)
			}
			if tc.class == "*" { // a route failure: whatever class the rules give it, it has one
				nullMXClass = deref(class)
				if nullMXClass == "" || deref(typ) == "" {
					t.Errorf("null MX recipient: type %q class %q", deref(typ), deref(class))
				}
				continue
			}
			if deref(typ) != tc.typ || deref(class) != tc.class || async {
				t.Errorf("recipient %d: type %q class %q async %v; want %q %q", tc.idx, deref(typ), deref(class), async, tc.typ, tc.class)
			}
		}
		for len(countc) > 0 {
			counted = append(counted, <-countc)
		}
		slices.Sort(counted)
		want := []string{"invalid_recipient", nullMXClass}
		slices.Sort(want)
		if !slices.Equal(counted, want) {
			t.Errorf("sync bounces counted %v, want %v", counted, want)
		}
	})
}
