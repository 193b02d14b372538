package tlspolicy

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/mail"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/smtpclient"
)

func TestParseTLSRPT(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int // URIs; -1: error
	}{
		{"v=TLSRPTv1; rua=mailto:reports@example.com", 1},
		{"v=TLSRPTv1;rua=mailto:a@example.com,https://r.example.com/v1", 2},
		{"v=TLSRPTv1; rua=ftp://x.example", -1},
		{"v=TLSRPTv2; rua=mailto:a@example.com", -1},
		{"v=TLSRPTv1;", -1},
	} {
		got, err := ParseTLSRPT(tc.in)
		if tc.want < 0 {
			if err == nil {
				t.Errorf("ParseTLSRPT(%q) = %v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || len(got) != tc.want {
			t.Errorf("ParseTLSRPT(%q) = %v, %v; want %d URIs", tc.in, got, err, tc.want)
		}
	}
}

// ruaServer is an HTTPS endpoint on 127.0.0.11 taking report POSTs.
type ruaServer struct {
	port  int
	mu    sync.Mutex
	posts []post
}

type post struct {
	contentType string
	body        []byte
}

func startRUA(t *testing.T) *ruaServer {
	ln, err := net.Listen("tcp", "127.0.0.11:0")
	if err != nil {
		t.Fatal(err)
	}
	rs := &ruaServer{port: ln.Addr().(*net.TCPAddr).Port}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rs.mu.Lock()
		rs.posts = append(rs.posts, post{r.Header.Get("Content-Type"), b})
		rs.mu.Unlock()
	}), TLSConfig: &tls.Config{Certificates: []tls.Certificate{testCA.Issue(t, "rua.example.test")}}}
	done := make(chan struct{})
	go func() { defer close(done); srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { srv.Close(); <-done })
	return rs
}

func (rs *ruaServer) got() []post {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return append([]post(nil), rs.posts...)
}

type mailbox struct {
	mu   sync.Mutex
	sent [][]byte
}

func (m *mailbox) MailReport(_ context.Context, from, to string, raw []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sent = append(m.sent, raw)
	return nil
}

func gunzip(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func validate(t *testing.T, js []byte) {
	t.Helper()
	f, err := os.Open("testdata/tlsrpt-schema.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	if err := c.AddResource("tlsrpt.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("tlsrpt.json")
	if err != nil {
		t.Fatal(err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(js))
	if err != nil {
		t.Fatal(err)
	}
	if err := sch.Validate(inst); err != nil {
		t.Fatalf("report %s does not validate: %v", js, err)
	}
}

// TestTLSRPTReport: the deliveries of TestPolicies' kind are counted, and
// the next day's report goes to both rua URIs of the domain, once for the
// fleet, valid against RFC 8460 4.4.
func TestTLSRPTReport(t *testing.T) {
	e, _ := world(t)
	c := e.client(e.store, nil)
	day := e.now.UTC().Truncate(24 * time.Hour)
	// Two sessions under the testing policy of other.test: one fails.
	for _, h := range []string{"127.0.0.2", "127.0.0.3"} {
		name := map[string]string{"127.0.0.2": "mx1.other.test", "127.0.0.3": "mx2.other.test"}[h]
		c.Deliver(ctx(t), hostsOf(name, h), envelope("", "bob@other.test"))
	}
	// The worker's counts reach the shared store when it shuts down, long
	// before its next periodic flush.
	flushCtx, stop := context.WithCancel(t.Context())
	flushed := make(chan error)
	go func() { flushed <- c.RunCounts(flushCtx, time.Hour) }()
	stop()
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	rs := startRUA(t)
	e.dns.A("rua.example.test", "127.0.0.11")
	e.dns.TXT("_smtp._tls.other.test", "v=TLSRPTv1; rua=https://rua.example.test:"+itoa(rs.port)+"/v1/report,mailto:tlsrpt@example.test")
	mb := &mailbox{}
	newReporter := func() *Reporter {
		r, err := NewReporter(ReporterOptions{Store: e.openStore(), From: "tlsrpt@relay.test", Mailer: mb, DNSServer: e.dns.Addr(),
			AllowPrivate: true, Timeout: 3 * time.Second, Now: func() time.Time { return day.Add(25 * time.Hour) }})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// Two processes on a short schedule: one report between them.
	runCtx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for range 2 {
		r := newReporter()
		wg.Go(func() { r.Run(runCtx, 20*time.Millisecond) })
	}
	wait.For(t, "the report POST", func() bool { return len(rs.got()) > 0 })
	cancel()
	wg.Wait()
	posts := rs.got()
	if len(posts) != 1 {
		t.Fatalf("%d POSTs, want 1", len(posts))
	}
	if posts[0].contentType != "application/tlsrpt+gzip" {
		t.Errorf("Content-Type %q", posts[0].contentType)
	}
	js := gunzip(t, posts[0].body)
	validate(t, js)
	var rep Report
	if err := json.Unmarshal(js, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Policies) != 1 || rep.Policies[0].Policy.Type != "sts" || rep.Policies[0].Policy.Domain != "other.test" ||
		rep.Policies[0].Summary.Successful != 1 || rep.Policies[0].Summary.Failure != 1 ||
		len(rep.Policies[0].FailureDetails) != 1 || rep.Policies[0].FailureDetails[0].ResultType != "certificate-not-trusted" {
		t.Errorf("report %s", js)
	}
	if rep.DateRange.Start != day.Format(time.RFC3339) {
		t.Errorf("date range %+v, want the day %s", rep.DateRange, day)
	}

	// The mail form: multipart/report, report-type tlsrpt, the same report.
	mb.mu.Lock()
	sent := mb.sent
	mb.mu.Unlock()
	if len(sent) != 1 {
		t.Fatalf("%d report mails, want 1", len(sent))
	}
	m, err := mail.ReadMessage(bytes.NewReader(sent[0]))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "tlsrpt" {
		t.Fatalf("Content-Type %q", m.Header.Get("Content-Type"))
	}
	if m.Header.Get("TLS-Report-Domain") != "other.test" || m.Header.Get("TLS-Required") != "No" ||
		!strings.HasPrefix(m.Header.Get("Subject"), "Report Domain: other.test Submitter: relay.test Report-ID: <") {
		t.Errorf("header %v", m.Header)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	found := false
	for {
		p, err := mr.NextPart()
		if err != nil {
			break
		}
		if p.Header.Get("Content-Type") == "application/tlsrpt+gzip" {
			b, _ := io.ReadAll(base64.NewDecoder(base64.StdEncoding, p))
			validate(t, gunzip(t, b))
			found = true
		}
	}
	if !found {
		t.Error("no application/tlsrpt+gzip part")
	}
	// Claimed: a later run sends nothing again.
	if n, err := newReporter().SendDay(t.Context(), day); n != 0 || err != nil {
		t.Errorf("second SendDay: %d sent, %v", n, err)
	}
}

func hostsOf(name, ip string) []smtpclient.Host { return []smtpclient.Host{host(name, ip)} }

func itoa(n int) string { return strconv.Itoa(n) }

func FuzzParseTLSRPT(f *testing.F) {
	f.Add("v=TLSRPTv1; rua=mailto:reports@example.com")
	f.Add("v=TLSRPTv1;rua=mailto:a@example.com,https://r.example.com/v1;ext=1")
	f.Fuzz(func(t *testing.T, in string) {
		us, err := ParseTLSRPT(in)
		if err != nil {
			return
		}
		for _, u := range us {
			if u.Scheme != "mailto" && u.Scheme != "https" {
				t.Fatalf("ParseTLSRPT(%q) returned %s", in, u)
			}
		}
	})
}
