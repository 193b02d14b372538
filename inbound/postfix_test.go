package inbound

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/bounce"
	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/intake"
	"github.com/mailferry/mailferry/internal/testmx"
	"github.com/mailferry/mailferry/internal/wait"
	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/relay"
	"github.com/mailferry/mailferry/smtpclient"
	"github.com/mailferry/mailferry/store"
)

const postfixBin = "/usr/sbin/postfix"

// postfix is a Postfix instance of one test: its own configuration, queue
// and data directories under the test's temporary directory, listening on
// one loopback address. It never touches a system Postfix: every command
// names its configuration directory.
type postfix struct {
	t       *testing.T
	dir     string // configuration directory
	maillog string
	addr    string // ip:port of its SMTP server
}

// postfixOptions: the domain it is the final destination for (any local
// part accepted at RCPT, an unknown user bounced after queueing), and
// where mail for the bounce domain goes.
type postfixOptions struct {
	ip           string // 127.0.0.x
	destination  string
	bounceDomain string
	bounceTo     string // ip:port of Mailferry's inbound listener
}

func startPostfix(t *testing.T, o postfixOptions) *postfix {
	t.Helper()
	if _, err := os.Stat(postfixBin); err != nil {
		t.Fatalf("Postfix is not installed (%v): run scripts/install-deps.sh or apt-get install postfix", err)
	}
	if os.Geteuid() != 0 {
		t.Fatal("the Postfix test starts its own Postfix instance, which must be started as root (its daemons then run as the postfix user)")
	}
	owner, err := user.Lookup("postfix")
	if err != nil {
		t.Fatalf("no postfix user (the Debian package creates it): %v", err)
	}
	uid, _ := strconv.Atoi(owner.Uid)
	base := t.TempDir()
	// Postfix's daemons, as the postfix user, must reach the directories.
	for d := base; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := &postfix{t: t, dir: filepath.Join(base, "etc"), maillog: filepath.Join(base, "maillog")}
	for _, d := range []string{"etc", "queue", "data", "spool"} {
		if err := os.Mkdir(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(filepath.Join(base, "data"), uid, -1); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(base, "spool"), 0o1777); err != nil {
		t.Fatal(err)
	}
	port := freePort(t, o.ip)
	p.addr = net.JoinHostPort(o.ip, strconv.Itoa(port))
	mainCF := strings.Join([]string{
		"compatibility_level = 3.6",
		"queue_directory = " + filepath.Join(base, "queue"),
		"data_directory = " + filepath.Join(base, "data"),
		"mail_spool_directory = " + filepath.Join(base, "spool"),
		"maillog_file_prefixes = " + base,
		"maillog_file = " + p.maillog,
		"mail_owner = postfix",
		"setgid_group = postdrop",
		"myhostname = postfix.test",
		"mydomain = postfix.test",
		"myorigin = postfix.test",
		"mydestination = " + o.destination,
		// The listener is bound in master.cf; this only keeps Postfix
		// off every other address.
		"inet_interfaces = loopback-only",
		"inet_protocols = ipv4",
		"mynetworks = 127.0.0.0/8",
		"smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
		// Accept any local part at RCPT; local(8) then bounces an unknown
		// user after the 250: the asynchronous bounce under test.
		"local_recipient_maps =",
		"alias_maps =",
		"alias_database =",
		"biff = no",
		// The DSN to the return path goes to Mailferry's listener.
		"transport_maps = inline:{ { " + o.bounceDomain + " = smtp:[" + strings.Replace(o.bounceTo, ":", "]:", 1) + " } }",
		"smtp_dns_support_level = disabled",
		"smtp_tls_security_level = none",
		"smtpd_tls_security_level = none",
		"delay_warning_time = 0",
		"",
	}, "\n")
	if err := os.WriteFile(filepath.Join(p.dir, "main.cf"), []byte(mainCF), 0o644); err != nil {
		t.Fatal(err)
	}
	master, err := masterCF(p.addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.dir, "master.cf"), []byte(master), 0o644); err != nil {
		t.Fatal(err)
	}
	p.run("start")
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(p.maillog); err == nil {
				t.Logf("postfix maillog:\n%s", b)
			}
		}
		p.run("stop")
	})
	wait.For(t, "Postfix to listen on "+p.addr, func() bool {
		c, err := net.Dial("tcp", p.addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return p
}

// run runs `postfix -c DIR cmd`.
func (p *postfix) run(cmd string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, postfixBin, "-c", p.dir, cmd).CombinedOutput()
	if err != nil {
		b, _ := os.ReadFile(p.maillog)
		p.t.Fatalf("postfix -c %s %s: %v\n%s\nmaillog:\n%s", p.dir, cmd, err, out, b)
	}
}

// logLines counts maillog lines holding all of parts.
func (p *postfix) logLines(parts ...string) int {
	b, err := os.ReadFile(p.maillog)
	if err != nil {
		return 0
	}
	n := 0
	for line := range strings.Lines(string(b)) {
		all := true
		for _, s := range parts {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}

// masterCF is the package's master.cf with every service out of chroot
// (the instance has no chroot tree) and the SMTP server on addr alone.
func masterCF(addr string) (string, error) {
	f, err := os.Open("/etc/postfix/master.cf")
	if err != nil {
		return "", err
	}
	defer f.Close()
	var b strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if line == "" || line[0] == '#' || line[0] == ' ' || line[0] == '\t' || len(fields) < 8 {
			b.WriteString(line + "\n")
			continue
		}
		if fields[0] == "smtp" && fields[1] == "inet" {
			fields[0] = addr
		}
		fields[4] = "n" // chroot
		b.WriteString(strings.Join(fields, " ") + "\n")
	}
	return b.String(), sc.Err()
}

// freePort is a port free on ip now.
func freePort(t *testing.T, ip string) int {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestPostfixBounce is the whole path with a real MTA: Mailferry delivers
// to Postfix (250, delivered), Postfix finds the user unknown after
// queueing and sends its DSN to the VERP return path, which routes to the
// inbound listener; the recipient turns bounced asynchronously and is
// suppressed, and the next message to it is suppressed at accept and
// never reaches Postfix.
func TestPostfixBounce(t *testing.T) {
	e := newEnv(t)
	p := e.processor(func(o *ProcessorOptions) { o.Poll = 200 * time.Millisecond })
	listenAddr := e.listen(func(o *ServerOptions) { o.Stored = p.Wake })
	ctx, cancel := context.WithCancel(context.Background())
	procDone := make(chan error, 1)
	go func() { procDone <- p.Run(ctx) }()
	defer func() { cancel(); <-procDone }()

	const dest = "dest.test"
	pf := startPostfix(t, postfixOptions{ip: "127.0.0.61", destination: dest, bounceDomain: bounceDomain, bounceTo: listenAddr})
	_, pfPort, _ := net.SplitHostPort(pf.addr)
	port, _ := strconv.Atoi(pfPort)
	dns := testmx.StartDNS(t)
	dns.MX(dest, 10, "mx."+dest)
	dns.A("mx."+dest, "127.0.0.61")
	startWorker(t, e, dns.Addr(), port)

	gone := "gone-user@" + dest
	first := e.submit(mail.Draft{From: "Alice <alice@example.com>", To: []string{gone}, Subject: "first", Text: "hello"})
	var v *store.MessageView
	wait.Within(t, 90*time.Second, "the recipient to bounce asynchronously", func() bool {
		var err error
		v, err = e.st.GetMessage(context.Background(), e.key.TenantID, first)
		return err == nil && len(v.Recipients) == 1 && v.Recipients[0].BounceAsync
	})
	r := v.Recipients[0]
	if r.Status != store.RecipientBounced || derefStr(r.BounceType) != "hard" || derefStr(r.BounceClass) != "invalid_recipient" {
		t.Errorf("recipient: status %s type %s class %s", r.Status, derefStr(r.BounceType), derefStr(r.BounceClass))
	}
	if n := e.count(`SELECT count(*) FROM attempts WHERE message_id = $1 AND outcome = 'delivered' AND smtp_code = 250`, first); n != 1 {
		t.Error("no delivered attempt before the bounce: Postfix's 250 was not recorded")
	}
	if n := e.count(`SELECT count(*) FROM recipient_events WHERE message_id = $1 AND type = 'bounced' AND async
		AND reporting_mta = 'postfix.test' AND enhanced_code = '5.1.1'`, first); n != 1 {
		t.Error("no async bounced event naming Postfix as the reporting MTA")
	}
	if n := e.count(`SELECT count(*) FROM suppressions WHERE tenant_id = $1 AND email = $2 AND reason = 'hard_bounce' AND message_id = $3`,
		e.key.TenantID, gone, first); n != 1 {
		t.Fatal("the address is not suppressed")
	}
	if n := pf.logLines("to=<"+gone+">", "status=bounced"); n != 1 {
		t.Errorf("Postfix bounced %s %d times, want 1", gone, n)
	}

	// The next message goes to the suppressed address and to another
	// unknown one: only the other reaches Postfix.
	other := "other-user@" + dest
	second := e.submit(mail.Draft{From: "Alice <alice@example.com>", To: []string{gone, other}, Subject: "second", Text: "hello"})
	wait.Within(t, 90*time.Second, "the other recipient to bounce asynchronously", func() bool {
		var err error
		v, err = e.st.GetMessage(context.Background(), e.key.TenantID, second)
		if err != nil || len(v.Recipients) != 2 {
			return false
		}
		for _, r := range v.Recipients {
			if r.Email == other && r.BounceAsync {
				return true
			}
		}
		return false
	})
	for _, r := range v.Recipients {
		if r.Email == gone && (r.Status != store.RecipientSuppressed || derefStr(r.SuppressedReason) != "hard_bounce" || r.Attempts != 0) {
			t.Errorf("%s in the second message: status %s reason %s attempts %d", gone, r.Status, derefStr(r.SuppressedReason), r.Attempts)
		}
	}
	if n := pf.logLines("to=<" + gone + ">"); n != 1 {
		t.Errorf("Postfix saw %s in %d deliveries, want only the first message's", gone, n)
	}
}

// startWorker runs a relay worker that delivers through the test DNS to
// port, with VERP return paths, until the test ends.
func startWorker(t *testing.T, e *env, dnsAddr string, port int) {
	t.Helper()
	router, err := relay.NewRouter(relay.RouterOptions{DNSServer: dnsAddr, AllowPrivate: true, LookupTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	client, err := smtpclient.New(smtpclient.Options{Hostname: "relay.test", Port: port, AllowPrivate: true})
	if err != nil {
		t.Fatal(err)
	}
	sealer, err := dkim.NewSealer([]byte(testKey))
	if err != nil {
		t.Fatal(err)
	}
	w, err := relay.NewWorker(relay.WorkerOptions{
		Ledger: e.st, Queue: e.stack.QueueFor(t, queue.Options{Consumer: "w1", VisibilityTimeout: time.Minute}),
		Route: router.Route, Client: client, Signer: dkim.NewSigner(dkim.SignOptions{}), Sealer: sealer,
		ReturnPaths: e.signer, Rules: bounce.DefaultRules(), CountBounce: func(string) {},
		RetrySchedule: []time.Duration{time.Second}, MaxQueueAge: time.Hour, Heartbeat: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; client.CloseIdle() })
}

// submit accepts a message through intake, as the API does.
func (e *env) submit(d mail.Draft) uuid.UUID {
	e.t.Helper()
	msg, err := mail.Build(d, mail.BuildOptions{Hostname: "relay.test"})
	if err != nil {
		e.t.Fatal(err)
	}
	s := intake.Submission{TenantID: e.key.TenantID, APIKeyID: e.key.ID, Ingress: "api", Message: msg}
	r, err := e.stack.Intake.NewReceipt(s)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.stack.Intake.Submit(context.Background(), r, s); err != nil {
		e.t.Fatal(err)
	}
	return r.ID
}

func derefStr(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
