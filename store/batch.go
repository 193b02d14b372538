package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// The batch forms of the worker's ledger writes: a worker group-commits
// the writes of the jobs it carries (relay's ledger batcher), so that
// PostgreSQL commits once per batch, not once per message (issue 12,
// Build item 4). Each is the same change as the one-message method, for
// every message at once, in one transaction: it commits or fails whole.
// A caller that must not let one message fail the others writes them one
// by one after an error.

const (
	// takeLeases is takeLease for many messages in one statement: the
	// same conditions, each request's owner, times and due bound joined
	// in from unnest. A recipient named by two requests of one batch (two
	// claims of one job) is updated once, for one of them: RETURNING gives
	// the owner that got it. The status list must stay takeLease's.
	takeLeases = `UPDATE recipients r SET next_attempt_at = q.next, lease_owner = q.owner,
	lease_until = now() + q.for_us * interval '1 microsecond', updated_at = now()
FROM unnest($1::uuid[], $2::smallint[], $3::timestamptz[], $4::text[], $5::bigint[], $6::timestamptz[])
	AS q(message_id, idx, next, owner, for_us, due_by)
WHERE r.message_id = q.message_id AND r.idx = q.idx AND r.status NOT IN ('delivered', 'bounced', 'suppressed', 'canceled')
AND (r.lease_owner IS NULL OR r.lease_until < now())
AND (r.next_attempt_at IS NULL OR r.next_attempt_at <= q.due_by)
RETURNING r.message_id, r.idx, r.lease_owner`
	// saveSignatures is saveSignature's write for many messages: it
	// returns the ids it stored a header for. A message that had one
	// already (another worker signed first) is not returned; its caller
	// reads the one that counts with SaveSignature.
	saveSignatures = `UPDATE messages m SET dkim_header = v.header
FROM unnest($1::uuid[], $2::text[]) AS v(id, header)
WHERE m.id = v.id AND m.dkim_header IS NULL
RETURNING m.id`
)

// LeaseRequest is one TakeLease of a batch.
type LeaseRequest struct {
	ID    uuid.UUID
	Idxs  []int
	Lease Lease
}

// TakeLeases is TakeLease for many messages in one statement, so one
// commit: it returns, per request, the indexes taken (sorted). The rows are
// locked in message and index order, the order every batch uses, so two
// workers' batches wait for each other rather than deadlock.
func (s *Store) TakeLeases(ctx context.Context, reqs []LeaseRequest) ([][]int, error) {
	taken := make([][]int, len(reqs))
	if len(reqs) == 0 {
		return taken, nil
	}
	type row struct {
		id    uuid.UUID
		idx   int16
		owner int // request index
	}
	var rows []row
	byOwner := make(map[string]int, len(reqs))
	for i, r := range reqs {
		if r.Lease.Owner == "" || r.Lease.For <= 0 {
			return nil, fmt.Errorf("take leases %s: %w: an owner and a positive duration are required", r.ID, ErrRejected)
		}
		if _, dup := byOwner[r.Lease.Owner]; dup {
			return nil, fmt.Errorf("take leases %s: %w: owner %q named twice", r.ID, ErrRejected, r.Lease.Owner)
		}
		byOwner[r.Lease.Owner] = i
		for _, idx := range r.Idxs {
			rows = append(rows, row{r.ID, int16(idx), i})
		}
	}
	slices.SortFunc(rows, func(a, b row) int {
		return cmp.Or(slices.Compare(a.id[:], b.id[:]), cmp.Compare(a.idx, b.idx), cmp.Compare(a.owner, b.owner))
	})
	var (
		ids    = make([]uuid.UUID, len(rows))
		idxs   = make([]int16, len(rows))
		next   = make([]time.Time, len(rows))
		owners = make([]string, len(rows))
		forUS  = make([]int64, len(rows))
		dueBy  = make([]time.Time, len(rows))
	)
	for i, r := range rows {
		l := reqs[r.owner].Lease
		ids[i], idxs[i], next[i], owners[i], forUS[i], dueBy[i] = r.id, r.idx, l.Next, l.Owner, l.For.Microseconds(), l.DueBy
	}
	res, err := s.pool.Query(ctx, takeLeases, ids, idxs, next, owners, forUS, dueBy)
	if err != nil {
		return nil, fmt.Errorf("take leases: %w", err)
	}
	var (
		id    uuid.UUID
		idx   int16
		owner string
	)
	_, err = pgx.ForEachRow(res, []any{&id, &idx, &owner}, func() error {
		i, ok := byOwner[owner]
		if !ok || reqs[i].ID != id {
			return fmt.Errorf("recipient %s/%d leased to %q, not asked for", id, idx, owner)
		}
		taken[i] = append(taken[i], int(idx))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("take leases: %w", err)
	}
	for _, t := range taken {
		slices.Sort(t)
	}
	return taken, nil
}

// SignatureRequest is one SaveSignature of a batch.
type SignatureRequest struct {
	ID     uuid.UUID
	Header string
}

// SaveSignatures is SaveSignature for many messages in one statement, so
// one commit. It returns, per request, the header that counts: its own
// when it was stored first, else the one stored before (read back for
// those alone, after the commit, as SaveSignature does).
func (s *Store) SaveSignatures(ctx context.Context, reqs []SignatureRequest) ([]string, error) {
	out := make([]string, len(reqs))
	if len(reqs) == 0 {
		return out, nil
	}
	order := make([]int, len(reqs))
	for i := range order {
		order[i] = i
	}
	// Message order, as everywhere: concurrent batches lock alike.
	slices.SortFunc(order, func(a, b int) int { return slices.Compare(reqs[a].ID[:], reqs[b].ID[:]) })
	ids := make([]uuid.UUID, len(reqs))
	headers := make([]string, len(reqs))
	for i, o := range order {
		ids[i], headers[i] = reqs[o].ID, reqs[o].Header
	}
	rows, err := s.pool.Query(ctx, saveSignatures, ids, headers)
	if err != nil {
		return nil, fmt.Errorf("save signatures: %w", rejected(err))
	}
	stored, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, fmt.Errorf("save signatures: %w", rejected(err))
	}
	// A message named twice (two domains' jobs in one batch) is stored
	// once: its first request here counts as the writer, the other reads.
	mine := make(map[uuid.UUID]bool, len(stored))
	for _, id := range stored {
		mine[id] = true
	}
	for i, r := range reqs {
		if mine[r.ID] {
			delete(mine, r.ID)
			out[i] = r.Header
			continue
		}
		h, err := s.SaveSignature(ctx, r.ID, r.Header)
		if err != nil {
			return nil, fmt.Errorf("save signatures: %w", err)
		}
		out[i] = h
	}
	return out, nil
}

