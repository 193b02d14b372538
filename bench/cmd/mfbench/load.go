package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// loadOptions describe one load: either exactly Count messages as fast as
// Clients allow (Count > 0), or as many as fit in Warmup+Duration of which
// only those started after Warmup are measured.
type loadOptions struct {
	URL      string
	Auth     string // API key
	Clients  int
	Count    int
	Warmup   time.Duration
	Duration time.Duration
	// Rate > 0 makes the load open-loop: request i starts at i/Rate, with
	// up to Clients in flight (for the light-load latency).
	Rate float64
	// Body returns request i's JSON body; it must not be modified later.
	Body func(i int) []byte
	// Accepted, if set, is called with the message_id of each 202 and the
	// time the answer arrived.
	Accepted func(i int, messageID string, at time.Time)
}

// loadResult is what a load measured.
type loadResult struct {
	OK, Errors int
	All        int             // 202s including the warm-up
	Elapsed    time.Duration   // the measured window
	Latencies  []time.Duration // of measured requests that got a 202, sorted
	ErrSamples []string
}

func (r loadResult) rate() float64 { return rate(r.OK, r.Elapsed) }

// newHTTPClient keeps one connection per client alive.
func newHTTPClient(clients int) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			MaxIdleConns:        clients,
			MaxIdleConnsPerHost: clients,
			MaxConnsPerHost:     clients,
			DisableCompression:  true,
			IdleConnTimeout:     time.Minute,
		},
		Timeout: time.Minute,
	}
}

// runLoad drives the API with keep-alive clients.
func runLoad(ctx context.Context, o loadOptions) loadResult {
	client := newHTTPClient(o.Clients)
	defer client.CloseIdleConnections()
	var (
		next atomic.Int64
		mu   sync.Mutex
		res  loadResult
		wg   sync.WaitGroup
	)
	start := time.Now()
	measureFrom := start.Add(o.Warmup)
	end := measureFrom.Add(o.Duration)
	var lastDone atomic.Int64 // unix nanos of the last completion (Count mode)
	var pace chan int
	if o.Rate > 0 {
		pace = make(chan int)
		n := o.Count
		go func() {
			defer close(pace)
			for i := 0; i < n; i++ {
				at := start.Add(time.Duration(float64(i) / o.Rate * float64(time.Second)))
				if d := time.Until(at); d > 0 {
					select {
					case <-time.After(d):
					case <-ctx.Done():
						return
					}
				}
				// With every client busy the request starts late; the
				// latency then counts from its due time, not from when a
				// client was free (no coordinated omission).
				select {
				case pace <- i:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	for range o.Clients {
		wg.Go(func() {
			var (
				lats         []time.Duration
				ok, bad, all int
				errs         []string
				buf          bytes.Buffer
			)
			for ctx.Err() == nil {
				var i int
				if pace != nil {
					var more bool
					if i, more = <-pace; !more {
						break
					}
				} else {
					i = int(next.Add(1) - 1)
					if o.Count > 0 && i >= o.Count {
						break
					}
				}
				t0 := time.Now()
				if o.Count == 0 && !t0.Before(end) {
					break
				}
				if pace != nil {
					t0 = start.Add(time.Duration(float64(i) / o.Rate * float64(time.Second)))
				}
				id, err := post(ctx, client, o, i, &buf)
				t1 := time.Now()
				lastDone.Store(t1.UnixNano())
				measured := o.Count > 0 || !t0.Before(measureFrom)
				if err != nil {
					if measured {
						bad++
						if len(errs) < 3 {
							errs = append(errs, err.Error())
						}
					}
					continue
				}
				all++
				if o.Accepted != nil {
					o.Accepted(i, id, t1)
				}
				if measured {
					ok++
					lats = append(lats, t1.Sub(t0))
				}
			}
			mu.Lock()
			res.OK += ok
			res.All += all
			res.Errors += bad
			res.Latencies = append(res.Latencies, lats...)
			res.ErrSamples = append(res.ErrSamples, errs...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if o.Count > 0 {
		res.Elapsed = time.Unix(0, lastDone.Load()).Sub(start)
	} else {
		res.Elapsed = o.Duration
	}
	slices.Sort(res.Latencies)
	if len(res.ErrSamples) > 5 {
		res.ErrSamples = res.ErrSamples[:5]
	}
	return res
}

// post sends request i and returns the message_id of its 202.
func post(ctx context.Context, client *http.Client, o loadOptions, i int, buf *bytes.Buffer) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.URL, bytes.NewReader(o.Body(i)))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	if o.Auth != "" {
		req.Header.Set("Authorization", "Bearer "+o.Auth)
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	buf.Reset()
	_, err = buf.ReadFrom(resp.Body)
	resp.Body.Close()
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("HTTP %d: %.200s", resp.StatusCode, buf.Bytes())
	}
	return messageID(buf.Bytes()), nil
}

// messageID cuts "message_id" out of a 202 body without decoding all of it:
// the generator shares the machine with what it measures.
func messageID(body []byte) string {
	const key = `"message_id":"`
	i := bytes.Index(body, []byte(key))
	if i < 0 {
		return ""
	}
	rest := body[i+len(key):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return string(rest[:j])
}
