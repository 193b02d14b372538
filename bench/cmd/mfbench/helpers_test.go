package main

import (
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	for _, c := range []struct {
		in            []float64
		med, min, max float64
	}{
		{[]float64{3, 1, 2}, 2, 1, 3},
		{[]float64{4, 1, 3, 2}, 2.5, 1, 4},
		{[]float64{5}, 5, 5, 5},
	} {
		s := summarize(c.in)
		if s.Median != c.med || s.Min != c.min || s.Max != c.max || len(s.Runs) != len(c.in) {
			t.Errorf("summarize(%v) = %+v, want median %v range %v–%v", c.in, s, c.med, c.min, c.max)
		}
		if s.Runs[0] != c.in[0] {
			t.Errorf("summarize(%v) reordered the runs: %v", c.in, s.Runs)
		}
	}
	if s := summarize(nil); len(s.Runs) != 0 || s.Median != 0 {
		t.Errorf("summarize(nil) = %+v", s)
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for p, want := range map[float64]time.Duration{50: 50 * time.Millisecond, 99: 99 * time.Millisecond, 100: 100 * time.Millisecond, 0: time.Millisecond} {
		if got := percentile(d, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	if percentile(nil, 50) != 0 {
		t.Error("percentile of nothing is not 0")
	}
}

func TestNum(t *testing.T) {
	for v, want := range map[float64]string{1234567: "1,234,567", 999: "999", -1234.5: "-1,234.5", 0: "0"} {
		d := 0
		if v == -1234.5 {
			d = 1
		}
		if got := num(v, d); got != want {
			t.Errorf("num(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestHeaderParsing(t *testing.T) {
	hdr := []byte("DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n d=x.test; s=s1;\r\n" +
		"From: a@x.test\r\nMessage-ID: <0197-abc@relay.bench.test>\r\n\r\n")
	if got := headerValue(hdr, "message-id"); got != "0197-abc@relay.bench.test" {
		t.Errorf("Message-ID = %q", got)
	}
	if got := dkimAlgorithm(hdr); got != "ed25519-sha256" {
		t.Errorf("a= %q", got)
	}
	if got := dkimAlgorithm([]byte("From: a@x.test\r\n\r\n")); got != "" {
		t.Errorf("unsigned: a= %q", got)
	}
}

func TestMessageID(t *testing.T) {
	body := []byte(`{"id":"1","message_id":"abc@relay","recipients":[]}`)
	if got := messageID(body); got != "abc@relay" {
		t.Errorf("messageID = %q", got)
	}
	if got := messageID([]byte(`{"type":"x"}`)); got != "" {
		t.Errorf("messageID of a problem = %q", got)
	}
}

func TestDomains(t *testing.T) {
	d := domains(100, 0.1)
	tarpit := 0
	for i, name := range d {
		if !isHealthy(name) {
			tarpit++
			if i%10 != 9 {
				t.Errorf("tarpit domain at %d: want every tenth", i)
			}
		}
	}
	if tarpit != 10 {
		t.Errorf("%d tarpit domains of 100, want 10", tarpit)
	}
	for _, name := range domains(50, 0) {
		if !isHealthy(name) {
			t.Fatalf("fraction 0 gave tarpit domain %s", name)
		}
	}
}

func TestTenths(t *testing.T) {
	start := time.Now()
	var times []time.Time
	// 100 arrivals 10 ms apart, then 100 arrivals 20 ms apart.
	at := start
	for i := range 200 {
		times = append(times, at)
		if i < 100 {
			at = at.Add(10 * time.Millisecond)
		} else {
			at = at.Add(20 * time.Millisecond)
		}
	}
	first, last := tenths(times)
	if first < 99 || first > 101 || last < 49 || last > 51 {
		t.Errorf("tenths = %.1f, %.1f; want 100 and 50 per second", first, last)
	}
}

func TestBreakdown(t *testing.T) {
	top := `File: mailferry
Duration: 10s, Total samples = 5s (50.00%)
      flat  flat%   sum%        cum   cum%
     0.10s  2.00%  2.00%      2.50s 50.00%  github.com/mailferry/mailferry/relay.(*Client).Deliver
     0.20s  4.00%  6.00%      1.00s 20.00%  crypto/tls.(*Conn).HandshakeContext (inline)
     0.01s  0.20%  6.20%      0.50s 10.00%  runtime.gcBgMarkWorker
     0.01s  0.20%  6.40%      0.40s  8.00%  runtime.gcBgMarkWorker.func2
`
	bd := breakdown("x", "worker", top, breakdownSpec)
	if bd.Cores != 0.5 {
		t.Errorf("cores = %v, want 0.5", bd.Cores)
	}
	got := map[string]float64{}
	for _, r := range bd.Rows {
		got[r.Label] = r.Percent
	}
	if got["  SMTP transaction (Client.Deliver)"] != 50 || got["    TLS handshake"] != 20 || got["garbage collection (background marking)"] != 10 {
		t.Errorf("rows = %v", got)
	}
	if _, ok := got["  PostgreSQL LoadDelivery"]; ok {
		t.Error("a function absent from the profile got a row")
	}
}
