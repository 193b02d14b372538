package relay

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/mailferry/mailferry/internal/testenv"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/store"
)

// received reports whether the MX got a message for addr.
func received(mx *testmx.SMTP, addr string) int {
	n := 0
	for _, m := range mx.Messages() {
		for _, to := range m.To {
			if to == addr {
				n++
			}
		}
	}
	return n
}

func (p *pipeline) events(id uuid.UUID, typ string) int {
	p.t.Helper()
	var n int
	db, err := pgx.Connect(context.Background(), p.dbURL)
	if err != nil {
		p.t.Fatal(err)
	}
	defer db.Close(context.Background())
	q := `SELECT count(*) FROM events WHERE message_id = $1 AND type = $2`
	if err := db.QueryRow(context.Background(), q, id, typ).Scan(&n); err != nil {
		p.t.Fatal(err)
	}
	return n
}

// TestCancelDuringData: a cancel that comes while the MX holds the reply
// to DATA leaves that transaction alone; it finishes and its outcome
// stands: delivered stays delivered, with no canceled event; a deferral
// cancels the recipient, which is not tried again.
func TestCancelDuringData(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		tests := []struct {
			name, reply string
			want        string // recipient status
			canceled    int    // message.canceled events
		}{
			{"accepted", "", store.RecipientDelivered, 0},
			{"deferred", "451 4.3.0 try later", store.RecipientCanceled, 1},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				p := newPipeline(t)
				mx := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{DataDelay: 500 * time.Millisecond})
				if tt.reply != "" {
					mx.OnData(tt.reply)
				}
				p.start("w1", nil)
				id := p.send(mail.Draft{From: "alice@example.com", To: []string{"bob@example.net"}, Subject: "held", Text: "hi"})
				wait.For(t, "the MX to hold the message's DATA", func() bool { return received(mx, "bob@example.net") == 1 })
				c, err := p.st.CancelMessage(context.Background(), "acme", id)
				if err != nil {
					t.Fatal(err)
				}
				if len(c.Recipients) != 0 || c.InFlight != 1 {
					t.Fatalf("cancel during DATA = %+v, want nothing canceled and 1 in flight", c)
				}
				v := p.wait(id, 20*time.Second)
				if r := rcpt(t, v, "bob@example.net"); r.Status != tt.want || r.Attempts != 1 {
					t.Fatalf("after the held DATA: %s %+v, want %s after 1 attempt", v.Status, v.Recipients, tt.want)
				}
				if n := p.events(id, store.EventMessageCanceled); n != tt.canceled {
					t.Fatalf("%d message.canceled events, want %d", n, tt.canceled)
				}
			})
		}
	})
}

// TestCancelRacesDelivery cancels messages at random moments while a
// worker delivers them through an MX that holds each DATA a little: each
// recipient ends delivered or canceled, never both, and a canceled one
// never reached the MX (it was never sent, before or after the cancel).
func TestCancelRacesDelivery(t *testing.T) {
	testenv.EachRedis(t, func(t *testing.T) {
		p := newPipeline(t)
		mx := p.mx("example.net", "127.0.0.2", testmx.SMTPOptions{DataDelay: 20 * time.Millisecond})
		p.start("w1", func(o *WorkerOptions) { o.PerDestination = 4 })
		const n = 30
		ids := make([]uuid.UUID, n)
		var wg sync.WaitGroup
		var inFlight atomic.Int32 // cancels that found the recipient in an SMTP transaction
		for i := range ids {
			ids[i] = p.send(mail.Draft{From: "alice@example.com", To: []string{fmt.Sprintf("u%d@example.net", i)}, Text: "hi"})
			wg.Add(1)
			go func() {
				defer wg.Done()
				// A spread of moments: before the lease, during DATA, after.
				time.Sleep(time.Duration(rand.IntN(150)) * time.Millisecond) // the race itself, not a synchronisation
				c, err := p.st.CancelMessage(context.Background(), "acme", ids[i])
				if err != nil {
					t.Error(err)
				}
				if c.InFlight > 0 {
					inFlight.Add(1)
				}
			}()
		}
		wg.Wait()
		var delivered, canceled int
		for i, id := range ids {
			addr := fmt.Sprintf("u%d@example.net", i)
			v := p.wait(id, 30*time.Second)
			r := rcpt(t, v, addr)
			got := received(mx, addr)
			switch r.Status {
			case store.RecipientDelivered:
				delivered++
				if got != 1 {
					t.Errorf("%s delivered, but the MX received it %d times", addr, got)
				}
				if p.events(id, store.EventMessageCanceled) != 0 {
					t.Errorf("%s delivered and canceled", addr)
				}
			case store.RecipientCanceled:
				canceled++
				if got != 0 {
					t.Errorf("%s canceled, but the MX received it %d times", addr, got)
				}
				if p.events(id, store.EventMessageCanceled) != 1 || p.events(id, store.EventMessageDelivered) != 0 {
					t.Errorf("%s canceled: events canceled=%d delivered=%d", addr, p.events(id, store.EventMessageCanceled), p.events(id, store.EventMessageDelivered))
				}
			default:
				t.Errorf("%s ended %s, want delivered or canceled", addr, r.Status)
			}
		}
		t.Logf("%d delivered, %d canceled; %d cancels came during a transaction", delivered, canceled, inFlight.Load())
	})
}
