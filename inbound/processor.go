package inbound

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/bounce"
	"github.com/mailferry/mailferry/returnpath"
	"github.com/mailferry/mailferry/store"
)

// Claimer hands out stored reports and records what became of them;
// *store.Store is one.
type Claimer interface {
	ClaimInbound(ctx context.Context, n int, lease time.Duration) ([]store.InboundRow, error)
	RetryInbound(ctx context.Context, id uuid.UUID, after time.Duration) error
	FinishInbound(ctx context.Context, id uuid.UUID, status, kind, reason string) error
}

// Messages finds the message a report is about; *store.Store is one.
type Messages interface {
	LoadReportMessage(ctx context.Context, id uuid.UUID) (*store.ReportMessage, error)
	FindMessages(ctx context.Context, messageID string) ([]uuid.UUID, error)
}

// Applier records what a report says about one recipient; *store.Store is
// one.
type Applier interface {
	ApplyReport(ctx context.Context, r store.AsyncReport) (store.AsyncResult, error)
}

// Classifier puts a failure in the taxonomy; *bounce.Rules is one.
type Classifier interface {
	Classify(code int, enhanced, text string) bounce.Verdict
}

var (
	_ Claimer    = (*store.Store)(nil)
	_ Messages   = (*store.Store)(nil)
	_ Applier    = (*store.Store)(nil)
	_ Classifier = (*bounce.Rules)(nil)
)

// ProcessorOptions configures a Processor. Claimer, Messages, Applier and
// ReturnPaths are required.
type ProcessorOptions struct {
	Claimer     Claimer
	Messages    Messages
	Applier     Applier
	ReturnPaths ReturnPaths
	// Rules classify failures; nil: bounce.DefaultRules().
	Rules Classifier
	// Parse reads a report; nil: bounce.Parse.
	Parse func(raw []byte) (*bounce.Report, error)

	// Batch is how many reports one claim takes; default 20.
	Batch int
	// Lease is how long a claimed report stays this processor's; a report
	// not finished by then (the process died) goes to another. Default 20
	// seconds: a report is applied in milliseconds, and one applied twice
	// (a slow processor outlived its lease) changes nothing the second
	// time (store.ApplyReport).
	Lease time.Duration
	// Poll is how often the processor looks for reports without being
	// woken: those stored by another process, or whose lease lapsed.
	// Default 5 seconds.
	Poll time.Duration
	// MaxTries: a report claimed this many times without being finished
	// (it crashes or hangs its processor) is kept as unparseable. Default 5.
	MaxTries int
	// OpTimeout bounds the ledger work on one report. Default 10 seconds.
	OpTimeout time.Duration

	Logger  *slog.Logger
	Metrics *Metrics
}

// Processor applies stored reports. Any number may run, in any processes:
// each report is claimed by one at a time.
type Processor struct {
	opts ProcessorOptions
	wake chan struct{}
}

// NewProcessor checks opts.
func NewProcessor(opts ProcessorOptions) (*Processor, error) {
	if opts.Claimer == nil || opts.Messages == nil || opts.Applier == nil || opts.ReturnPaths == nil {
		return nil, errors.New("inbound processor: Claimer, Messages, Applier and ReturnPaths are required")
	}
	if opts.Rules == nil {
		opts.Rules = bounce.DefaultRules()
	}
	if opts.Parse == nil {
		opts.Parse = bounce.Parse
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	setDefault(&opts.Batch, 20)
	setDefault(&opts.Lease, 20*time.Second)
	setDefault(&opts.Poll, 5*time.Second)
	setDefault(&opts.MaxTries, 5)
	setDefault(&opts.OpTimeout, 10*time.Second)
	return &Processor{opts: opts, wake: make(chan struct{}, 1)}, nil
}

// Wake makes Run look for reports now; it never blocks.
func (p *Processor) Wake() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Run processes reports until ctx ends.
func (p *Processor) Run(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.wake:
		case <-t.C:
		}
		for ctx.Err() == nil {
			n, err := p.RunOnce(ctx)
			if err != nil {
				p.opts.Logger.Warn("inbound: claim reports", "error", err)
				break
			}
			if n < p.opts.Batch {
				break
			}
		}
		t.Reset(p.opts.Poll)
	}
}

