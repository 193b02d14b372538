// Package intake is the one path by which mail enters Mailferry, whatever
// the ingress (HTTP API, SMTP submission): check the sender domains against
// the key (CheckSenders), queue one job per recipient domain in Redis, then
// record the message in PostgreSQL. A message is accepted only when the
// ledger commit holds; a job whose message never reached the ledger finds
// no row and is dropped by the worker (relay.WorkerOptions.AcceptWindow),
// so ErrUnavailable always means nothing was accepted.
//
// Concurrent submissions are group-committed: while one batch is being
// written, newcomers gather, and the next committer writes them all in one
// transaction and one Redis round trip. A committer stops as soon as its
// own message is written, and a caller whose message waits longer than
// MaxWait (or whose context ends) takes it back.
//
// One message must not fail the others of its batch: when PostgreSQL
// refuses a batch for the data of a row (a data exception, a constraint),
// not for the connection, the batch is split in halves and each written
// again, until the refused message stands alone. It alone fails, with a
// *RefusedError (the client's fault: 422, 554), and the rest commit. Its
// jobs are already queued; they find no message and are dropped as above.
package intake

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailferry/mailferry/mail"
	"github.com/mailferry/mailferry/queue"
	"github.com/mailferry/mailferry/store"
)

// ErrUnavailable means the ledger or the queue could not take the message;
// nothing was accepted.
var ErrUnavailable = errors.New("ledger or queue unavailable")

// RefusedError means the ledger refused the message's own data, as it
// would every time: the client must change the message, not retry it.
// Nothing of it was accepted.
type RefusedError struct {
	MessageID uuid.UUID
	SQLState  string // PostgreSQL's SQLSTATE (Appendix A of its manual)
	Err       error
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("record message %s: the ledger refused its data (SQLSTATE %s): %v", e.MessageID, e.SQLState, e.Err)
}

func (e *RefusedError) Unwrap() error { return e.Err }

// Reason says what was wrong in words for the client, without the
// ledger's own text.
func (e *RefusedError) Reason() string {
	switch e.SQLState {
	case "22021", "22P05":
		return "a text value of the message is not valid UTF-8 or holds NUL"
	case "22001":
		return "a value of the message is too long to store"
	case "23503":
		return "the message refers to a tenant or API key that no longer exists"
	case "":
		// Refused by the store's own checks, whose text names the field
		// and holds nothing of the ledger's.
		return "a value of the message cannot be stored: " + e.Err.Error()
	}
	return "a value of the message cannot be stored (SQLSTATE " + e.SQLState + ")"
}

// rowError returns the SQLSTATE of err when PostgreSQL refused it for the
// data of a row, as it would again: class 22 (data exception), 23
// (integrity constraint violation) or 54 (program limit exceeded). A
// connection failure, a timeout or a read-only server is none of these.
// The error is matched by its SQLState method, so that intake needs no
// driver import.
func rowError(err error) (string, bool) {
	var se interface{ SQLState() string }
	if !errors.As(err, &se) {
		// The store's own checks refuse what PostgreSQL would (addresses
		// that are not valid UTF-8, NUL) before sending it: those are row
		// errors too, with no SQLSTATE.
		return "", errors.Is(err, store.ErrRejected)
	}
	code := se.SQLState()
	if len(code) != 5 {
		return code, false
	}
	switch code[:2] {
	case "22", "23", "54":
		return code, true
	}
	return code, false
}

// Ledger is the part of the store intake writes to.
type Ledger interface {
	AcceptBatch(ctx context.Context, msgs []store.NewMessage) error
	AcceptIdempotent(ctx context.Context, msg store.NewMessage, key store.Idempotency) (*store.Idempotency, error)
	AcceptIdempotentBatch(ctx context.Context, msgs []store.NewMessage, key store.Idempotency) (*store.Idempotency, error)
	// MessageExists settles a write whose reply was lost: did it commit?
	MessageExists(ctx context.Context, id uuid.UUID) (bool, error)
	// LookupIdempotency finds a repeat before its jobs are queued.
	LookupIdempotency(ctx context.Context, tenant, key string, at time.Time) (*store.Idempotency, error)
	// LookupSuppressions finds the recipients on their tenant's
	// suppression list, for a whole batch at once, before its jobs are
	// queued.
	LookupSuppressions(ctx context.Context, keys []store.SuppressionKey) (map[store.SuppressionKey]string, error)
}

// Queue is the part of the queue intake writes to.
type Queue interface {
	Enqueue(ctx context.Context, items ...queue.Item) error
}

