-- 0005_parked_jobs: jobs taken out of delivery, with the reason.
--
-- A job (one message to one recipient domain) that keeps failing in a way
-- retrying cannot cure (a delivery that panics, a write that can never
-- succeed) is parked here instead of looping through the workers. Its
-- recipients stay queued or deferred, so the message stays pending and
-- visible; workers drop the job and the reconciler does not requeue it.
-- Deleting the row (store.UnparkJob) and requeueing undoes it.
CREATE TABLE parked_jobs (
    message_id uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    domain     text NOT NULL,
    failures   integer NOT NULL DEFAULT 0, -- counted across workers and restarts
    last_error text,
    parked_at  timestamptz, -- NULL: failures counted, not parked (yet)
    reason     text,        -- why it was parked, for operators
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, domain)
);

COMMENT ON TABLE parked_jobs IS 'Jobs (message, recipient domain) failing repeatedly; parked_at set: taken out of delivery until the row is deleted.';

-- The reconciler's sweep walks the pending jobs in (message, domain) order
-- a page at a time; this index makes each page cost its size, not the
-- backlog's.
CREATE INDEX recipients_pending_job_idx ON recipients (message_id, domain)
    WHERE status IN ('queued', 'deferred');
