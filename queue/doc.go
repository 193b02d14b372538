// Package queue is Mailferry's work list in Redis: which deliveries (one
// message to one recipient domain) are due now, which are due later, and
// which a worker holds; and how many SMTP transactions the fleet has in
// flight to each destination.
//
// # Scheduling by destination
//
// The unit of scheduling is the destination, the next hop: the smarthost,
// or the first MX host of the recipient domain (relay's destinationOf), so
// domains that share MX hosts share one. Intake cannot know it (it takes
// DNS), so jobs are queued by message, and a worker routes each job it
// claims. The design follows Postfix's queue manager and KumoMTA's
// scheduled and ready queues, both of which hold the mail of a busy
// destination in memory in the process that will deliver it:
//
//   - A worker claims only what it can start: up to its free delivery
//     slots (relay WorkerOptions.Concurrency) less the jobs it holds that
//     are not waiting for a destination, and never more than ActiveLimit
//     jobs in all.
//   - It routes each job and parks it in memory, in arrival order, on the
//     job's destination (relay/slots.go). The job stays claimed: it is in
//     its shard's pending entries list under the worker's consumer name,
//     and the worker renews all parked claims together (Hold: one script
//     call per shard and heartbeat for up to 500 of them). No job is
//     written back to Redis because its destination is busy (Counts shows
//     every Retry), and a parked job holds no delivery slot, so a busy
//     destination never stops the worker claiming mail for a free one.
//   - A parked job starts when the fleet has a transaction free for its
//     destination: Leases (dest.go) is a sorted set of leases with their
//     expiry per destination, acquired, renewed and released by Lua
//     scripts in the destination's own hash tag {d:<name>}. The limit the
//     destination has earned is stored beside them and shared: it starts
//     at 2, grows by one per quick healthy transaction up to the cap (32;
//     MAILFERRY_SMARTHOST_CONNECTIONS for the smarthost) and halves on a
//     slow transaction, no host reached, or 421. A release hands its slot
//     to the next parked job in the same call; other workers' releases are
//     seen by polling, at most every second while refused.
//
// Redis commands per message stay O(1): one share of a batched claim, one
// release (with handoff), one ack; the heartbeats are per worker, not per
// job. Why not per-destination lists in Redis: a job's destination is
// known only after a DNS lookup, and the routed copy would need its own
// claim, reclaim and walk for queue.Jobs; holding the routed job in the
// claiming worker keeps the stream and its pending entries list the only
// place a job is, which every guarantee below already covers. The cost is
// that a destination's backlog larger than the fleet's ActiveLimit blocks
// the claims behind it until it drains, as Postfix's active queue limit
// does.
//
// Guarantees kept: a worker killed with jobs parked leaves them pending;
// another worker reclaims them after VisibilityTimeout, and its leases
// lapse within their TTL (the recipient lease's length). Parked jobs never
// began a transaction, so they add no duplicates. After a FLUSHALL the
// parked claims are lost (Hold reports them, the worker drops them) and the
// reconciler requeues from PostgreSQL; lost leases only reset the limits.
// queue.Jobs sees parked jobs, since they are stream entries.
//
// # The work list
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
//	<Prefix>:{qN}:rebuild    string: the token of the rebuild in progress
//	                         (StartRebuild); MarkIntact marks a shard only if
//	                         it is still there
//
// and per destination the lease keys described in dest.go.
//
// A Job is encoded as "<attempt> <domain> <message id>", e.g.
// "0 example.net 0193c7e0-…": a queued job costs about 75 bytes of Redis
// memory. The same job scheduled twice is one member, so it runs once.
//
// Both keys of a shard share the hash tag {qN}, so each MULTI and Lua script
// touches one Redis Cluster slot; the package's tests run on a real cluster
// as well as one server (testenv.EachRedis), where a script over two slots
// is refused. Commands over several shards (Intact, Depth) are pipelines,
// which go-redis splits by node. A job lives in shard
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
