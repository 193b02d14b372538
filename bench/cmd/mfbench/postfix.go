package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"github.com/mailferry/mailferry/dkim"
)

// Where Debian's packages put the programs (apt-get install postfix
// opendkim).
const (
	postfixBin  = "/usr/sbin/postfix"
	opendkimBin = "/usr/sbin/opendkim"
)

// postfixAddr is the address of the private Postfix instance's smtpd:
// its own loopback address after the sink's and the tarpit's, so nothing
// on 127.0.0.1:25 is touched.
func postfixAddr(sinkAddrs int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, 0, 0, byte(3 + sinkAddrs)})
}

// postfixVariant is Postfix as the relay, with OpenDKIM signing RSA-2048
// or without signing.
type postfixVariant struct{ OpenDKIM bool }

func (p postfixVariant) key() string {
	if p.OpenDKIM {
		return "s5-postfix-opendkim"
	}
	return "s5-postfix"
}

// postfixVariants are the Postfix runs -postfix asks for; an error when
// Postfix is not installed.
func (b *bench) postfixVariants() ([]postfixVariant, error) {
	if _, err := os.Stat(postfixBin); err != nil {
		return nil, fmt.Errorf("-postfix: %s not found (apt-get install postfix): %w", postfixBin, err)
	}
	return []postfixVariant{{}, {OpenDKIM: true}}, nil
}

func (b *bench) postfixTitle(p postfixVariant) string {
	dk := "no DKIM"
	if p.OpenDKIM {
		dk = "OpenDKIM RSA-2048 as its milter"
	}
	return fmt.Sprintf("S5 with Postfix as the relay, %s: the same %d messages (about 5 KB) to %s, submitted over SMTP by %d clients while Postfix delivers to relayhost = [sink]:port (default_destination_concurrency_limit = %d, smtp_connection_cache_on_demand = yes, smtp_tls_connection_reuse = yes, smtp_tls_security_level = may)",
		dk, b.cfg.S5Messages, oneDomain, b.cfg.PostfixClients, postfixConcurrency)
}

// postfixConcurrency is issue 12's "50 parallel deliveries".
const postfixConcurrency = 50

func postfixMetrics() []metric {
	return []metric{
		{"e2e", "e2e rate: delivered ÷ (first submission → last arrival)", "msgs/s", 0},
		{"drain", "delivery rate, first → last arrival", "msgs/s", 0},
		{"accept_rate", "accept rate (SMTP submission, while delivering)", "msgs/s", 0},
		{"accepted", "accepted", "msgs", 0},
		{"delivered", "delivered", "msgs", 0},
		{"accept_errors", "submission errors", "", 0},
		{"e2e_p50", "accept→delivered p50", "s", 2},
		{"e2e_p99", "accept→delivered p99", "s", 2},
		{"conns_per_msg", "SMTP connections per message (at the sink)", "", 3},
		{"conns_peak", "concurrent SMTP connections at the sink, peak", "", 0},
		{"turns_per_msg", "SMTP round trips per message (at the sink)", "", 2},
		{"cpu_ms", "CPU per message, accept + delivery (every Postfix process, OpenDKIM)", "ms", 3},
		{"cpu_postfix_ms", "… of which Postfix (master and its children)", "ms", 3},
		{"cpu_opendkim_ms", "… of which OpenDKIM", "ms", 3},
		{"cpu_bench", "bench CPU per message (SMTP generator, sink; not counted above)", "ms", 3},
		{"busy", "share of the machine's CPU used by Postfix, OpenDKIM and the bench", "%", 0},
		{"dkim_signed", "messages with a DKIM-Signature", "%", 1},
		{"dkim_verified", "kept messages whose signature verified", "", 0},
		otherMetric,
	}
}

// postfixOptions describe one private Postfix instance.
type postfixOptions struct {
	Dir    string         // holds conf/, queue/, data/ and the log
	Listen netip.AddrPort // smtpd
	Relay  netip.AddrPort // relayhost
	Milter string         // "inet:127.0.0.1:PORT", or "" for none
}

