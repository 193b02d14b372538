package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/go-chi/chi/v5"

	"github.com/mailferry/mailferry/dkim"
)

// startTrivial serves the S1 ceiling: a chi handler that reads the body
// as the API does and answers 202 with a receipt of the same shape.
func startTrivial() (url string, stop func(), err error) {
	resp := []byte(`{"id":"0197a000-0000-7000-8000-000000000000","message_id":"0197a000-0000-7000-8000-000000000000@relay.bench.test",` +
		`"recipients":[{"email":"user@d0.bench.test","status":"queued"}],"warnings":[]}` + "\n")
	r := chi.NewRouter()
	r.Post("/v1/messages", func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write(resp)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	return "http://" + ln.Addr().String() + "/v1/messages", func() { srv.Close() }, nil
}

// sampleMessage is an RFC 5322 message like the API builds from the S1/S2
// request: the same headers and a 4 KB text body, CRLF line ends.
func sampleMessage(id string) []byte { return sampleMessageText(id, "d0.bench.test", 4096) }

// sampleMessageText is sampleMessage to a recipient at domain with about
// textBytes of text.
func sampleMessageText(id, domain string, textBytes int) []byte {
	var b strings.Builder
	b.WriteString("From: Bench <bench@" + senderDomain + ">\r\n")
	b.WriteString("To: user@" + domain + "\r\n")
	b.WriteString("Subject: Benchmark message\r\n")
	b.WriteString("Message-ID: <" + id + ">\r\n")
	b.WriteString("Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n")
	b.WriteString("MIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: text/plain; charset=utf-8\r\n")
	b.WriteString("Content-Transfer-Encoding: 7bit\r\n\r\n")
	b.WriteString(strings.ReplaceAll(bodyText(textBytes), "\n", "\r\n"))
	return []byte(b.String())
}

// signRate is how many messages one goroutine signs per second with a key
// of alg: the single-core ceiling of DKIM signing.
func signRate(ctx context.Context, alg dkim.Algorithm, d time.Duration) (float64, error) {
	key, err := dkim.Generate(rand.Reader, senderDomain, "ceiling", alg)
	if err != nil {
		return 0, err
	}
	signer := dkim.NewSigner(dkim.SignOptions{})
	keys := []dkim.Key{key}
	msg := sampleMessage("sign@" + relayHost)
	if _, err := signer.Sign(ctx, keys, msg); err != nil { // parses and caches the key
		return 0, err
	}
	n := 0
	start := time.Now()
	for time.Since(start) < d {
		if _, err := signer.Sign(ctx, keys, msg); err != nil {
			return 0, err
		}
		n++
	}
	return rate(n, time.Since(start)), nil
}

// blastOptions describe a direct load on the sink.
type blastOptions struct {
	Addrs    []netip.Addr
	Port     int
	Clients  int
	Duration time.Duration
	// PerConn is how many messages go over one connection: 1 is what
	// Mailferry does today (connect, STARTTLS, EHLO, MAIL, RCPT, DATA, QUIT
	// per message); more reuse the TLS session.
	PerConn int
	// Header is prepended to each message (a DKIM-Signature, so the bytes
	// match what Mailferry sends).
	Header string
	// TextBytes is the size of the message's text; 0 means 4 KB.
	TextBytes int
}

// blast sends messages straight to the sink from the bench's own go-smtp
// client, with STARTTLS like Mailferry: the sink's intake ceiling.
func blast(ctx context.Context, o blastOptions) (float64, int, error) {
	var (
		next    atomic.Int64
		sent    atomic.Int64
		errs    atomic.Int64
		errOnce sync.Once
		first   error
		wg      sync.WaitGroup
	)
	body := sampleMessageText("X", "d0.bench.test", cmp.Or(o.TextBytes, 4096))
	start := time.Now()
	end := start.Add(o.Duration)
	tlsCfg := &tls.Config{InsecureSkipVerify: true, ServerName: "mx.sink.bench.test"}
	for c := range o.Clients {
		wg.Go(func() {
			addr := netip.AddrPortFrom(o.Addrs[c%len(o.Addrs)], uint16(o.Port)).String()
			for ctx.Err() == nil && time.Now().Before(end) {
				n, err := blastConn(addr, tlsCfg, o, body, &next, end)
				sent.Add(int64(n))
				if err != nil {
					errs.Add(1)
					errOnce.Do(func() { first = err })
				}
			}
		})
	}
	wg.Wait()
	if int(errs.Load()) > 0 && sent.Load() == 0 {
		return 0, int(errs.Load()), first
	}
	return rate(int(sent.Load()), time.Since(start)), int(errs.Load()), nil
}

// blastConn sends up to PerConn messages over one connection.
func blastConn(addr string, tlsCfg *tls.Config, o blastOptions, body []byte, next *atomic.Int64, end time.Time) (int, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	c, err := smtp.NewClientStartTLS(conn, tlsCfg)
	if err != nil {
		return 0, fmt.Errorf("STARTTLS: %w", err)
	}
	sent := 0
	for sent < o.PerConn && time.Now().Before(end) {
		id := fmt.Sprintf("blast-%d@bench.test", next.Add(1))
		msg := o.Header + strings.Replace(string(body), "Message-ID: <X>", "Message-ID: <"+id+">", 1)
		if err := c.Mail("bench@"+senderDomain, nil); err != nil {
			return sent, err
		}
		if err := c.Rcpt("user@d0.bench.test", nil); err != nil {
			return sent, err
		}
		w, err := c.Data()
		if err != nil {
			return sent, err
		}
		if _, err := io.WriteString(w, msg); err != nil {
			return sent, err
		}
		if err := w.Close(); err != nil {
			return sent, err
		}
		sent++
	}
	if err := c.Quit(); err != nil && !errors.Is(err, io.EOF) {
		return sent, err
	}
	return sent, nil
}
