package relay

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/mailferry/mailferry/dkim"
	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/smtpclient"
	"github.com/mailferry/mailferry/store"
)

// deliver runs one attempt for rcpts, the recipients of d in domain that
// this worker leased, and returns their outcomes.
func (w *Worker) deliver(ctx context.Context, log *slog.Logger, d *store.Delivery, hop *nextHop, rcpts []store.PendingRecipient, expiry time.Time) ([]store.Outcome, Attempt) {
	now := w.opts.Now()
	to := make([]string, len(rcpts))
	fewest := rcpts[0].Attempts
	for i, r := range rcpts {
		to[i] = r.Email
		fewest = min(fewest, r.Attempts)
	}
	var att Attempt
	header, err := w.signature(ctx, d)
	if err != nil {
		log.Error("dkim signing failed; deferring", "error", err)
		att = Attempt{Started: now, Results: repeat(Result{Enhanced: "4.7.0", Err: fmt.Errorf("dkim signing: %w", err)}, len(to))}
	} else if hop.err != nil {
		att = Attempt{Started: now, Results: repeat(RouteResult(hop.err), len(to))}
	} else {
		// The signature and the stored body are read in place, never
		// joined into a copy of the message.
		att = w.opts.Client.Deliver(ctx, hop.hosts, smtpclient.Envelope{
			From: w.mailFrom(ctx, log, d, rcpts), To: to, Body: smtpclient.Message(header, d.Body),
			Needs8Bit: d.Needs8Bit, NeedsUTF8: d.NeedsUTF8, TLS: requireTLS(d),
		})
	}
	w.opts.Metrics.attempt(att)

	done := w.opts.Now()
	outs := make([]store.Outcome, len(rcpts))
	for i, r := range rcpts {
		res := att.Results[i]
		a := store.Attempt{
			Recipient: r.Idx, Attempt: r.Attempts + 1, StartedAt: att.Started, Duration: att.Duration,
			MXHost: att.Host, SMTPCode: res.Code, EnhancedCode: res.Enhanced, Response: responseText(res),
			Outcome: recipientOutcome(res),
		}
		if att.IP.IsValid() {
			a.MXIP = att.IP.String()
		}
		if att.TLS != nil {
			a.TLSVersion, a.TLSCipher, a.TLSVerified = att.TLS.Version, att.TLS.Cipher, att.TLS.Verified
		}
		a.TLSPolicy, a.TLSFailure, a.TLSOptOut = tlsPolicyOf(att), att.TLSFailure, att.TLSOptOut
		o := store.Outcome{Attempt: a}
		if a.Outcome == store.RecipientDeferred {
			if !done.Before(expiry) {
				// RFC 5321 4.5.4.1: give up after the queue lifetime; X.4.7
				// is "delivery time expired" (RFC 3463 3.5).
				o.Attempt.Outcome = store.RecipientBounced
				o.Attempt.EnhancedCode = "5.4.7"
				o.Attempt.Response = fmt.Sprintf("expired: not delivered within %s; last error: %s", w.opts.MaxQueueAge, a.Response)
			} else {
				n := w.nextAttempt(done, r.Attempts+1, expiry)
				o.NextAttemptAt = &n
			}
		}
		if o.Attempt.Outcome != store.RecipientDelivered {
			w.classify(&o, res.Code)
		}
		outs[i] = o
		w.opts.Metrics.outcome(o.Attempt.Outcome)
	}
	log.LogAttrs(ctx, slog.LevelInfo, "delivery attempt",
		slog.String("destination", hop.dest), slog.String("mx", att.Host), slog.Int("attempt", fewest+1), slog.Int("recipients", len(outs)),
		slog.Any("results", summarize(outs)), slog.Duration("duration", att.Duration))
	return outs, att
}

// mailFrom is the envelope sender of a transaction: with a bounce domain
// a VERP address naming the message and, for a single recipient, its
// index, so that a later DSN says which recipient failed; else the stored
// MAIL FROM. The address is at bounces.<From domain> when the message's
// tenant owns that domain and its custom return path is verified, so SPF
// aligns with the From domain (RFC 7489 3.1.2); else at the bounce domain.
func (w *Worker) mailFrom(ctx context.Context, log *slog.Logger, d *store.Delivery, rcpts []store.PendingRecipient) string {
	if w.opts.ReturnPaths == nil {
		return d.MailFrom
	}
	idx := -1
	if len(rcpts) == 1 {
		idx = rcpts[0].Idx
	}
	if sending := w.customReturnPath(ctx, log, d); sending != "" {
		return w.opts.ReturnPaths.AddressAt(sending, d.ID, idx)
	}
	return w.opts.ReturnPaths.Address(d.ID, idx)
}