// RunOnce claims one batch of reports and processes it; it returns how
// many it claimed.
func (p *Processor) RunOnce(ctx context.Context) (int, error) {
	cctx, cancel := context.WithTimeout(ctx, p.opts.OpTimeout)
	rows, err := p.opts.Claimer.ClaimInbound(cctx, p.opts.Batch, p.opts.Lease)
	cancel()
	if err != nil {
		return 0, err
	}
	for _, r := range rows {
		p.process(ctx, r)
	}
	return len(rows), nil
}

// outcome is what became of one report.
type outcome struct {
	status, kind, reason string
}

func (p *Processor) process(ctx context.Context, row store.InboundRow) {
	log := p.opts.Logger.With(slog.String("inbound_id", row.ID.String()))
	ctx, cancel := context.WithTimeout(ctx, p.opts.OpTimeout)
	defer cancel()
	var out outcome
	if row.Tries > p.opts.MaxTries {
		out = outcome{status: store.InboundUnparseable, reason: fmt.Sprintf("given up after %d tries to process it", row.Tries-1)}
	} else {
		var err error
		out, err = p.apply(ctx, log, row)
		if errors.Is(err, store.ErrRecipientBusy) {
			// The worker records its outcome in milliseconds, or within its
			// lease when the ledger is slow: look again in a second.
			log.Info("inbound: report waits for the attempt it answers to be recorded", "error", err)
			if err := p.opts.Claimer.RetryInbound(ctx, row.ID, time.Second); err != nil {
				log.Warn("inbound: put back report; it comes back when its lease lapses", "error", err)
			}
			return
		}
		if err != nil {
			// Left pending: claimed again once the lease lapses.
			log.Warn("inbound: apply report; it will be tried again", "error", err)
			return
		}
	}
	if err := p.opts.Claimer.FinishInbound(ctx, row.ID, out.status, out.kind, out.reason); err != nil {
		log.Warn("inbound: finish report; it will be processed again", "error", err)
		return
	}
	p.opts.Metrics.message(out.status)
	log.Info("inbound: report done", "status", out.status, "kind", out.kind, "reason", out.reason)
}

// parse is Parse that turns a panic into an error: a report must not take
// the processor down (and after MaxTries it would be given up anyway).
func (p *Processor) parse(raw []byte) (r *bounce.Report, err error) {
	defer func() {
		if v := recover(); v != nil {
			r, err = nil, fmt.Errorf("parser panicked: %v", v)
		}
	}()
	return p.opts.Parse(raw)
}

// target is a message a report is about, and the recipient its return
// path names (-1: none).
type target struct {
	msg  *store.ReportMessage
	idx  int
	verp bool // found by a verified return path, not by Message-ID
}

