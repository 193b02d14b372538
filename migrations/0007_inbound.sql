-- 0007_inbound: a lease on an inbound report while one process works on
-- it, so that several inbound processes share the pending rows and a
-- process that dies mid-way leaves its rows to the others once the lease
-- lapses (FOR UPDATE SKIP LOCKED alone holds only for one transaction).
ALTER TABLE inbound_messages ADD COLUMN lease_until timestamptz;

-- A report applied twice (its lease lapsed while the first process was
-- still at it) adds no second event: one per report, recipient and type.
CREATE UNIQUE INDEX recipient_events_inbound_idx ON recipient_events (inbound_id, message_id, rcpt_idx, type)
    WHERE inbound_id IS NOT NULL;
