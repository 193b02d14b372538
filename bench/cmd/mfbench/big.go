package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/internal/devstack"
)

// big sends BigClients concurrent raw POSTs and as many concurrent SMTP
// submissions, each of BigSize bytes, to one `mailferry serve --roles api`
// with MAILFERRY_MAX_BYTES_IN_FLIGHT=BigCap, and reports the process's
// peak RSS against the cap and how many were told to come back later.
func (b *bench) big(ctx context.Context) *scenarioResult {
	cfg := b.cfg
	res := newScenario("big", fmt.Sprintf("Memory bound: %d concurrent %d MiB raw POSTs and %d concurrent %d MiB SMTP submissions, one `mailferry serve --roles api`, MAILFERRY_MAX_BYTES_IN_FLIGHT=%d MiB",
		cfg.BigClients, cfg.BigSize>>20, cfg.BigClients, cfg.BigSize>>20, cfg.BigCap>>20),
		metric{"hwm", "peak RSS (VmHWM) of mailferry", "MiB", 0},
		metric{"hwm_cap", "peak RSS ÷ bytes-in-flight cap", "×", 2},
		metric{"http_202", "POSTs accepted (202)", "", 0},
		metric{"http_503", "POSTs told to retry (503)", "", 0},
		metric{"smtp_250", "submissions accepted (250)", "", 0},
		metric{"smtp_452", "submissions told to retry (452 4.3.1)", "", 0},
		metric{"errors", "any other outcome", "", 0},
	)
	msg := bigMessage(cfg.BigSize)
	post := []byte(`{"raw":"` + base64.StdEncoding.EncodeToString(msg) + `"}`)
	for i := range cfg.Runs {
		b.quiet(ctx, res)
		run, err := b.bigRun(ctx, msg, post)
		if err != nil {
			res.Error = err.Error()
			break
		}
		res.add(run)
		b.progress("big run %d: peak RSS %.0f MiB (cap %d MiB); HTTP %v×202 %v×503, SMTP %v×250 %v×452, %v other",
			i+1, run["hwm"], cfg.BigCap>>20, run["http_202"], run["http_503"], run["smtp_250"], run["smtp_452"], run["errors"])
	}
	res.finish()
	return res
}

func (b *bench) bigRun(ctx context.Context, msg, post []byte) (map[string]float64, error) {
	cfg := b.cfg
	r, err := b.st.newRun(ctx, "big", string(dkim.AlgorithmEd25519))
	if err != nil {
		return nil, err
	}
	defer b.st.endRun(r)
	certFile, keyFile, err := writeCert(b.st.dir)
	if err != nil {
		return nil, err
	}
	port, err := devstack.FreePort()
	if err != nil {
		return nil, err
	}
	subAddr := fmt.Sprintf("127.0.0.1:%d", port)
	p, err := b.st.startMailferry(ctx, r, "api",
		"MAILFERRY_SUBMISSION_ADDR="+subAddr, "MAILFERRY_TLS_CERT="+certFile, "MAILFERRY_TLS_KEY="+keyFile,
		"MAILFERRY_MAX_MESSAGE_BYTES="+strconv.Itoa(cfg.BigSize+1<<20),
		"MAILFERRY_MAX_BYTES_IN_FLIGHT="+strconv.FormatInt(cfg.BigCap, 10))
	if err != nil {
		return nil, err
	}
	defer b.st.stopMailferry(p, 10*time.Second)

	var mu sync.Mutex
	counts := map[string]float64{}
	count := func(k string) { mu.Lock(); counts[k]++; mu.Unlock() }
	client := &http.Client{Timeout: 5 * time.Minute}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range cfg.BigClients {
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+p.addr+"/v1/messages", bytes.NewReader(post))
			if err != nil {
				count("errors")
				return
			}
			req.Header.Set("Authorization", "Bearer "+r.apiKey)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				count("errors")
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusAccepted:
				count("http_202")
			case http.StatusServiceUnavailable:
				count("http_503")
			default:
				count("errors")
			}
		}()
		go func() {
			defer wg.Done()
			<-start
			count(submitBig(subAddr, r.apiKey, msg))
		}()
	}
	close(start)
	wg.Wait()
	mem := readMemory(p.pid())
	counts["hwm"] = mib(mem.HWM)
	counts["hwm_cap"] = ratio(float64(mem.HWM), float64(cfg.BigCap))
	for _, k := range []string{"http_202", "http_503", "smtp_250", "smtp_452", "errors"} {
		counts[k] += 0
	}
	return counts, nil
}

// submitBig sends one message over STARTTLS and AUTH and names the outcome.
func submitBig(addr, key string, msg []byte) string {
	c, err := smtp.DialStartTLS(addr, &tls.Config{InsecureSkipVerify: true}) // our own self-signed certificate
	if err != nil {
		return "errors"
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "bench", key)); err != nil {
		return "errors"
	}
	if err := c.Mail("bench@"+senderDomain, &smtp.MailOptions{Size: int64(len(msg))}); err != nil {
		return smtpOutcome(err)
	}
	if err := c.Rcpt("rcpt@"+healthyDomain(0), nil); err != nil {
		return "errors"
	}
	w, err := c.Data()
	if err != nil {
		return "errors"
	}
	_, err = w.Write(msg)
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		return smtpOutcome(err)
	}
	_ = c.Quit()
	return "smtp_250"
}

func smtpOutcome(err error) string {
	var se *smtp.SMTPError
	if errors.As(err, &se) && se.Code == 452 {
		return "smtp_452"
	}
	return "errors"
}

// bigMessage is an RFC 5322 message of about size bytes, 78-octet lines.
func bigMessage(size int) []byte {
	var b bytes.Buffer
	b.Grow(size + 100)
	fmt.Fprintf(&b, "From: bench@%s\r\nTo: rcpt@%s\r\nSubject: big\r\n\r\n", senderDomain, healthyDomain(0))
	line := strings.Repeat("z", 76) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.Bytes()
}

// writeCert puts a self-signed certificate for submission in dir.
func writeCert(dir string) (certFile, keyFile string, err error) {
	cert, err := selfSigned(relayHost)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, "submission.crt"), filepath.Join(dir, "submission.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}
