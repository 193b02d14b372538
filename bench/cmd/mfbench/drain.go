package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"
)

// lorem is the text the request bodies are cut from.
const lorem = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore"

// bodyText is about n bytes of plain text in lines of under 78 characters.
func bodyText(n int) string {
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		line := fmt.Sprintf("%04d %s", i, lorem[:min(len(lorem), 66)])
		if b.Len()+len(line)+1 > n {
			line = line[:max(n-b.Len()-1, 0)]
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}

// requestBodies builds one POST /v1/messages body per domain: From the
// sender domain, one recipient, a text part of textBytes.
func requestBodies(domains []string, textBytes int) [][]byte {
	text := bodyText(textBytes)
	out := make([][]byte, len(domains))
	for i, d := range domains {
		b, _ := json.Marshal(map[string]any{
			"from":    "Bench <bench@" + senderDomain + ">",
			"to":      []string{"user@" + d},
			"subject": "Benchmark message",
			"text":    text,
		})
		out[i] = b
	}
	return out
}

// drainOptions describe one "accept everything, then deliver everything"
// run: the API accepts Count messages with no worker running, then a
// worker process starts and the sink times the deliveries.
type drainOptions struct {
	Name      string
	Algorithm string // DKIM key of the run; "" none
	Domains   []string
	Healthy   func(domain string) bool // nil: all are
	Count     int
	TextBytes int
	Timeout   time.Duration
	Profile   string // name of the profile to take during the drain; "" none
	Keep      int    // messages kept whole for DKIM verification
	// WorkerEnv is added to the worker's environment (a smarthost).
	WorkerEnv []string
	// WorkerRoles are the delivering process's roles; "" worker,scheduler.
	WorkerRoles string
	// Workers is how many delivering processes start at once; 0 is 1. The
	// second and later run only the worker role.
	Workers int
	// Prepare, if set, runs once the API is up, before the load (a
	// webhook endpoint to create).
	Prepare func(ctx context.Context, apiAddr, apiKey string) error
}

type accepted struct {
	id string
	at time.Time
}

// drainResult is what one drain run measured.
type drainResult struct {
	load        loadResult
	acceptCPU   cpuUse
	drainCPU    cpuUse
	apiMem      memory
	workerMem   memory
	redisBytes  int64 // used_memory after accepting minus before
	want        int   // messages the sink should get at healthy addresses
	tally       *tally
	workerStart time.Time
	drainWindow time.Duration // worker start → last arrival, or the timeout
	timedOut    bool
	latencies   []time.Duration // accept→delivered of healthy messages, sorted
	acceptPG    pgStats         // database counters of the accept phase
	drainPG     pgStats         // database counters of the delivery phase
	smtpMean    float64         // seconds per SMTP transaction, from the worker's metrics
	acceptBatch float64         // messages per accept transaction, from the API's metrics
	verified    int             // kept messages whose DKIM signature verified
	verifyErr   string
}

func (b *bench) drain(ctx context.Context, o drainOptions) (*drainResult, error) {
	st := b.st
	r, err := st.newRun(ctx, o.Name, o.Algorithm)
	if err != nil {
		return nil, err
	}
	defer st.endRun(r)
	api, err := st.startMailferry(ctx, r, "api")
	if err != nil {
		return nil, err
	}
	defer st.stopMailferry(api, 10*time.Second)
	if o.Prepare != nil {
		if err := o.Prepare(ctx, api.addr, r.apiKey); err != nil {
			return nil, err
		}
	}

	pg0, err := st.dbStats(ctx, r)
	if err != nil {
		return nil, err
	}
	bodies := requestBodies(o.Domains, o.TextBytes)
	acc := make([]accepted, o.Count)
	mem0, err := st.redisUsedMemory(ctx)
	if err != nil {
		return nil, err
	}
	c0 := st.cpu(api)
	load := runLoad(ctx, loadOptions{
		URL: "http://" + api.addr + "/v1/messages", Auth: r.apiKey,
		Clients: b.cfg.Clients, Count: o.Count,
		Body:     func(i int) []byte { return bodies[i%len(bodies)] },
		Accepted: func(i int, id string, at time.Time) { acc[i] = accepted{id, at} },
	})
	c1 := st.cpu(api)
	mem1, err := st.redisUsedMemory(ctx)
	if err != nil {
		return nil, err
	}
	res := &drainResult{load: load, acceptCPU: since(c0, c1), apiMem: readMemory(api.pid()), redisBytes: mem1 - mem0,
		acceptBatch: api.histogramMean("mailferry_accept_batch_size")}
	st.stopMailferry(api, 10*time.Second)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	pg1, err := st.dbStats(ctx, r)
	if err != nil {
		return nil, err
	}
	res.acceptPG = pg1.sub(pg0)

	healthy := func(i int) bool { return o.Healthy == nil || o.Healthy(o.Domains[i%len(o.Domains)]) }
	for i, a := range acc {
		if a.id != "" && healthy(i) {
			res.want++
		}
	}
	res.tally = st.sink.reset(res.want, o.Keep)
	c2 := st.cpu()
	res.workerStart = time.Now()
	roles := o.WorkerRoles
	if roles == "" {
		roles = "worker,scheduler"
	}
	worker, err := st.startMailferry(ctx, r, roles, o.WorkerEnv...)
	if err != nil {
		return nil, err
	}
	defer st.stopMailferry(worker, 2*time.Second)
	workers := []*mfProc{worker}
	for range max(o.Workers, 1) - 1 {
		w, err := st.startMailferry(ctx, r, "worker", o.WorkerEnv...)
		if err != nil {
			return nil, err
		}
		defer st.stopMailferry(w, 2*time.Second)
		workers = append(workers, w)
	}
	var prof, self <-chan string
	if o.Profile != "" {
		prof = b.profile(worker, o.Profile, 0)
		self = b.profileSelf(o.Profile+"-mfbench", 0)
	}
	timer := time.NewTimer(o.Timeout)
	select {
	case <-res.tally.done:
	case <-timer.C:
		res.timedOut = true
	case <-ctx.Done():
		timer.Stop()
		return nil, ctx.Err()
	}
	timer.Stop()
	for _, ch := range []<-chan string{prof, self} {
		if ch == nil {
			continue
		}
		if p := <-ch; p != "" {
			b.rep.Profiles = append(b.rep.Profiles, p)
		}
	}
	c3 := st.cpu(workers...)
	res.drainCPU = since(c2, c3)
	res.drainWindow = time.Since(res.workerStart)
	res.workerMem = readMemory(worker.pid())
	res.smtpMean = worker.histogramMean("mailferry_delivery_duration_seconds")
	// Deliveries still running (the tarpit) are cut off: SIGKILL soon.
	for _, w := range workers {
		st.stopMailferry(w, 2*time.Second)
	}
	if pg2, err := st.dbStats(ctx, r); err == nil {
		res.drainPG = pg2.sub(pg1)
	}

	for i, a := range acc {
		if a.id == "" || !healthy(i) {
			continue
		}
		if at, ok := res.tally.arrival(a.id); ok {
			res.latencies = append(res.latencies, at.Sub(a.at))
		}
	}
	slices.Sort(res.latencies)
	res.tally.mu.Lock()
	samples := slices.Clone(res.tally.samples)
	res.tally.mu.Unlock()
	for _, m := range samples {
		vs, err := msgauth.VerifyWithOptions(bytes.NewReader(m), &msgauth.VerifyOptions{LookupTXT: st.dns.lookupTXT})
		switch {
		case err != nil:
			res.verifyErr = err.Error()
		case len(vs) == 0:
			res.verifyErr = "no DKIM-Signature"
		case vs[0].Err != nil:
			res.verifyErr = vs[0].Err.Error()
		default:
			res.verified++
		}
	}
	return res, nil
}

// delivered is how many healthy messages arrived.
func (d *drainResult) delivered() int { return d.tally.count() }

// drainRate is deliveries per second from the first arrival to the last.
func (d *drainResult) drainRate() float64 {
	t := d.tally
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(t.arrivals)
	if n < 2 {
		return 0
	}
	return rate(n-1, t.last.Sub(t.first))
}

// rateFromStart counts from the moment the worker process was started.
func (d *drainResult) rateFromStart() float64 {
	t := d.tally
	t.mu.Lock()
	defer t.mu.Unlock()
	return rate(len(t.arrivals), t.last.Sub(d.workerStart))
}

// perAccepted is CPU seconds per 1,000 accepted messages (= ms per message).
func (d *drainResult) perAccepted(sec float64) float64 {
	return 1000 * ratio(sec, float64(d.load.OK))
}

// perDelivered is CPU seconds per 1,000 delivered messages.
func (d *drainResult) perDelivered(sec float64) float64 {
	return 1000 * ratio(sec, float64(d.delivered()))
}

// busy is the share of the machine's CPU time used by every process
// measured (bench included) from the worker's start to the end of the
// drain.
func (d *drainResult) busy() float64 {
	return 100 * ratio(d.drainCPU.total()+d.drainCPU.Bench, d.drainWindow.Seconds()*float64(runtime.NumCPU()))
}