// apply parses a report, finds the message and recipients it is about and
// records it. An error means the ledger failed: the report stays pending.
func (p *Processor) apply(ctx context.Context, log *slog.Logger, row store.InboundRow) (outcome, error) {
	rep, err := p.parse(row.Body)
	if err != nil {
		return outcome{status: store.InboundUnparseable, reason: err.Error()}, nil
	}
	if rep == nil {
		return outcome{status: store.InboundUnparseable, reason: "parser returned no report"}, nil
	}
	out := outcome{kind: rep.Kind}
	tgt, why, err := p.resolve(ctx, row, rep)
	if err != nil {
		return out, err
	}
	if tgt == nil {
		out.status, out.reason = store.InboundUnmatched, why
		return out, nil
	}
	complaint := rep.Kind == bounce.KindARF
	rcpts := rep.Recipients
	if complaint && len(rcpts) == 0 {
		// RFC 5965 3.2: Original-Rcpt-To is optional; the original's To
		// (recipientsFor) or the return path names the complainer.
		rcpts = []bounce.ReportRecipient{{Action: "complained"}}
	}
	matched := 0
	for _, rr := range rcpts {
		action := strings.ToLower(rr.Action)
		var typ string
		switch {
		case complaint || action == "complained":
			typ = store.EventComplained
		case action == "failed":
			typ = store.EventBounced
		case action == "delayed":
			typ = store.EventDeferred
		default:
			continue // delivered, relayed, expanded: nothing failed
		}
		idxs := recipientsFor(tgt, rr.Address, rep, complaint)
		if len(idxs) == 0 {
			continue
		}
		matched++
		for _, idx := range idxs {
			ar := store.AsyncReport{InboundID: row.ID, MessageID: tgt.msg.ID, RcptIdx: idx, Type: typ,
				SMTPCode: rr.SMTPCode, EnhancedCode: rr.Status, Response: rr.DiagnosticCode,
				ReportingMTA: rep.ReportingMTA, RemoteMTA: rr.RemoteMTA}
			var class string
			if typ == store.EventComplained {
				ar.Response = rep.Feedback
				ar.SMTPCode, ar.EnhancedCode = 0, ""
			} else {
				v := p.opts.Rules.Classify(rr.SMTPCode, rr.Status, rr.DiagnosticCode)
				ar.BounceType, ar.BounceClass, ar.Suppress = string(v.Type), string(v.Class), v.Suppress
				class = ar.BounceClass
			}
			res, err := p.opts.Applier.ApplyReport(ctx, ar)
			if err != nil {
				// The ledger failed, or (store.ErrRecipientBusy) the worker
				// has yet to record the attempt this report answers: the
				// report stays pending and comes back when its lease lapses.
				return out, err
			}
			if !res.Applied {
				continue
			}
			switch typ {
			case store.EventBounced:
				p.opts.Metrics.Bounced(class, KindAsync)
			case store.EventComplained:
				p.opts.Metrics.complained()
			}
			log.Info("inbound: report applied", "message_id", tgt.msg.ID, "rcpt_idx", idx, "type", typ,
				"bounce_class", class, "suppressed", res.Suppressed)
		}
	}
	switch {
	case matched == 0 && (complaint || hasFailure(rep)):
		out.status, out.reason = store.InboundUnmatched, fmt.Sprintf("no recipient of message %s matches the report", tgt.msg.ID)
	default:
		out.status = store.InboundProcessed
	}
	return out, nil
}

// hasFailure reports whether a report says anything went wrong: one of
// only successes (delivered, relayed, expanded) matches no one and is
// still processed.
func hasFailure(rep *bounce.Report) bool {
	for _, rr := range rep.Recipients {
		switch strings.ToLower(rr.Action) {
		case "failed", "delayed", "complained":
			return true
		}
	}
	return false
}

// resolve finds the message a report is about: the return path it was
// sent to (its tag verified at RCPT and again here; at bounces.<domain> a
// tag that verifies was made with our key for that domain, so whether the
// domain is still verified no longer matters), else (a complaint to
// the FBL address) the return path or Message-ID of the original it
// quotes. A quoted return path whose tag does not verify is never
// trusted. tgt is nil with a reason when nothing matches.
func (p *Processor) resolve(ctx context.Context, row store.InboundRow, rep *bounce.Report) (tgt *target, reason string, err error) {
	for _, rcpt := range row.RcptTo {
		_, id, idx, perr := p.opts.ReturnPaths.ParseAny(rcpt)
		if perr != nil {
			continue
		}
		return p.load(ctx, id, idx, true)
	}
	if rp := rep.Original.ReturnPath; rp != "" {
		_, id, idx, perr := p.opts.ReturnPaths.ParseAny(rp)
		switch {
		case errors.Is(perr, returnpath.ErrForged):
			return nil, "the quoted return path's tag does not verify", nil
		case perr == nil:
			return p.load(ctx, id, idx, true)
		}
	}
	if mid := rep.Original.MessageID; mid != "" {
		ids, err := p.opts.Messages.FindMessages(ctx, mid)
		if err != nil {
			return nil, "", err
		}
		if len(ids) > 0 {
			return p.load(ctx, ids[0], -1, false)
		}
	}
	return nil, "names no message of ours (no verified return path, no known Message-ID)", nil
}

