package intake

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/queue"

	"github.com/mailferry/mailferry/store"
)

// AcceptAll accepts a batch of messages (POST /v1/messages/batch) in one
// ledger transaction and one Redis round trip, as a group commit does,
// but without waiting in the queue: the batch is already whole. It
// answers per message, in order: the suppressed recipients of one
// accepted, or its error. A message the ledger refuses for its own data
// fails alone (*RefusedError; the rest are written again without it, as
// in a group commit); a ledger or queue outage fails them all with
// ErrUnavailable. It waits for a committer slot, as Accept does.
func (in *Intake) AcceptAll(ctx context.Context, rs []Receipt, ss []Submission) ([][]Suppression, []error) {
	errs := make([]error, len(rs))
	sup := make([][]Suppression, len(rs))
	if len(rs) == 0 {
		return sup, errs
	}
	batch := make([]*pending, len(rs))
	for i := range rs {
		batch[i] = &pending{msg: record(rs[i], ss[i]), state: taken}
	}
	select {
	case in.slots <- struct{}{}:
	case <-ctx.Done():
		for i := range errs {
			errs[i] = fmt.Errorf("batch of %d messages: no committer free: %w: %w", len(rs), ErrUnavailable, context.Cause(ctx))
		}
		return sup, errs
	}
	in.commit(batch)
	<-in.slots
	for i, p := range batch {
		errs[i] = p.err
		if p.err == nil {
			sup[i] = suppressions(p.msg)
			in.accepted(ctx, rs[i], ss[i])
		}
	}
	return sup, errs
}

// SubmitAllIdempotent is AcceptAll under an Idempotency-Key covering the
// whole batch, as SubmitIdempotent is for one message: a repeat within
// store.IdempotencyTTL stores nothing and gets the first record back. The
// key and every message take one transaction, so a message the ledger
// refuses fails the batch (*RefusedError for the first message, nothing
// accepted); the API checks each message first, so that takes data the
// API let through and PostgreSQL did not. answer builds the body stored
// with the key from each message's suppressed recipients.
func (in *Intake) SubmitAllIdempotent(ctx context.Context, rs []Receipt, ss []Submission, key store.Idempotency,
	answer func(suppressed [][]Suppression) ([]byte, error)) (*store.Idempotency, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), in.opts.CommitTimeout)
	defer cancel()
	existing, err := in.opts.Ledger.LookupIdempotency(ctx, key.TenantID, key.Key, key.CreatedAt)
	if err != nil {
		in.opts.Logger.LogAttrs(ctx, slog.LevelError, "look up idempotency key", slog.Any("error", err))
		return nil, fmt.Errorf("look up idempotency key: %w: %w", ErrUnavailable, err)
	}
	if existing != nil {
		return existing, nil
	}
	batch := make([]*pending, len(rs))
	for i := range rs {
		batch[i] = &pending{msg: record(rs[i], ss[i])}
	}
	if len(batch) > 0 {
		if err := in.suppress(ctx, batch); err != nil {
			return nil, err
		}
	}
	sup := make([][]Suppression, len(batch))
	msgs := make([]store.NewMessage, len(batch))
	for i, p := range batch {
		sup[i], msgs[i] = suppressions(p.msg), p.msg
	}
	if key.Response, err = answer(sup); err != nil {
		return nil, fmt.Errorf("answer batch: %w", err)
	}
	var items []queue.Item
	for _, m := range msgs {
		items = append(items, jobs(m)...)
	}
	if len(items) > 0 {
		if err := in.opts.Queue.Enqueue(ctx, items...); err != nil {
			in.opts.Logger.LogAttrs(ctx, slog.LevelError, "queue batch", slog.Int("messages", len(msgs)), slog.Any("error", err))
			return nil, fmt.Errorf("queue batch: %w: %w", ErrUnavailable, err)
		}
	}
	existing, err = in.opts.Ledger.AcceptIdempotentBatch(ctx, msgs, key)
	if code, ok := rowError(err); ok && len(msgs) > 0 {
		in.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "batch refused by the ledger",
			slog.Int("messages", len(msgs)), slog.String("sqlstate", code), slog.Any("error", err))
		return nil, &RefusedError{MessageID: msgs[0].ID, SQLState: code, Err: err}
	}
	if err != nil && (len(msgs) == 0 || !in.committed(ctx, []uuid.UUID{msgs[0].ID}, err)) {
		return nil, fmt.Errorf("record batch: %w: %w", ErrUnavailable, err)
	}
	if existing != nil {
		return existing, nil
	}
	for i := range rs {
		in.accepted(ctx, rs[i], ss[i])
	}
	return nil, nil
}