// customReturnPath returns the From domain of d when d's tenant has that
// domain's custom return path verified, else "". A failed lookup keeps the
// bounce domain, which always works: alignment is lost for one attempt,
// not the delivery.
func (w *Worker) customReturnPath(ctx context.Context, log *slog.Logger, d *store.Delivery) string {
	if w.opts.CustomReturnPaths == nil {
		return ""
	}
	from, err := mail.ParseAddress(d.From)
	if err != nil {
		return ""
	}
	domain := strings.ToLower(from.Domain())
	tenant, err := w.opts.CustomReturnPaths.ReturnPathTenant(ctx, domain)
	if err != nil {
		log.Warn("custom return path lookup failed; using the bounce domain", "domain", domain, "error", err)
		return ""
	}
	if tenant == "" || tenant != d.TenantID {
		return ""
	}
	return domain
}

// classify gives a failed outcome its bounce type and class, from the
// reply code (0: no reply), the enhanced code and the text; a bounce the
// rules mark as suppressing adds the address to the suppression list.
func (w *Worker) classify(o *store.Outcome, code int) {
	a := &o.Attempt
	v := w.opts.Rules.Classify(code, a.EnhancedCode, a.Response)
	a.BounceType, a.BounceClass = string(v.Type), string(v.Class)
	if a.Outcome == store.RecipientBounced {
		o.Suppress = v.Suppress
		if w.opts.CountBounce != nil {
			w.opts.CountBounce(a.BounceClass)
		}
	}
}

// nextAttempt is when attempt n+1 is due after attempt n fails, never past
// the expiry (so the last attempt happens at the queue lifetime).
func (w *Worker) nextAttempt(now time.Time, n int, expiry time.Time) time.Time {
	s := w.opts.RetrySchedule
	delay := s[min(n-1, len(s)-1)]
	t := now.Add(w.opts.Jitter(delay))
	if t.After(expiry) {
		t = expiry
	}
	return t
}

// signature returns the message's DKIM header, signing once per message:
// the first worker to sign stores it and every transaction reuses it.
func (w *Worker) signature(ctx context.Context, d *store.Delivery) (string, error) {
	if d.Signed {
		return d.DKIMHeader, nil
	}
	from, err := mail.ParseAddress(d.From)
	if err != nil {
		return "", fmt.Errorf("from header %q: %w", d.From, err)
	}
	keys, err := w.keys.get(w.opts.Now(), from.Domain(), func() ([]dkim.Key, error) {
		return w.openKeys(ctx, from.Domain())
	})
	if err != nil {
		return "", err
	}
	header := "" // no key: sent unsigned, as the 202 warned
	if len(keys) > 0 {
		if header, err = w.opts.Signer.Sign(ctx, keys, d.Body); err != nil {
			return "", err
		}
	}
	return w.saveSignature(ctx, d.ID, header)
}

// openKeys reads and unseals domain's active signing keys.
func (w *Worker) openKeys(ctx context.Context, domain string) ([]dkim.Key, error) {
	stored, err := w.opts.Ledger.ActiveDKIMKeys(ctx, domain)
	if err != nil {
		return nil, err
	}
	keys := make([]dkim.Key, len(stored))
	for i, k := range stored {
		priv, err := w.opts.Sealer.Open(k.PrivateKey)
		if err != nil {
			return nil, fmt.Errorf("open key %s._domainkey.%s: %w", k.Selector, k.Domain, err)
		}
		keys[i] = dkim.Key{Domain: k.Domain, Selector: k.Selector, Algorithm: dkim.Algorithm(k.Algorithm),
			PrivateKey: priv, PublicKey: k.PublicKey, CreatedAt: k.CreatedAt}
	}
	return keys, nil
}

func repeat(r Result, n int) []Result {
	out := make([]Result, n)
	for i := range out {
		out[i] = r
	}
	return out
}

func responseText(r Result) string {
	if r.Line != "" {
		return r.Line
	}
	if r.Err != nil {
		return r.Err.Error()
	}
	return ""
}

func summarize(outs []store.Outcome) map[string]int {
	m := map[string]int{}
	for _, o := range outs {
		m[o.Attempt.Outcome]++
	}
	return m
}
