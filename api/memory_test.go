package api_test

import (
	"bytes"
	"encoding/base64"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"github.com/mailferry/mailferry/internal/wait"

	"github.com/mailferry/mailferry/budget"
)

// rawPost is a POST body carrying a ready message of about size bytes.
func rawPost(size int) []byte {
	var msg bytes.Buffer
	msg.WriteString("From: alice@example.com\r\nTo: bob@example.net\r\nSubject: big\r\n\r\n")
	line := strings.Repeat("x", 76) + "\r\n"
	for msg.Len() < size {
		msg.WriteString(line)
	}
	return []byte(`{"raw":"` + base64.StdEncoding.EncodeToString(msg.Bytes()) + `"}`)
}

// TestRawPostAllocations measures the bytes allocated, in the whole
// process, to accept one 20 MiB raw POST: request body, decoded message,
// built message and the ledger write. Five copies (body, JSON string,
// decoded bytes, built message, …) came to about 170 MiB; the bound is
// what one request body, one message and the ledger's copy need.
func TestRawPostAllocations(t *testing.T) {
	h := newHarness(t, harnessOptions{maxMessageBytes: 25 << 20})
	const size = 20 << 20
	body := rawPost(size)
	if r := h.post(rawPost(1<<20), nil); r.status != http.StatusAccepted { // warm the pools
		t.Fatalf("warm-up: %d %s", r.status, r.body)
	}
	// TotalAlloc counts the whole process; other tests' leftovers add to
	// it, never take away, so the least of three is the POST's own.
	var alloc uint64
	for i := range 3 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		r := h.post(body, nil)
		runtime.ReadMemStats(&after)
		if r.status != http.StatusAccepted {
			t.Fatalf("status %d: %s", r.status, r.body)
		}
		if a := after.TotalAlloc - before.TotalAlloc; i == 0 || a < alloc {
			alloc = a
		}
	}
	t.Logf("one 20 MiB raw POST (%d request bytes) allocated %.1f MiB, %.2f× the message", len(body), float64(alloc)/(1<<20), float64(alloc)/size)
	if limit := uint64(5 * size); alloc > limit {
		t.Errorf("one 20 MiB raw POST allocated %.1f MiB, more than %d MiB", float64(alloc)/(1<<20), limit>>20)
	}
}

// TestBytesInFlightCap holds one large POST in mid-body and checks that
// another that would pass the cap gets 503 with Retry-After and the
// reason, with nothing stored, and that the first is accepted once its
// body arrives and every byte is given back.
func TestBytesInFlightCap(t *testing.T) {
	b, err := budget.New(3 << 20)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, harnessOptions{maxMessageBytes: 4 << 20, budget: b})
	first := rawPost(2 << 20)

	// The first request announces its length and sends half of its body.
	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodPost, h.srv.URL+"/v1/messages", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = int64(len(first))
	req.Header.Set("Authorization", "Bearer "+h.key)
	req.Header.Set("Content-Type", "application/json")
	done := make(chan *http.Response, 1)
	go func() {
		resp, err := h.srv.Client().Do(req)
		if err != nil {
			t.Errorf("first POST: %v", err)
			close(done)
			return
		}
		done <- resp
	}()
	if _, err := pw.Write(first[:len(first)/2]); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the first POST's reservation", func() bool { return b.InUse() == int64(len(first)) })

	messagesBefore := h.messageCount()
	for _, tc := range []struct {
		name    string
		chunked bool
	}{{"declared length", false}, {"chunked, grown as it arrives", true}} {
		t.Run(tc.name, func(t *testing.T) {
			second := rawPost(1500 << 10)
			var body io.Reader = bytes.NewReader(second)
			if tc.chunked {
				body = io.MultiReader(body) // hides the length: sent chunked
			}
			r := h.do(http.MethodPost, "/v1/messages", h.key, body, nil)
			if r.status != http.StatusServiceUnavailable {
				t.Fatalf("status %d, want 503: %s", r.status, r.body)
			}
			if r.header.Get("Retry-After") == "" {
				t.Error("503 without Retry-After")
			}
			if p := r.problem(t); p.Type != "/problems/busy" || !strings.Contains(p.Detail, "MAILFERRY_MAX_BYTES_IN_FLIGHT") {
				t.Errorf("problem %+v does not name the reason", p)
			}
		})
	}
	if n := h.messageCount(); n != messagesBefore {
		t.Errorf("refused POSTs stored %d messages", n-messagesBefore)
	}
	if got := b.InUse(); got != int64(len(first)) {
		t.Errorf("after the refusals %d bytes in flight, want the first POST's %d", got, len(first))
	}

	if _, err := pw.Write(first[len(first)/2:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	resp := <-done
	if resp == nil {
		return
	}
	b2, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("first POST: %d %s", resp.StatusCode, b2)
	}
	wait.For(t, "every byte given back", func() bool { return b.InUse() == 0 })
	// With room again, the same request is taken.
	if r := h.post(rawPost(1500<<10), nil); r.status != http.StatusAccepted {
		t.Fatalf("after release: %d %s", r.status, r.body)
	}
}