// postfixMainCF is the instance's main.cf: a relay for 127.0.0.0/8 that
// sends everything to one relayhost, configured as issue 12 measured it.
func postfixMainCF(o postfixOptions) string {
	lines := []string{
		"compatibility_level = 3.6",
		"queue_directory = " + filepath.Join(o.Dir, "queue"),
		"data_directory = " + filepath.Join(o.Dir, "data"),
		"mail_owner = postfix",
		"setgid_group = postdrop",
		// Postfix refuses inet_interfaces that are not an interface's
		// own address; master.cf names the listener's address instead.
		"inet_interfaces = loopback-only",
		"inet_protocols = ipv4",
		"myhostname = postfix.bench.test",
		"myorigin = $myhostname",
		"mydestination =",
		"local_recipient_maps =",
		"alias_maps =",
		"alias_database =",
		"mynetworks = 127.0.0.0/8",
		"smtpd_relay_restrictions = permit_mynetworks, reject",
		"biff = no",
		"append_dot_mydomain = no",
		"relayhost = [" + o.Relay.Addr().String() + "]:" + strconv.Itoa(int(o.Relay.Port())),
		"default_destination_concurrency_limit = " + strconv.Itoa(postfixConcurrency),
		"default_process_limit = 200",
		"smtp_connection_cache_on_demand = yes",
		// Without this Postfix never reuses a connection that ran
		// STARTTLS (it needs tlsproxy(8), Postfix 3.4 on): with the sink's
		// STARTTLS, "connection reuse" would be one connection per message.
		"smtp_tls_connection_reuse = yes",
		"smtp_tls_security_level = may",
		"smtp_tls_session_cache_database = btree:${data_directory}/smtp_scache",
		"smtpd_tls_security_level = none",
		"message_size_limit = 52428800",
		"maillog_file_prefixes = " + o.Dir,
		"maillog_file = " + filepath.Join(o.Dir, "maillog"),
	}
	if o.Milter != "" {
		lines = append(lines,
			"smtpd_milters = "+o.Milter,
			"non_smtpd_milters = $smtpd_milters",
			"milter_default_action = tempfail",
			"milter_protocol = 6")
	}
	return strings.Join(lines, "\n") + "\n"
}

// postfixMasterCF is the upstream default master.cf without chroot (the
// queue directory has no copy of /etc) and with smtpd on o.Listen only.
func postfixMasterCF(o postfixOptions) string {
	return o.Listen.String() + ` inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
tlsproxy  unix  -       -       n       -       0       tlsproxy
`
}

// opendkimConf signs mail from senderDomain with one key, as a milter on
// port.
func opendkimConf(dir string, port int, selector string) string {
	return strings.Join([]string{
		"Syslog no",
		"Mode s",
		"Domain " + senderDomain,
		"Selector " + selector,
		"KeyFile " + filepath.Join(dir, "dkim.key"),
		// The bench's temporary folders sit under a world-writable /tmp.
		"RequireSafeKeys false",
		"Socket inet:" + strconv.Itoa(port) + "@127.0.0.1",
		"Canonicalization relaxed/relaxed",
		"SignatureAlgorithm rsa-sha256",
		"PidFile " + filepath.Join(dir, "opendkim.pid"),
	}, "\n") + "\n"
}

// daemon is a program the bench started and stops.
type daemon struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

func startDaemon(name, logPath string, args ...string) (*daemon, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	d := &daemon{name: name, cmd: exec.Command(args[0], args[1:]...), done: make(chan struct{}), log: logPath}
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		_ = d.cmd.Wait()
		close(d.done)
	}()
	return d, nil
}