// MessageOutcomes is one RecordOutcomes of a batch.
type MessageOutcomes struct {
	ID       uuid.UUID
	Outcomes []Outcome
}

// RecordOutcomesBatch is RecordOutcomes for many messages in one
// transaction and one round trip: each message's statements, in the same
// order as RecordOutcomes runs them (but the events, one statement for
// the batch at its end), pipelined in one batch that
// PostgreSQL commits once at its Sync. Messages go in the order of their
// advisory lock key, so concurrent batches take those locks alike. It
// reports, per message, whether it is now complete. Any error (a write one
// message's data makes PostgreSQL refuse: ErrRejected) fails the whole
// batch, which then changed nothing.
func (s *Store) RecordOutcomesBatch(ctx context.Context, msgs []MessageOutcomes) ([]bool, error) {
	complete := make([]bool, len(msgs))
	order := make([]int, 0, len(msgs))
	for i, m := range msgs {
		if len(m.Outcomes) > 0 {
			order = append(order, i)
		}
	}
	if len(order) == 0 {
		return complete, nil
	}
	slices.SortStableFunc(order, func(a, b int) int {
		return cmp.Compare(messageLockKey(msgs[a].ID), messageLockKey(msgs[b].ID))
	})
	b := &pgx.Batch{}
	var counts suppressCounts
	var evs []NewEvent
	for _, i := range order {
		e, err := s.queueOutcomes(b, msgs[i].ID, msgs[i].Outcomes, &complete[i], &counts)
		if err != nil {
			return nil, err
		}
		evs = append(evs, e...)
	}
	// The batch's events go in one statement after every message's
	// change, not after each: what they check is the same there (each
	// recipient's attempt number and canceled state, which nothing later
	// in the batch changes, and the suppressions its own message added, at
	// the transaction's now()), and one statement instead of one per
	// message is most of what PostgreSQL saves.
	var deliveries int
	if err := QueueEvents(b, evs, func(_, nd int) { deliveries = nd }); err != nil {
		return nil, fmt.Errorf("record outcomes of %d messages: %w", len(order), err)
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		if len(order) == 1 {
			return nil, fmt.Errorf("record outcomes %s: %w", msgs[order[0]].ID, rejected(err))
		}
		return nil, fmt.Errorf("record outcomes of %d messages: %w", len(order), rejected(err))
	}
	s.metrics.suppressed(SuppressedHardBounce, counts.hard)
	s.metrics.suppressed(SuppressedSoftBounceLimit, counts.limited)
	if deliveries > 0 {
		s.EventsAdded()
	}
	return complete, nil
}

// DeliveryRequest is one LoadDelivery of a batch.
type DeliveryRequest struct {
	ID     uuid.UUID
	Domain string
}

// LoadedDelivery is one answer of LoadDeliveries: the delivery, or the
// error LoadDelivery would have returned for it (ErrNotFound for a
// message not in the ledger).
type LoadedDelivery struct {
	Delivery *Delivery
	Err      error
}

