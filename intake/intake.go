// Package intake is the one path by which mail enters Mailferry, whatever
// the ingress (HTTP API, SMTP submission): record the message in
// PostgreSQL, then queue one job per recipient domain in Redis. A message is
// accepted only when both hold; if the queue refuses, the ledger rows are
// undone and the caller is told the service is unavailable.
//
// Concurrent submissions are group-committed: while one batch is being
// written, newcomers gather, and the next committer writes them all in one
// transaction and one Redis round trip.
package intake

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// Ledger is the part of the store intake writes to.
type Ledger interface {
	AcceptBatch(ctx context.Context, msgs []store.NewMessage) error
	AcceptIdempotent(ctx context.Context, msg store.NewMessage, key store.Idempotency) (*store.Idempotency, error)
	DeleteMessages(ctx context.Context, ids []uuid.UUID) error
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
	Now           func() time.Time
}

// Intake accepts messages.
type Intake struct {
	opts  Options
	mu    sync.Mutex
	queue []*pending
	slots chan struct{}
}

type pending struct {
	msg  store.NewMessage
	err  error
	done chan struct{}
}

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

// Submit records and queues a message under the receipt's id.
func (in *Intake) Submit(ctx context.Context, r Receipt, s Submission) error {
	p := &pending{msg: record(r, s), done: make(chan struct{})}
	in.mu.Lock()
	in.queue = append(in.queue, p)
	in.mu.Unlock()
	select {
	case <-p.done:
	case in.slots <- struct{}{}:
		in.commitPending()
		<-in.slots
		<-p.done
	}
	if p.err == nil {
		in.opts.Metrics.accepted(s.Ingress)
		in.opts.Logger.LogAttrs(ctx, slog.LevelInfo, "message accepted",
			slog.String("message_id", r.ID.String()), slog.String("tenant", s.TenantID),
			slog.String("ingress", s.Ingress), slog.Int("recipients", len(r.Recipients)))
	}
	return p.err
}

// SubmitIdempotent stores the message together with its idempotency key.
// If the tenant used the key in the last 24 hours it stores nothing and
// returns the first record.
func (in *Intake) SubmitIdempotent(ctx context.Context, r Receipt, s Submission, key store.Idempotency) (*store.Idempotency, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), in.opts.CommitTimeout)
	defer cancel()
	msg := record(r, s)
	existing, err := in.opts.Ledger.AcceptIdempotent(ctx, msg, key)
	if err != nil {
		in.opts.Logger.LogAttrs(ctx, slog.LevelError, "record message", slog.String("message_id", r.ID.String()), slog.Any("error", err))
		return nil, fmt.Errorf("record message %s: %w: %w", r.ID, ErrUnavailable, err)
	}
	if existing != nil {
		return existing, nil
	}
	if err := in.opts.Queue.Enqueue(ctx, jobs(msg)...); err != nil {
		in.undo(ctx, []uuid.UUID{r.ID}, err)
		return nil, fmt.Errorf("queue message %s: %w: %w", r.ID, ErrUnavailable, err)
	}
	in.opts.Metrics.accepted(s.Ingress)
	in.opts.Logger.LogAttrs(ctx, slog.LevelInfo, "message accepted",
		slog.String("message_id", r.ID.String()), slog.String("tenant", s.TenantID),
		slog.String("ingress", s.Ingress), slog.Int("recipients", len(r.Recipients)))
	return nil, nil
}

// commitPending writes batches until none is waiting. Whoever holds a slot
// commits for everyone; a submitter whose message another committer took
// just waits for it.
func (in *Intake) commitPending() {
	for {
		in.mu.Lock()
		n := min(len(in.queue), in.opts.MaxBatch)
		batch := make([]*pending, n)
		copy(batch, in.queue[:n])
		in.queue = in.queue[n:]
		if len(in.queue) == 0 {
			in.queue = nil // let the backing array go
		}
		in.mu.Unlock()
		if n == 0 {
			return
		}
		err := in.commit(batch)
		for _, p := range batch {
			p.err = err
			close(p.done)
		}
	}
}

func (in *Intake) commit(batch []*pending) error {
	ctx, cancel := context.WithTimeout(context.Background(), in.opts.CommitTimeout)
	defer cancel()
	msgs := make([]store.NewMessage, len(batch))
	var items []queue.Item
	for i, p := range batch {
		msgs[i] = p.msg
		items = append(items, jobs(p.msg)...)
	}
	if err := in.opts.Ledger.AcceptBatch(ctx, msgs); err != nil {
		in.opts.Logger.LogAttrs(ctx, slog.LevelError, "record messages", slog.Int("messages", len(msgs)), slog.Any("error", err))
		return fmt.Errorf("record messages: %w: %w", ErrUnavailable, err)
	}
	in.opts.Metrics.batch(len(msgs))
	if err := in.opts.Queue.Enqueue(ctx, items...); err != nil {
		ids := make([]uuid.UUID, len(msgs))
		for i := range msgs {
			ids[i] = msgs[i].ID
		}
		in.undo(ctx, ids, err)
		return fmt.Errorf("queue messages: %w: %w", ErrUnavailable, err)
	}
	return nil
}

// undo removes rows whose jobs Redis refused, so a 503 means "nothing was
// accepted". If even that fails the rows stay as queued recipients, and
// the reconciler, which requeues every non-final recipient, delivers them.
func (in *Intake) undo(ctx context.Context, ids []uuid.UUID, cause error) {
	in.opts.Logger.LogAttrs(ctx, slog.LevelError, "queue unavailable, undoing accept", slog.Int("messages", len(ids)), slog.Any("error", cause))
	if err := in.opts.Ledger.DeleteMessages(context.WithoutCancel(ctx), ids); err != nil {
		in.opts.Logger.LogAttrs(ctx, slog.LevelError, "undo accept", slog.Int("messages", len(ids)), slog.Any("error", err))
	}
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
		CreatedAt:  r.Accepted,
		SendAt:     s.SendAt,
		Recipients: rcpts,
	}
}

// jobs gives one job per recipient domain (PRODUCT: one SMTP transaction
// per message and destination domain).
func jobs(m store.NewMessage) []queue.Item {
	var items []queue.Item
	seen := make(map[string]bool, 1)
	for _, r := range m.Recipients {
		if seen[r.Domain] {
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
