-- 0012_keys_cancel: API key scopes, operator keys, last use; canceled
-- recipients and messages.
--
-- Scopes: send (POST /v1/messages), read (messages, events, suppressions,
-- webhook reads), manage (webhook and suppression writes, keys, domains).
-- Every key made before this migration keeps all three, so nothing that
-- worked stops working. An admin key (operator) belongs to no sending
-- tenant of its own choosing: it manages tenants and every tenant's keys.
ALTER TABLE api_keys
    ADD COLUMN scopes       text[] NOT NULL DEFAULT '{send,read,manage}'
        CHECK (scopes <@ '{send,read,manage}'::text[]),
    ADD COLUMN admin        boolean NOT NULL DEFAULT false,
    -- Written at most once a minute per key per process (store.KeyCache),
    -- never per request: a minute's precision is what an operator needs to
    -- tell a live key from a dead one.
    ADD COLUMN last_used_at timestamptz;

COMMENT ON COLUMN api_keys.scopes IS 'What the key may do: send, read, manage.';
COMMENT ON COLUMN api_keys.admin IS 'Operator key: manages tenants and the keys of every tenant.';
COMMENT ON COLUMN api_keys.last_used_at IS 'Last authenticated use, to the minute at best.';

-- The keycache NOTIFY trigger of 0004 fires on every UPDATE; last use is
-- not a change a cache must hear about, so the trigger now ignores an
-- update that changes nothing else.
DROP TRIGGER api_keys_notify ON api_keys;
CREATE TRIGGER api_keys_notify
    AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN ((to_jsonb(OLD) - 'last_used_at') IS DISTINCT FROM (to_jsonb(NEW) - 'last_used_at'))
    EXECUTE FUNCTION mailferry_api_keys_notify();
CREATE TRIGGER api_keys_notify_delete
    AFTER DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION mailferry_api_keys_notify();

-- DELETE /v1/messages/{id}: a recipient still queued or deferred becomes
-- canceled; a message whose recipients are all canceled is canceled.
ALTER TABLE recipients DROP CONSTRAINT recipients_status_check;
ALTER TABLE recipients ADD CONSTRAINT recipients_status_check
    CHECK (status IN ('queued', 'deferred', 'delivered', 'bounced', 'suppressed', 'canceled'));

-- A recipient in an SMTP transaction when the cancel came is left to
-- finish; should that attempt defer, the recipient is canceled then
-- (store.RecordOutcomes), not retried.
ALTER TABLE messages ADD COLUMN cancel_requested_at timestamptz;
COMMENT ON COLUMN messages.cancel_requested_at IS 'When DELETE /v1/messages/{id} was asked; a later deferral of an in-flight recipient cancels it.';

ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check
    CHECK (status IN ('pending', 'delivered', 'partially_delivered', 'bounced', 'canceled'));

-- A key without the send scope (an operator's, a read-only dashboard's)
-- needs no sender domain.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_domains_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_domains_check
    CHECK (cardinality(domains) > 0 OR NOT ('send' = ANY (scopes)));
