// Package queue is Mailferry's work list in Redis: which deliveries (one
// message to one recipient domain) are due now, which are due later, and
// which a worker holds.
//
// PostgreSQL is the system of record. Redis holds only Jobs — a message ID,
// a recipient domain and an attempt number — never message content,
// recipients or delivery results. Losing Redis therefore loses no mail:
// `mailferry requeue` and the scheduler's reconciler rebuild the work list
// from PostgreSQL (Intact tells them when; Jobs lets them see what is
// already there), and a Queue recreates its consumer group when it finds
// it gone, so workers carry on after a flush or a failover to an empty
// replica. Run Redis with maxmemory-policy noeviction: an evicted job is a
// late delivery, an evicted marker a needless full requeue.
//
// Keys, per shard N (0 ≤ N < Options.Shards):
//
//	<Prefix>:{qN}:ready      stream: ready and in-flight jobs; one field "j"
//	                         holding the encoded Job; consumer group Options.Group
//	<Prefix>:{qN}:scheduled  sorted set: jobs due later; member the encoded Job,
//	                         score its not-before time in unix milliseconds
//	<Prefix>:{qN}:intact     string: set by MarkIntact once the queue was
//	                         rebuilt from PostgreSQL; its absence (Intact) says
//	                         Redis lost data since
//
// A Job is encoded as "<attempt> <domain> <message id>", e.g.
// "0 example.net 0193c7e0-…": a queued job costs about 75 bytes of Redis
// memory. The same job scheduled twice is one member, so it runs once.
//
// Both keys of a shard share the hash tag {qN}, so each MULTI and Lua script
// touches one Redis Cluster slot. A job lives in shard
// fnv32a(MessageID) % Shards and its retries stay there; changing Shards
// strands jobs in the shards that go away until they are requeued.
//
// A job's life: Enqueue puts it in the stream (ready) or the sorted set
// (scheduled); PromoteDue moves due members to the stream; Claim hands it to
// one worker (XREADGROUP) or takes it back from a worker that went quiet for
// VisibilityTimeout (XAUTOCLAIM); Extend renews the worker's lease; Ack ends
// it, Retry schedules the next attempt. Both delete the stream entry, so the
// stream holds only ready and in-flight jobs and never needs trimming.
//
// Every worker process joins the group under its own consumer name;
// PruneConsumers removes names that went quiet holding nothing.
//
// Delivery is at least once: a worker that stalls past VisibilityTimeout
// loses the job to another worker, and Extend then reports ErrLost.
package queue