// Options configures an Intake.
type Options struct {
	Ledger  Ledger
	Queue   Queue
	Logger  *slog.Logger
	Metrics *Metrics
	// MaxBatch caps the messages written in one transaction; default 256.
	MaxBatch int
	// Committers is how many batches may be in flight at once; default 4.
	Committers int
	// CommitTimeout bounds one batch's writes; default 10s. A batch is not
	// cancelled when the request that led it goes away: it carries others.
	CommitTimeout time.Duration
	// MaxWait bounds how long a message may wait to be taken into a batch;
	// default 10s. Past it, or when the caller's context ends first, the
	// message is withdrawn and the caller gets ErrUnavailable. A caller
	// therefore waits at most MaxWait plus its batch's writes (one
	// CommitTimeout, and one more to read back a failed commit), and a job
	// is at most MaxWait plus CommitTimeout older than its Submit call
	// (by its UUIDv7 id) when its rows commit.
	MaxWait time.Duration
	Now     func() time.Time
}

// Intake accepts messages.
type Intake struct {
	opts  Options
	mu    sync.Mutex
	queue []*pending
	slots chan struct{}
}

// pending is one Submit's message. state is guarded by Intake.mu; err is
// written before done is closed.
type pending struct {
	msg   store.NewMessage
	state pendingState
	err   error
	done  chan struct{}
}

type pendingState int

const (
	waiting   pendingState = iota // in Intake.queue
	taken                         // in a batch being written: only its outcome answers
	withdrawn                     // taken back by its caller before any write
)

