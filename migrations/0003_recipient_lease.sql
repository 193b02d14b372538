-- 0003_recipient_lease: at most one SMTP transaction per recipient at a time.
--
-- Redis may hold the same job twice (`mailferry requeue`, the reconciler
-- after Redis lost data, a lease that lapsed). Before dialling, a worker
-- takes a lease on the recipients it is about to attempt; a second worker
-- finds them leased and leaves them alone. The lease lives here, not in
-- Redis, because the duplicate jobs come precisely from Redis losing data.
ALTER TABLE recipients
    ADD COLUMN lease_owner text,       -- the holder's queue entry id; NULL when free
    ADD COLUMN lease_until timestamptz; -- renewed by the holder's heartbeat; expired = free

COMMENT ON COLUMN recipients.lease_owner IS 'Queue entry id of the job attempting this recipient now; NULL when no attempt runs.';
COMMENT ON COLUMN recipients.lease_until IS 'Until when lease_owner holds the recipient; a lapsed lease is free for any worker.';