func (p *Processor) load(ctx context.Context, id uuid.UUID, idx int, verp bool) (*target, string, error) {
	m, err := p.opts.Messages.LoadReportMessage(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Sprintf("message %s is not in the ledger (deleted?)", id), nil
	}
	if err != nil {
		return nil, "", err
	}
	return &target{msg: m, idx: idx, verp: verp}, "", nil
}

// recipientsFor are the recipients of tgt a report recipient is about.
// A return path that names a recipient decides: that one, whatever
// address the report gives (a forwarded mailbox reports its new one),
// and never another, so a recipient cannot bounce the others. One of a
// transaction of several recipients names none: then the address the
// report gives, or, for a complaint without Original-Rcpt-To, the
// original's To.
func recipientsFor(tgt *target, addr string, rep *bounce.Report, complaint bool) []int {
	if tgt.idx >= 0 {
		for _, r := range tgt.msg.Recipients {
			if r.Idx == tgt.idx {
				return []int{r.Idx}
			}
		}
		return nil
	}
	var out []int
	switch {
	case addr != "":
		if idx, ok := findRecipient(tgt.msg, addr); ok {
			out = []int{idx}
		}
	case len(tgt.msg.Recipients) == 1:
		out = []int{tgt.msg.Recipients[0].Idx}
	case complaint:
		for _, to := range rep.Original.To {
			if idx, ok := findRecipient(tgt.msg, to); ok {
				out = append(out, idx)
			}
		}
	}
	if tgt.verp {
		out = slices.DeleteFunc(out, func(idx int) bool { return !sharesTransaction(tgt.msg, idx) })
	}
	return out
}

// sharesTransaction reports whether recipient idx can have been in a
// transaction of several recipients: one per message and domain, so its
// domain has others. A recipient alone in its domain was sent with a
// return path naming it, and a report to a return path of several
// recipients (another domain's) cannot be about it.
func sharesTransaction(m *store.ReportMessage, idx int) bool {
	var domain string
	for _, r := range m.Recipients {
		if r.Idx == idx {
			domain = domainOf(r.Email)
		}
	}
	n := 0
	for _, r := range m.Recipients {
		if strings.EqualFold(domainOf(r.Email), domain) {
			n++
		}
	}
	return n > 1
}

func domainOf(addr string) string {
	return addr[strings.LastIndexByte(addr, '@')+1:]
}

// findRecipient matches an address the way suppressions compare them:
// the local part as written, the domain in any case (RFC 5321 2.4); an
// address in <> or with a display name is taken apart first.
func findRecipient(m *store.ReportMessage, addr string) (int, bool) {
	addr = bareAddress(addr)
	for _, r := range m.Recipients {
		if sameAddress(r.Email, addr) {
			return r.Idx, true
		}
	}
	// Some MTAs change the case of the local part in their reports.
	for _, r := range m.Recipients {
		if strings.EqualFold(r.Email, addr) {
			return r.Idx, true
		}
	}
	return 0, false
}

func bareAddress(a string) string {
	a = strings.TrimSpace(a)
	if i := strings.LastIndexByte(a, '<'); i >= 0 {
		a = a[i+1:]
		if j := strings.IndexByte(a, '>'); j >= 0 {
			a = a[:j]
		}
	}
	return strings.TrimSpace(a)
}

func sameAddress(a, b string) bool {
	i, j := strings.LastIndexByte(a, '@'), strings.LastIndexByte(b, '@')
	if i <= 0 || j <= 0 || a[:i] != b[:j] {
		return false
	}
	// EqualFold, or ToLower as store.NormalizeEmail does it: the two differ
	// for a few letters (U+0130 lowers to two runes that fold to neither).
	da, db := a[i+1:], b[j+1:]
	//lint:ignore SA6005 deliberate: ToLower's comparison is the one store.NormalizeEmail makes
	return strings.EqualFold(da, db) || strings.ToLower(da) == strings.ToLower(db)
}
