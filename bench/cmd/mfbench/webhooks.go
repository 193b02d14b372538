package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/mailferry/mailferry/dkim"
)

// hookSink is the bench's webhook receiver on 127.0.0.1: it verifies every
// request with the Standard Webhooks library, answers 204, and notes the
// lag from the event's created_at (the commit of the change, by the
// database's clock on this machine) to its arrival.
type hookSink struct {
	addr string
	srv  *http.Server
	wh   atomic.Pointer[standardwebhooks.Webhook]

	mu          sync.Mutex
	seen        map[string]bool
	lags        []time.Duration
	first, last time.Time
	invalid     int
	want        int
	done        chan struct{}
}

func startHookSink() (*hookSink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &hookSink{addr: ln.Addr().String(), done: make(chan struct{})}
	h.srv = &http.Server{Handler: http.HandlerFunc(h.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = h.srv.Serve(ln) }()
	return h, nil
}

func (h *hookSink) close() { _ = h.srv.Close() }

func (h *hookSink) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	at := time.Now()
	wh := h.wh.Load()
	if wh == nil || wh.Verify(body, r.Header) != nil {
		h.mu.Lock()
		h.invalid++
		h.mu.Unlock()
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var ev struct {
		ID        string    `json:"id"`
		CreatedAt time.Time `json:"created_at"`
	}
	_ = json.Unmarshal(body, &ev)
	w.WriteHeader(http.StatusNoContent)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen[ev.ID] {
		return // a repeat: counted once
	}
	h.seen[ev.ID] = true
	h.lags = append(h.lags, at.Sub(ev.CreatedAt))
	if h.first.IsZero() {
		h.first = at
	}
	h.last = at
	if len(h.seen) == h.want {
		close(h.done)
	}
}

// reset starts a count of want events signed with secret.
func (h *hookSink) reset(want int, secret string) error {
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.wh.Store(wh)
	h.seen, h.lags, h.first, h.last, h.invalid = map[string]bool{}, nil, time.Time{}, time.Time{}, 0
	h.want, h.done = want, make(chan struct{})
	return nil
}

// subscribe creates an endpoint for every message event at apiAddr and
// points the receiver at its secret, expecting want events.
func (h *hookSink) subscribe(ctx context.Context, apiAddr, key string, want int) error {
	body := `{"url":"http://` + h.addr + `/hook","events":["message.accepted","message.scheduled","message.delivered",` +
		`"message.deferred","message.bounced","message.suppressed","message.expired","message.complained"]}`
	req, err := http.NewRequestWithContext(ctx, "POST", "http://"+apiAddr+"/v1/webhooks", bytes.NewReader([]byte(body)))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("create webhook: %w", err)
	}
	defer resp.Body.Close()
	var ep struct{ Secret string }
	if err := json.NewDecoder(resp.Body).Decode(&ep); err != nil || resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("create webhook: %d %v", resp.StatusCode, err)
	}
	return h.reset(want, ep.Secret)
}