// New checks opts and returns an Intake. It starts no goroutines: committing
// is done by the submitting goroutines themselves.
func New(opts Options) (*Intake, error) {
	if opts.Ledger == nil || opts.Queue == nil {
		return nil, errors.New("intake: Ledger and Queue are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 256
	}
	if opts.Committers <= 0 {
		opts.Committers = 4
	}
	if opts.CommitTimeout <= 0 {
		opts.CommitTimeout = 10 * time.Second
	}
	if opts.MaxWait <= 0 {
		opts.MaxWait = 10 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Intake{opts: opts, slots: make(chan struct{}, opts.Committers)}, nil
}

// Submission is one message to accept.
type Submission struct {
	TenantID string
	APIKeyID string
	Ingress  string // "api" or "smtp"
	Message  *mail.Message
	Tags     []string
	Metadata map[string]string
	SendAt   time.Time // zero: now
	// RequireTLS: the sender asked for REQUIRETLS (RFC 8689), by the API
	// field or the SMTP MAIL parameter.
	RequireTLS bool
}

// Receipt is what the caller tells its client.
type Receipt struct {
	ID         uuid.UUID
	MessageID  string
	Recipients []string
	Accepted   time.Time
}

// NewReceipt gives the id and time a submission will be stored under, so
// the caller can build its answer before Submit (idempotent requests store
// that answer with the message).
func (in *Intake) NewReceipt(s Submission) (Receipt, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return Receipt{}, fmt.Errorf("new message id: %w", err)
	}
	return Receipt{
		ID:         id,
		MessageID:  s.Message.MessageID,
		Recipients: s.Message.Recipients,
		Accepted:   in.opts.Now().UTC(),
	}, nil
}

// Suppression is a recipient on its tenant's suppression list when the
// message was accepted: it is recorded suppressed and never sent.
type Suppression struct {
	Email  string // as the message names it
	Reason string // store.Suppressed*
}

// Submit is Accept for a caller that need not know which recipients were
// suppressed (SMTP submission answers 250 all the same).
func (in *Intake) Submit(ctx context.Context, r Receipt, s Submission) error {
	_, err := in.Accept(ctx, r, s)
	return err
}

// Accept queues and records a message under the receipt's id, and
// returns the recipients that were on the tenant's suppression list:
// those are recorded suppressed and get no job. It returns once that
// message is written or refused, within MaxWait plus its batch's writes
// (see Options.MaxWait): a message not yet taken into a batch when ctx
// ends or MaxWait passes is withdrawn (ErrUnavailable, nothing accepted);
// one already taken waits for its batch, whose outcome is the answer.
func (in *Intake) Accept(ctx context.Context, r Receipt, s Submission) ([]Suppression, error) {
	p := &pending{msg: record(r, s), done: make(chan struct{})}
	in.mu.Lock()
	in.queue = append(in.queue, p)
	in.mu.Unlock()
	wait, cancel := context.WithTimeoutCause(ctx, in.opts.MaxWait, errWaitedTooLong)
	defer cancel()
	select {
	case <-p.done:
	case in.slots <- struct{}{}:
		in.commitUntilTaken(wait, p)
		<-in.slots
	case <-wait.Done():
	}
	select {
	case <-p.done:
	case <-wait.Done():
		in.withdraw(p, context.Cause(wait))
		<-p.done
	}
	if p.err != nil {
		return nil, p.err
	}
	in.accepted(ctx, r, s)
	return suppressions(p.msg), nil
}

var errWaitedTooLong = errors.New("waited too long for a commit")

// commitUntilTaken writes batches, oldest messages first, until p is in
// one (ours or another committer's) or wait ends. Stopping there is what
// bounds a committer's wait: without it, a caller holding a slot would
// commit for every newcomer for as long as they keep arriving, past its
// own client's deadline, and the client's retry would send the mail twice.
func (in *Intake) commitUntilTaken(wait context.Context, p *pending) {
	for {
		in.mu.Lock()
		if p.state != waiting || wait.Err() != nil {
			in.mu.Unlock()
			return
		}
		// p is still queued, so the batch holds at least one message.
		n := min(len(in.queue), in.opts.MaxBatch)
		batch := make([]*pending, n)
		copy(batch, in.queue[:n])
		for _, b := range batch {
			b.state = taken
		}
		in.queue = in.queue[n:]
		if len(in.queue) == 0 {
			in.queue = nil // let the backing array go
		}
		in.mu.Unlock()
		in.commit(batch)
		for _, b := range batch {
			close(b.done)
		}
	}
}

// withdraw takes p out of the queue if no batch has taken it yet, and
// answers it with ErrUnavailable: it was never written anywhere.
func (in *Intake) withdraw(p *pending, cause error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if p.state != waiting {
		return
	}
	if i := slices.Index(in.queue, p); i >= 0 {
		in.queue = slices.Delete(in.queue, i, i+1)
	}
	p.state = withdrawn
	p.err = fmt.Errorf("message %s not taken into a batch: %w: %w", p.msg.ID, ErrUnavailable, cause)
	close(p.done)
}

func (in *Intake) accepted(ctx context.Context, r Receipt, s Submission) {
	in.opts.Metrics.accepted(s.Ingress)
	in.opts.Logger.LogAttrs(ctx, slog.LevelInfo, "message accepted",
		slog.String("message_id", r.ID.String()), slog.String("tenant", s.TenantID),
		slog.String("ingress", s.Ingress), slog.Int("recipients", len(r.Recipients)))
}

// SubmitIdempotent queues and stores the message together with its
// idempotency key. If the tenant used the key in the last 24 hours it
// stores nothing and returns the first record. A repeat is looked up
// before anything is queued, so it costs Redis nothing; only a repeat
// racing its first request leaves jobs, which find no message and are
// dropped.
//
// The answer stored with the key is answer's, given the recipients on the
// suppression list (looked up before anything is queued); key.Response is
// not used.
func (in *Intake) SubmitIdempotent(ctx context.Context, r Receipt, s Submission, key store.Idempotency,
	answer func(suppressed []Suppression) ([]byte, error)) (*store.Idempotency, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), in.opts.CommitTimeout)
	defer cancel()
	msg := record(r, s)
	at := key.CreatedAt
	if at.IsZero() {
		at = r.Accepted
	}
	existing, err := in.opts.Ledger.LookupIdempotency(ctx, s.TenantID, key.Key, at)
	if err != nil {
		in.opts.Logger.LogAttrs(ctx, slog.LevelError, "look up idempotency key", slog.String("message_id", r.ID.String()), slog.Any("error", err))
		return nil, fmt.Errorf("look up idempotency key: %w: %w", ErrUnavailable, err)
	}
	if existing != nil {
		return existing, nil
	}
	one := []*pending{{msg: msg}}
	if err := in.suppress(ctx, one); err != nil {
		return nil, err
	}
	msg = one[0].msg
	if key.Response, err = answer(suppressions(msg)); err != nil {
		return nil, fmt.Errorf("answer message %s: %w", r.ID, err)
	}
	if err := in.opts.Queue.Enqueue(ctx, jobs(msg)...); err != nil {
		in.opts.Logger.LogAttrs(ctx, slog.LevelError, "queue message", slog.String("message_id", r.ID.String()), slog.Any("error", err))
		return nil, fmt.Errorf("queue message %s: %w: %w", r.ID, ErrUnavailable, err)
	}
	existing, err = in.opts.Ledger.AcceptIdempotent(ctx, msg, key)
	if code, ok := rowError(err); ok {
		in.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "message refused by the ledger",
			slog.String("message_id", r.ID.String()), slog.String("sqlstate", code), slog.Any("error", err))
		return nil, &RefusedError{MessageID: r.ID, SQLState: code, Err: err}
	}
	if err != nil && !in.committed(ctx, []uuid.UUID{r.ID}, err) {
		return nil, fmt.Errorf("record message %s: %w: %w", r.ID, ErrUnavailable, err)
	}
	if existing != nil {
		return existing, nil
	}
	in.accepted(ctx, r, s)
	return nil, nil
}

