// Package store is Mailferry's PostgreSQL ledger: tenants, API keys,
// messages and their recipients, delivery attempts, Idempotency-Key
// answers, and each tenant's suppression list with the runs of soft
// bounces that lead to it. It uses pgx directly (pgxpool, CopyFrom, pgx.Batch).
//
// PostgreSQL is the system of record. A message is accepted once its rows
// are committed here, before it is put on the Redis queue, and every
// non-final recipient can be requeued from here after Redis loses its data.
//
// Tenants are kept apart by every read: a message of another tenant is
// ErrNotFound, exactly like one that does not exist.
//
// Retention: delivery attempts live in monthly partitions that
// EnsureAttemptPartitions creates ahead of time and DropAttemptPartitionsBefore
// drops whole; Idempotency-Key rows are purged after IdempotencyTTL by
// PurgeIdempotency; message bodies are cleared once every recipient is final
// (at accept when every recipient is suppressed); suppressions stay until
// deleted and stop counting at their expires_at;
// events, with their webhook deliveries and attempts, are deleted after
// MAILFERRY_EVENT_RETENTION by PurgeEvents.
//
// Events (events.go) are an outbox: QueueEvents and InsertEvents put them
// into the batch or transaction of the change they describe, fanned out to
// webhook deliveries (webhooks.go) in the same statement.
package store