func (d *daemon) stop(grace time.Duration) {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(grace):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

// postfixInstance is a running private Postfix.
type postfixInstance struct {
	conf   string
	master int // pid of master(8)
	fg     *daemon
	log    string
}

// startPostfix writes the configuration and runs `postfix -c DIR
// start-fg`, which keeps master(8) as the bench's descendant.
func startPostfix(ctx context.Context, o postfixOptions) (*postfixInstance, error) {
	conf := filepath.Join(o.Dir, "conf")
	data := filepath.Join(o.Dir, "data")
	for _, d := range []string{conf, filepath.Join(o.Dir, "queue"), data} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	u, err := user.Lookup("postfix")
	if err != nil {
		return nil, fmt.Errorf("postfix user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	if err := os.Chown(data, uid, -1); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(conf, "main.cf"), []byte(postfixMainCF(o)), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(conf, "master.cf"), []byte(postfixMasterCF(o)), 0o644); err != nil {
		return nil, err
	}
	p := &postfixInstance{conf: conf, log: filepath.Join(o.Dir, "maillog")}
	if p.fg, err = startDaemon("postfix", filepath.Join(o.Dir, "start-fg.log"), postfixBin, "-c", conf, "start-fg"); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := smtpGreets(o.Listen.String()); err == nil {
			break
		} else if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("postfix not listening on %s in 30s: %v; %s %s", o.Listen, err, tailFile(p.fg.log, 5), tailFile(p.log, 5))
		}
		select {
		case <-p.fg.done:
			return nil, fmt.Errorf("postfix exited at start: %s %s", tailFile(p.fg.log, 5), tailFile(p.log, 5))
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	pid, err := os.ReadFile(filepath.Join(o.Dir, "queue", "pid", "master.pid"))
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("postfix master pid: %w", err)
	}
	p.master, _ = strconv.Atoi(strings.TrimSpace(string(pid)))
	return p, nil
}

// stop asks Postfix to stop, and kills what is left.
func (p *postfixInstance) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_ = exec.CommandContext(ctx, postfixBin, "-c", p.conf, "stop").Run()
	select {
	case <-p.fg.done:
	case <-time.After(10 * time.Second):
		if p.master > 0 {
			_ = syscall.Kill(p.master, syscall.SIGKILL)
		}
		p.fg.stop(time.Second)
	}
}

// smtpGreets dials addr and reads a 220 greeting.
func smtpGreets(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(buf[:n], []byte("220")) {
		return fmt.Errorf("greeting %q", buf[:n])
	}
	return nil
}