// commit queues a batch's jobs, then writes its rows, and answers each
// message's err. Redis goes first so that no failure after the commit can
// leave rows the client was told were refused: the reconciler would
// requeue those and the mail would go out after a 503. Jobs of a message
// that fails to commit find no message and are dropped by the workers.
func (in *Intake) commit(batch []*pending) {
	ctx, cancel := context.WithTimeout(context.Background(), in.opts.CommitTimeout)
	defer cancel()
	if err := in.suppress(ctx, batch); err != nil {
		for _, p := range batch {
			p.err = err
		}
		return
	}
	var items []queue.Item
	for _, p := range batch {
		items = append(items, jobs(p.msg)...)
	}
	if err := in.opts.Queue.Enqueue(ctx, items...); err != nil {
		in.opts.Logger.LogAttrs(ctx, slog.LevelError, "queue messages", slog.Int("messages", len(batch)), slog.Any("error", err))
		for _, p := range batch {
			p.err = fmt.Errorf("queue messages: %w: %w", ErrUnavailable, err)
		}
		return
	}
	_ = in.record(ctx, batch) // each message's err says it
}

// suppress marks the recipients of batch that are on their tenant's
// suppression list, asking the ledger once for the whole batch: it is one
// more round trip per group commit, not per message. It runs before the
// jobs are queued, since a domain whose recipients are all suppressed gets
// none.
func (in *Intake) suppress(ctx context.Context, batch []*pending) error {
	n := 0
	for _, p := range batch {
		n += len(p.msg.Recipients)
	}
	keys := make([]store.SuppressionKey, 0, n)
	for _, p := range batch {
		for _, r := range p.msg.Recipients {
			keys = append(keys, store.SuppressionKey{TenantID: p.msg.TenantID, Email: store.NormalizeEmail(r.Email)})
		}
	}
	found, err := in.opts.Ledger.LookupSuppressions(ctx, keys)
	if err != nil {
		in.opts.Logger.LogAttrs(ctx, slog.LevelError, "look up suppressions", slog.Int("messages", len(batch)), slog.Any("error", err))
		return fmt.Errorf("look up suppressions: %w: %w", ErrUnavailable, err)
	}
	if len(found) == 0 {
		return nil
	}
	for _, p := range batch {
		for i, r := range p.msg.Recipients {
			reason, ok := found[store.SuppressionKey{TenantID: p.msg.TenantID, Email: store.NormalizeEmail(r.Email)}]
			if !ok {
				continue
			}
			p.msg.Recipients[i].Suppressed = reason // record made the slice; it is ours
		}
	}
	return nil
}

// suppressions lists m's suppressed recipients.
func suppressions(m store.NewMessage) []Suppression {
	var out []Suppression
	for _, r := range m.Recipients {
		if r.Suppressed != "" {
			out = append(out, Suppression{Email: r.Email, Reason: r.Suppressed})
		}
	}
	return out
}

// record writes batch's rows in one transaction. When PostgreSQL refuses
// it for a row's data (rowError), it writes each half again, so that a
// batch of n with one bad message costs about 2·log2(n) more transactions
// and fails that message alone. Such a refusal came from the server, so
// nothing committed and there is nothing to read back. It returns the
// error that made it answer ErrUnavailable, if one did: the second half
// is then not tried, so that a batch never reads back more than once and
// its caller's wait stays bounded as Options.MaxWait says.
func (in *Intake) record(ctx context.Context, batch []*pending) error {
	msgs := make([]store.NewMessage, len(batch))
	ids := make([]uuid.UUID, len(batch))
	for i, p := range batch {
		msgs[i], ids[i] = p.msg, p.msg.ID
	}
	err := in.opts.Ledger.AcceptBatch(ctx, msgs)
	code, isRow := rowError(err)
	switch {
	case err == nil:
	case isRow && len(batch) > 1:
		in.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "record messages: a row was refused; writing the batch in halves",
			slog.Int("messages", len(batch)), slog.String("sqlstate", code), slog.Any("error", err))
		mid := len(batch) / 2
		if err := in.record(ctx, batch[:mid]); err != nil {
			for _, p := range batch[mid:] {
				p.err = fmt.Errorf("record messages: %w: %w", ErrUnavailable, err)
			}
			return err
		}
		return in.record(ctx, batch[mid:])
	case isRow:
		in.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "message refused by the ledger",
			slog.String("message_id", ids[0].String()), slog.String("sqlstate", code), slog.Any("error", err))
		batch[0].err = &RefusedError{MessageID: ids[0], SQLState: code, Err: err}
		return nil
	case !in.committed(ctx, ids, err):
		for _, p := range batch {
			p.err = fmt.Errorf("record messages: %w: %w", ErrUnavailable, err)
		}
		return err
	}
	in.opts.Metrics.batch(len(msgs))
	return nil
}