// LoadDeliveries is LoadDelivery for many jobs in one round trip and one
// (read-only) transaction: the same two queries per job, pipelined. A job
// whose message is missing is answered ErrNotFound on its own; an error of
// the batch itself (the connection) fails them all.
func (s *Store) LoadDeliveries(ctx context.Context, reqs []DeliveryRequest) ([]LoadedDelivery, error) {
	out := make([]LoadedDelivery, len(reqs))
	if len(reqs) == 0 {
		return out, nil
	}
	b := &pgx.Batch{}
	dkim := make([]*string, len(reqs))
	parked := make([]*string, len(reqs))
	found := make([]bool, len(reqs))
	for i, r := range reqs {
		d := &Delivery{ID: r.ID}
		out[i].Delivery = d
		b.Queue(selectDelivery, r.ID, r.Domain).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				found[i] = true
				if err := rows.Scan(&d.TenantID, &d.MessageID, &d.MailFrom, &d.From, &d.Body, &dkim[i], &d.Needs8Bit, &d.NeedsUTF8, &d.CreatedAt, &d.SendAt, &parked[i], &d.RequireTLS); err != nil {
					return err
				}
			}
			return rows.Err()
		})
		b.Queue(selectPending, r.ID, r.Domain).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var p PendingRecipient
				var idx int16
				if err := rows.Scan(&idx, &p.Email, &p.Attempts, &p.NextAttemptAt); err != nil {
					return err
				}
				p.Idx = int(idx)
				d.Recipients = append(d.Recipients, p)
			}
			return rows.Err()
		})
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("load %d deliveries: %w", len(reqs), err)
	}
	for i, r := range reqs {
		d := out[i].Delivery
		switch {
		case !found[i]:
			out[i] = LoadedDelivery{Err: fmt.Errorf("load delivery %s: %w", r.ID, ErrNotFound)}
			continue
		case len(d.Recipients) > 0 && d.Body == nil:
			out[i] = LoadedDelivery{Err: fmt.Errorf("load delivery %s: recipients pending but the body is gone", r.ID)}
			continue
		}
		if dkim[i] != nil {
			d.DKIMHeader, d.Signed = *dkim[i], true
		}
		if parked[i] != nil {
			d.Parked = *parked[i]
		}
	}
	return out, nil
}

// suppressCounts are the suppressions a batch of outcomes added.
type suppressCounts struct{ hard, limited int64 }

// queueOutcomes queues one message's outcome statements on b, in the
// order RecordOutcomes documents, and returns its events for the caller
// to queue after them: the message lock, the recipients and attempts
// (with the suppression list and soft-bounce runs), the cancel of
// recipients deferred after their message was canceled, the end of runs
// at the soft-bounce limit, and the message's completion, read into
// complete.
func (s *Store) queueOutcomes(b *pgx.Batch, id uuid.UUID, outs []Outcome, complete *bool, counts *suppressCounts) ([]NewEvent, error) {
	var cols attemptArrays
	next := make([]*time.Time, len(outs))
	suppress := make([]bool, len(outs))
	for j, o := range outs {
		suppress[j] = o.Suppress
		a := o.Attempt
		a.MessageID = id
		if err := cols.add(a); err != nil {
			return nil, fmt.Errorf("record outcomes %s: %w: attempt %d: %w", id, ErrRejected, j, err)
		}
		if a.Outcome == RecipientDeferred {
			next[j] = o.NextAttemptAt
		}
	}
	b.Queue(lockMessage, messageLockClass, messageLockKey(id))
	b.Queue(recordAttempts, id, cols.rcpt, cols.attempt, cols.started, cols.durationMS, cols.mxHost, cols.mxIP,
		cols.tlsVersion, cols.tlsCipher, cols.tlsVerified, cols.code, cols.enhanced, cols.response, cols.outcome, next,
		cols.bounceType, cols.bounceClass, suppress, s.softBounceLimit, cols.tlsPolicy, cols.tlsFailure, cols.tlsOptOut).QueryRow(func(row pgx.Row) error {
		var h, l int64
		if err := row.Scan(&h, &l); err != nil {
			return err
		}
		counts.hard, counts.limited = counts.hard+h, counts.limited+l
		return nil
	})
	// A deferral of a message canceled while it was in flight cancels
	// the recipient (CancelMessage), before the events, which read it.
	evs := outcomeEvents(id, outs)
	var deferred []int
	for _, o := range outs {
		if o.Attempt.Outcome == RecipientDeferred {
			deferred = append(deferred, o.Attempt.Recipient)
			evs = append(evs, NewEvent{ID: EventID(id, o.Attempt.Recipient, EventMessageCanceled, 0), Type: EventMessageCanceled,
				MessageID: id, RcptIdx: o.Attempt.Recipient, When: WhenCanceled})
		}
	}
	if len(deferred) > 0 {
		b.Queue(cancelDeferred, id, toInt16(deferred))
	}
	if s.softBounceLimit > 0 {
		b.Queue(clearSoftLimit, id, cols.rcpt, s.softBounceLimit)
	}
	// A statement of its own, so that its snapshot sees the recipients just
	// updated and those of any domain recorded before the lock was granted.
	b.Queue(completeMessage, id).QueryRow(func(row pgx.Row) error {
		err := row.Scan(complete)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		return err
	})
	return evs, nil
}