// freePortOn finds a TCP port free on addr.
func freePortOn(addr netip.Addr) (int, error) {
	ln, err := net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// postfixRun is one run of Postfix as the relay: a new instance with an
// empty queue, fed n messages over SMTP while it delivers them to the sink.
func (b *bench) postfixRun(ctx context.Context, res *scenarioResult, p postfixVariant, i int) (map[string]float64, error) {
	cfg := b.cfg
	dir, err := os.MkdirTemp("", "mfbench-postfix-")
	if err != nil {
		return nil, err
	}
	// Postfix's daemons drop root and must reach their folders.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	if !cfg.Keep {
		defer os.RemoveAll(dir)
	} else {
		defer b.progress("kept %s", dir)
	}
	o := postfixOptions{Dir: dir, Relay: netip.AddrPortFrom(b.st.sink.healthy[0], uint16(b.st.sink.port))}
	if err := loopbackOnly(o.Relay.String()); err != nil {
		return nil, err
	}
	var dkd *daemon
	if p.OpenDKIM {
		if _, err := os.Stat(opendkimBin); err != nil {
			return nil, fmt.Errorf("%s not found (apt-get install opendkim): %w", opendkimBin, err)
		}
		port, err := freePortOn(netip.AddrFrom4([4]byte{127, 0, 0, 1}))
		if err != nil {
			return nil, err
		}
		if dkd, err = b.startOpenDKIM(ctx, dir, port, fmt.Sprintf("pf%d", i)); err != nil {
			return nil, err
		}
		defer dkd.stop(5 * time.Second)
		o.Milter = fmt.Sprintf("inet:127.0.0.1:%d", port)
	}
	listen := postfixAddr(cfg.SinkAddrs)
	port, err := freePortOn(listen)
	if err != nil {
		return nil, err
	}
	o.Listen = netip.AddrPortFrom(listen, uint16(port))
	pfx, err := startPostfix(ctx, o)
	if err != nil {
		return nil, err
	}
	defer pfx.stop()

	keep := 0
	if p.OpenDKIM {
		keep = 3
	}
	t := b.st.sink.reset(cfg.S5Messages, keep)
	cpu := func() relayCPU {
		c := relayCPU{at: time.Now(), postfix: treeCPUSeconds(pfx.master), bench: cpuSeconds(os.Getpid()), machine: machineBusy()}
		if dkd != nil {
			c.opendkim = cpuSeconds(dkd.cmd.Process.Pid)
		}
		return c
	}
	c0 := cpu()
	fr := feedSMTP(ctx, feedOptions{
		Addr: o.Listen.String(), Clients: cfg.PostfixClients, Count: cfg.S5Messages,
		Message: func(k int) (string, []byte) {
			id := fmt.Sprintf("pf%d-%d@%s", i, k, relayHost)
			return id, sampleMessageText(id, oneDomain, s5TextBytes)
		},
	})
	timedOut := false
	if fr.OK > 0 {
		timer := time.NewTimer(cfg.S5Timeout)
		select {
		case <-t.done:
		case <-timer.C:
			timedOut = true
		case <-ctx.Done():
			timer.Stop()
			return nil, ctx.Err()
		}
		timer.Stop()
	}
	c1 := cpu()
	n := t.count()
	run := map[string]float64{
		"accepted": float64(fr.OK), "delivered": float64(n), "accept_errors": float64(fr.Errors),
		"accept_rate":   rate(fr.OK, fr.Elapsed),
		"conns_per_msg": ratio(float64(t.conns.Load()), float64(n)),
		"conns_peak":    float64(t.open.max()),
		"turns_per_msg": ratio(float64(t.turns.Load()), float64(n)),
	}
	t.mu.Lock()
	first, last := t.first, t.last
	signed := 0
	for _, c := range t.signed {
		signed += c
	}
	samples := slices.Clone(t.samples)
	t.mu.Unlock()
	run["e2e"] = rate(n, last.Sub(fr.Start))
	run["drain"] = rate(n-1, last.Sub(first))
	var lats []time.Duration
	for id, at := range fr.Accepted {
		if got, ok := t.arrival(id); ok {
			lats = append(lats, got.Sub(at))
		}
	}
	slices.Sort(lats)
	run["e2e_p50"] = percentile(lats, 50).Seconds()
	run["e2e_p99"] = percentile(lats, 99).Seconds()
	u := c1.sub(c0)
	per := func(sec float64) float64 { return 1000 * ratio(sec, float64(n)) }
	run["cpu_postfix_ms"] = per(u.postfix)
	run["cpu_ms"] = per(u.postfix + u.opendkim)
	if p.OpenDKIM {
		run["cpu_opendkim_ms"] = per(u.opendkim)
	}
	run["cpu_bench"] = per(u.bench)
	wall := c1.at.Sub(c0.at).Seconds()
	run["busy"] = 100 * ratio(u.postfix+u.opendkim+u.bench, wall*float64(runtime.NumCPU()))
	run["other"] = ratio(max(u.machine-u.postfix-u.opendkim-u.bench, 0), wall)
	run["dkim_signed"] = 100 * ratio(float64(signed), float64(n))
	if p.OpenDKIM {
		verified := 0
		for _, m := range samples {
			vs, err := msgauth.VerifyWithOptions(bytes.NewReader(m), &msgauth.VerifyOptions{LookupTXT: b.st.dns.lookupTXT})
			switch {
			case err != nil:
				res.note("DKIM verification failed: " + err.Error())
			case len(vs) == 0:
				res.note("DKIM verification failed: no DKIM-Signature")
			case vs[0].Err != nil:
				res.note("DKIM verification failed: " + vs[0].Err.Error())
			default:
				verified++
			}
		}
		run["dkim_verified"] = float64(verified)
	}
	if timedOut {
		res.note(fmt.Sprintf("a run timed out after %s (-s5-timeout): %d of %d delivered; rates count what arrived", cfg.S5Timeout, n, fr.OK))
	}
	for _, e := range fr.ErrSamples {
		res.note("submission error sample: " + e)
	}
	if fr.OK == 0 {
		return nil, fmt.Errorf("postfix accepted nothing: %s; %s", strings.Join(fr.ErrSamples, "; "), tailFile(pfx.log, 5))
	}
	return run, nil
}