// webhooks measures events through a webhook endpoint: WebhookRecipients
// messages of one recipient each into one `serve` with every role, whose
// message.accepted and message.delivered go to the bench's receiver
// (events/s from first to last receipt, lag p50/p99 from the change's
// commit to receipt); and S2's drain (Ed25519) with and without an
// endpoint subscribed to every event, run for run.
func (b *bench) webhooks(ctx context.Context) *scenarioResult {
	cfg := b.cfg
	n := cfg.WebhookRecipients
	res := newScenario("webhooks", fmt.Sprintf("Webhooks: %d recipients (one message each, 4 KB, Ed25519) into one `mailferry serve` with all roles, "+
		"every event to a receiver on 127.0.0.1 that verifies each signature; then S2 (%d messages) with and without that endpoint", n, cfg.S2Messages),
		metric{"events_rate", "events through webhooks (first → last receipt)", "events/s", 0},
		metric{"events", "events received (message.accepted + message.delivered)", "", 0},
		metric{"lag_p50", "lag p50, state change (event created_at) → receipt", "ms", 0},
		metric{"lag_p99", "lag p99, state change → receipt", "ms", 0},
		metric{"invalid", "requests whose signature did not verify", "", 0},
		metric{"s2_plain", "S2 drain rate, no endpoint (worker process runs the webhooks role too)", "msgs/s", 0},
		metric{"s2_hooked", "S2 drain rate, an endpoint subscribed to every event", "msgs/s", 0},
		metric{"s2_ratio", "S2 with the endpoint ÷ without", "%", 1},
		otherMetric,
	)
	if cfg.S2Messages < 50000 {
		res.note(fmt.Sprintf("S2 here is %d messages per run (-s2-messages)", cfg.S2Messages))
	}
	hs, err := startHookSink()
	if err != nil {
		res.Error = err.Error()
		res.finish()
		return res
	}
	defer hs.close()
	bodies := requestBodies(domains(cfg.S2Domains, 0), 4096)
	for i := range cfg.Runs {
		b.quiet(ctx, res)
		run, err := func() (map[string]float64, error) {
			r, err := b.st.newRun(ctx, "webhooks", string(dkim.AlgorithmEd25519))
			if err != nil {
				return nil, err
			}
			defer b.st.endRun(r)
			p, err := b.st.startMailferry(ctx, r, "api,worker,scheduler,webhooks")
			if err != nil {
				return nil, err
			}
			defer b.st.stopMailferry(p, 10*time.Second)
			if err := hs.subscribe(ctx, p.addr, r.apiKey, 2*n); err != nil {
				return nil, err
			}
			b.st.sink.reset(n, 0)
			c0 := b.st.cpu(p)
			lr := runLoad(ctx, loadOptions{
				URL: "http://" + p.addr + "/v1/messages", Auth: r.apiKey, Clients: cfg.Clients, Count: n,
				Body: func(i int) []byte { return bodies[i%len(bodies)] },
			})
			if lr.OK != n {
				return nil, fmt.Errorf("%d of %d messages accepted", lr.OK, n)
			}
			select {
			case <-hs.done:
			case <-time.After(cfg.S2Timeout):
				res.note("a run did not receive every event within -s2-timeout")
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			u := since(c0, b.st.cpu(p))
			hs.mu.Lock()
			lags := slices.Clone(hs.lags)
			got, invalid := len(hs.seen), hs.invalid
			window := hs.last.Sub(hs.first)
			hs.mu.Unlock()
			slices.Sort(lags)
			return map[string]float64{
				"events_rate": rate(got-1, window), "events": float64(got),
				"lag_p50": ms(percentile(lags, 50)), "lag_p99": ms(percentile(lags, 99)),
				"invalid": float64(invalid), "other": u.otherCores(),
			}, nil
		}()
		if err != nil {
			res.Error = err.Error()
			break
		}
		// S2 without, then with, the endpoint: the same worker roles, so
		// the only difference is the events to send.
		for _, hooked := range []bool{false, true} {
			o := drainOptions{
				Name: "webhooks-s2", Algorithm: string(dkim.AlgorithmEd25519), Domains: domains(cfg.S2Domains, 0),
				Count: cfg.S2Messages, TextBytes: 4096, Timeout: cfg.S2Timeout, WorkerRoles: "worker,scheduler,webhooks",
			}
			key := "s2_plain"
			if hooked {
				key = "s2_hooked"
				o.Prepare = func(ctx context.Context, addr, apiKey string) error {
					return hs.subscribe(ctx, addr, apiKey, 2*cfg.S2Messages)
				}
			}
			d, err := b.drain(ctx, o)
			if err == nil && d.timedOut {
				err = errors.New("S2 drain timed out")
			}
			if err != nil {
				res.Error = err.Error()
				break
			}
			run[key] = d.drainRate()
		}
		if res.Error != "" {
			break
		}
		run["s2_ratio"] = 100 * ratio(run["s2_hooked"], run["s2_plain"])
		res.add(run)
		b.progress("webhooks run %d: %.0f events/s, lag p50 %.0f ms p99 %.0f ms; S2 %.0f msgs/s without an endpoint, %.0f with (%.1f%%)",
			i+1, run["events_rate"], run["lag_p50"], run["lag_p99"], run["s2_plain"], run["s2_hooked"], run["s2_ratio"])
	}
	res.finish()
	return res
}
