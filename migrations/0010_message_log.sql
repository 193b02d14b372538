-- 0010_message_log: what GET /v1/messages filters and orders by, each on
-- an index that reads one page of rows however large the ledger grows.
-- (0009 is left to the TLS policy branch.)
--
-- Order: (created_at, id) newest first, within a tenant. Every filter has
-- an index that starts with the tenant, then the filter's value, then
-- that order, so a page is a bounded range scan, never a sort of all the
-- matches.
--
-- Retention: message_tags rows are deleted with their message (the ledger
-- is kept); the columns added to recipients die with their row.

-- No filter, since/until: replaces messages_tenant_created_idx, which
-- lacked the id that breaks ties between messages of the same instant.
CREATE INDEX messages_log_idx ON messages (tenant_id, created_at DESC, id DESC);
DROP INDEX messages_tenant_created_idx;

-- The message's status, stored so that it can be indexed: written at
-- accept (bounced when every recipient was suppressed), when the message
-- completes (store's completeMessage) and when a report changes a
-- recipient of a completed message (store's restatusMessage). It is what
-- GetMessage derives from the recipients (messageStatus). The backfill
-- below rewrites the completed messages once.
ALTER TABLE messages ADD COLUMN status text NOT NULL DEFAULT 'pending'
    CHECK (status IN ('pending', 'delivered', 'partially_delivered', 'bounced'));

UPDATE messages m SET status = s.status
FROM (
    SELECT message_id,
        CASE WHEN bool_or(status IN ('queued', 'deferred')) THEN 'pending'
             WHEN bool_and(status = 'delivered') THEN 'delivered'
             WHEN bool_or(status = 'delivered') THEN 'partially_delivered'
             ELSE 'bounced' END AS status
    FROM recipients GROUP BY message_id
) s
WHERE m.id = s.message_id AND m.completed_at IS NOT NULL AND s.status <> 'pending';

CREATE INDEX messages_log_status_idx ON messages (tenant_id, status, created_at DESC, id DESC);

COMMENT ON COLUMN messages.status IS 'pending until every recipient is final; then delivered, partially_delivered or bounced (as GET /v1/messages/{id} derives it).';

-- Tags: one row per (message, tag), written with the message at accept.
-- A GIN index on messages.tags would find the matches but not in order:
-- a popular tag would sort every message carrying it for each page. No
-- foreign key (its per-row check and the index on message_id it needs
-- would be paid on every accept): rows are written only with their
-- message, and store's deleteMessages deletes them with it, through this
-- key.
CREATE TABLE message_tags (
    tenant_id  text NOT NULL,
    tag        text NOT NULL,
    created_at timestamptz NOT NULL, -- the message's
    message_id uuid NOT NULL,
    PRIMARY KEY (tenant_id, tag, created_at, message_id)
);

INSERT INTO message_tags (tenant_id, tag, created_at, message_id)
SELECT DISTINCT m.tenant_id, t.tag, m.created_at, m.id FROM messages m, unnest(m.tags) AS t(tag);

COMMENT ON TABLE message_tags IS 'The tags of each message, keyed for GET /v1/messages?tag=; deleted with the message.';

-- Recipient: the tenant, the message's created_at and the address as
-- store.NormalizeEmail writes it (domain lower case; computed in Go, not by
-- a regular expression in an index on every insert) are copied onto the
-- recipient, so that one index serves (tenant, address) in log order.
-- Delivery's updates touch none of these columns.
ALTER TABLE recipients ADD COLUMN tenant_id text, ADD COLUMN created_at timestamptz, ADD COLUMN addr text;

UPDATE recipients r SET tenant_id = m.tenant_id, created_at = m.created_at,
    addr = substring(r.email from '^(.*)@') || '@' || lower(substring(r.email from '[^@]*$'))
FROM messages m WHERE m.id = r.message_id;

CREATE INDEX recipients_log_idx ON recipients (tenant_id, addr, created_at DESC, message_id DESC);