// startOpenDKIM writes an RSA-2048 key for senderDomain, publishes its
// record in the bench's DNS and runs opendkim in the foreground.
func (b *bench) startOpenDKIM(ctx context.Context, dir string, port int, selector string) (*daemon, error) {
	key, err := dkim.Generate(rand.Reader, senderDomain, selector, dkim.AlgorithmRSA2048)
	if err != nil {
		return nil, err
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key.PrivateKey})
	if err := os.WriteFile(filepath.Join(dir, "dkim.key"), pemKey, 0o600); err != nil {
		return nil, err
	}
	b.st.dns.setTXT(key.DNSName(), key.TXTStrings())
	conf := filepath.Join(dir, "opendkim.conf")
	if err := os.WriteFile(conf, []byte(opendkimConf(dir, port, selector)), 0o644); err != nil {
		return nil, err
	}
	d, err := startDaemon("opendkim", filepath.Join(dir, "opendkim.log"), opendkimBin, "-f", "-x", conf)
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return d, nil
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("opendkim exited at start: %s", tailFile(d.log, 5))
		case <-ctx.Done():
			d.stop(time.Second)
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.stop(time.Second)
			return nil, fmt.Errorf("opendkim not listening on %s in 15s: %s", addr, tailFile(d.log, 5))
		}
	}
}

// relayCPU is the CPU seconds used so far by a relay that is not
// Mailferry, the bench and the machine.
type relayCPU struct {
	at                                time.Time
	postfix, opendkim, bench, machine float64
}

func (a relayCPU) sub(b relayCPU) relayCPU {
	return relayCPU{at: a.at, postfix: a.postfix - b.postfix, opendkim: a.opendkim - b.opendkim,
		bench: a.bench - b.bench, machine: a.machine - b.machine}
}

// feedOptions describe an SMTP load: Count messages over Clients
// connections, each kept open for the next message.
type feedOptions struct {
	Addr    string
	Clients int
	Count   int
	// Message returns message k and its Message-ID (no brackets).
	Message func(k int) (id string, msg []byte)
}

type feedResult struct {
	OK, Errors int
	Start      time.Time
	Elapsed    time.Duration        // first command → last 250
	Accepted   map[string]time.Time // Message-ID → when the 250 after DATA came
	ErrSamples []string
}

// feedSMTP submits messages over plain SMTP, as an application on the same
// network would hand mail to a relay. A message refused or cut off is
// counted as an error and not sent again.
func feedSMTP(ctx context.Context, o feedOptions) feedResult {
	var (
		next atomic.Int64
		mu   sync.Mutex
		res  = feedResult{Accepted: make(map[string]time.Time, o.Count), Start: time.Now()}
		last atomic.Int64
		wg   sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		res.Errors++
		if len(res.ErrSamples) < 5 {
			res.ErrSamples = append(res.ErrSamples, err.Error())
		}
		mu.Unlock()
	}
	for range o.Clients {
		wg.Go(func() {
			var c *smtp.Client
			defer func() {
				if c != nil {
					c.Quit()
				}
			}()
			for ctx.Err() == nil {
				k := int(next.Add(1) - 1)
				if k >= o.Count {
					return
				}
				if c == nil {
					var err error
					if c, err = dialSubmit(o.Addr); err != nil {
						fail(err)
						continue
					}
				}
				id, msg := o.Message(k)
				if err := submit(c, msg); err != nil {
					fail(err)
					c.Close()
					c = nil
					continue
				}
				now := time.Now()
				last.Store(now.UnixNano())
				mu.Lock()
				res.OK++
				res.Accepted[id] = now
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if l := last.Load(); l > 0 {
		res.Elapsed = time.Unix(0, l).Sub(res.Start)
	}
	return res
}

func dialSubmit(addr string) (*smtp.Client, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c := smtp.NewClient(conn)
	c.CommandTimeout = time.Minute
	c.SubmissionTimeout = time.Minute
	if err := c.Hello("client.bench.test"); err != nil {
		c.Close()
		return nil, fmt.Errorf("EHLO: %w", err)
	}
	return c, nil
}

func submit(c *smtp.Client, msg []byte) error {
	if err := c.Mail("bench@"+senderDomain, nil); err != nil {
		return err
	}
	if err := c.Rcpt("user@"+oneDomain, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return nil
}