// committed settles a failed ledger write: an error can come after the
// COMMIT reached PostgreSQL (a lost reply, a timeout during COMMIT), and
// answering 503 for rows that exist would send the mail after all. One
// transaction wrote every id, so the first tells. If even the read-back
// fails the outcome is unknown; it is logged, and the caller hears
// ErrUnavailable.
func (in *Intake) committed(ctx context.Context, ids []uuid.UUID, cause error) bool {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), in.opts.CommitTimeout)
	defer cancel()
	ok, err := in.opts.Ledger.MessageExists(rctx, ids[0])
	switch {
	case err != nil:
		in.opts.Logger.LogAttrs(ctx, slog.LevelError, "record messages: outcome unknown",
			slog.Int("messages", len(ids)), slog.String("message_id", ids[0].String()),
			slog.Any("error", cause), slog.Any("read_back_error", err))
	case ok:
		in.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "record messages: committed despite the error",
			slog.Int("messages", len(ids)), slog.Any("error", cause))
	default:
		in.opts.Logger.LogAttrs(ctx, slog.LevelError, "record messages",
			slog.Int("messages", len(ids)), slog.Any("error", cause))
	}
	return err == nil && ok
}

func record(r Receipt, s Submission) store.NewMessage {
	m := s.Message
	rcpts := make([]store.NewRecipient, len(m.Recipients))
	for i, addr := range m.Recipients {
		rcpts[i] = store.NewRecipient{Email: addr, Domain: domainOf(addr)}
	}
	from := ""
	if len(m.From) > 0 {
		from = m.From[0].String()
	}
	return store.NewMessage{
		ID:         r.ID,
		TenantID:   s.TenantID,
		APIKeyID:   s.APIKeyID,
		Ingress:    s.Ingress,
		MessageID:  m.MessageID,
		MailFrom:   m.Sender,
		From:       from,
		Subject:    m.Subject,
		Tags:       s.Tags,
		Metadata:   s.Metadata,
		Body:       m.Body,
		Needs8Bit:  m.Needs8Bit,
		NeedsUTF8:  m.NeedsUTF8,
		RequireTLS: s.RequireTLS,
		CreatedAt:  r.Accepted,
		SendAt:     s.SendAt,
		Recipients: rcpts,
	}
}

// jobs gives one job per recipient domain (README.md, Delivery: one SMTP
// transaction per message and destination domain), none for a domain
// whose recipients are all suppressed.
func jobs(m store.NewMessage) []queue.Item {
	var items []queue.Item
	seen := make(map[string]bool, 1)
	for _, r := range m.Recipients {
		if r.Suppressed != "" || seen[r.Domain] {
			continue
		}
		seen[r.Domain] = true
		items = append(items, queue.Item{
			Job:       queue.Job{MessageID: m.ID.String(), Domain: r.Domain},
			NotBefore: m.SendAt,
		})
	}
	return items
}

func domainOf(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	return strings.ToLower(addr[i+1:])
}

// Metrics are intake's Prometheus collectors.
type Metrics struct {
	accepts   *prometheus.CounterVec
	batchSize prometheus.Histogram
}

// NewMetrics registers intake's collectors with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		accepts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mailferry_messages_accepted_total",
			Help: "Messages recorded and queued, by ingress.",
		}, []string{"ingress"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mailferry_accept_batch_size",
			Help:    "Messages written per ledger transaction (group commit).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
		}),
	}
	reg.MustRegister(m.accepts, m.batchSize)
	// Both ingresses show from the start, so rate() has a series at zero.
	m.accepts.WithLabelValues("api")
	m.accepts.WithLabelValues("smtp")
	return m
}

func (m *Metrics) accepted(ingress string) {
	if m != nil {
		m.accepts.WithLabelValues(ingress).Inc()
	}
}

func (m *Metrics) batch(n int) {
	if m != nil {
		m.batchSize.Observe(float64(n))
	}
}
