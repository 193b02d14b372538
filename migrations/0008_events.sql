-- 0008_events: the events outbox, webhook endpoints and their deliveries.
--
-- Retention:
--   events              MAILFERRY_EVENT_RETENTION (720h); store.PurgeEvents
--                       deletes older rows, their deliveries with them.
--   webhook_endpoints   kept until deleted (DELETE /v1/webhooks/{id}).
--   webhook_deliveries  live and die with their event or endpoint.
--   webhook_attempts    live and die with their delivery.

-- The feed of things that happened, written in the transaction of the
-- change it describes (store.QueueEvents). Its order is (xid, id): xid is
-- the writing transaction, and a reader shows only rows whose transaction
-- is older than every transaction still running
-- (pg_snapshot_xmin(pg_current_snapshot())). A plain sequence would not
-- do: ids are taken before commit, so a reader could pass id 6 while the
-- transaction holding id 5 is still open, and never see 5.
CREATE TABLE events (
    id         uuid PRIMARY KEY, -- store.EventID (name-based) or v7; the payload's "id" and the webhook-id header
    pos        bigint GENERATED ALWAYS AS IDENTITY, -- order within one transaction
    xid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    tenant_id  text NOT NULL REFERENCES tenants (id),
    type       text NOT NULL CHECK (type IN ('message.accepted', 'message.scheduled', 'message.delivered',
        'message.deferred', 'message.bounced', 'message.suppressed', 'message.expired', 'message.complained',
        'message.canceled', 'domain.verified', 'domain.failed')),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- No foreign key to messages: events outlive nothing they describe
    -- (retention is shorter than the ledger's), and a key would make every
    -- insert check the messages table.
    message_id uuid,     -- NULL for domain events
    rcpt_idx   smallint, -- NULL for events of no one recipient
    sequence   integer,  -- per recipient, 1, 2, 3… (recipients.event_seq)
    data       jsonb NOT NULL, -- the payload's "data", as sent
    -- An event of a message names its recipient and number; a missing
    -- recipient fails the insert, and with it the change it came with.
    CHECK (message_id IS NULL OR (rcpt_idx IS NOT NULL AND sequence IS NOT NULL))
);

CREATE INDEX events_feed_idx ON events (tenant_id, xid, pos);
CREATE INDEX events_created_idx ON events (created_at);
CREATE INDEX events_tenant_created_idx ON events (tenant_id, created_at);

COMMENT ON TABLE events IS 'Events outbox: written with the change they describe; the pull feed and webhooks read it. Kept MAILFERRY_EVENT_RETENTION.';

-- The per-recipient event counter: taking the next numbers is an UPDATE of
-- the recipient's row, so two transactions that change one recipient get
-- distinct, ordered sequence numbers.
ALTER TABLE recipients ADD COLUMN event_seq integer NOT NULL DEFAULT 0;

CREATE TABLE webhook_endpoints (
    id              uuid PRIMARY KEY,
    tenant_id       text NOT NULL REFERENCES tenants (id),
    url             text NOT NULL,
    events          text[] NOT NULL CHECK (cardinality(events) > 0),
    description     text NOT NULL DEFAULT '',
    -- HMAC keys (the bytes behind whsec_…), sealed under
    -- MAILFERRY_SECRET_KEY as DKIM keys are (store.Options.Secrets):
    -- signing needs them back, a hash would not do.
    secret          bytea NOT NULL CHECK (length(secret) >= 24),
    -- After a rotation the old secret signs too until previous_expires_at.
    previous_secret     bytea,
    previous_expires_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz,
    disabled_reason text,
    failing_since   timestamptz -- first failure since the last success; NULL when healthy
);

CREATE INDEX webhook_endpoints_tenant_idx ON webhook_endpoints (tenant_id, created_at);

COMMENT ON TABLE webhook_endpoints IS 'Webhook receivers per tenant; an event fans out to every enabled one subscribed to its type.';

-- One row per event to send to one endpoint (a replay adds another).
CREATE TABLE webhook_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id        uuid NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    -- Copied from the event for per-recipient ordering without a join.
    message_id      uuid,
    rcpt_idx        smallint,
    sequence        integer,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- A sender holds a delivery while it sends; a lapsed lease (the sender
    -- died) lets another take it.
    lease_owner     text,
    lease_until     timestamptz,
    last_status     integer,  -- HTTP status of the latest attempt; NULL: no answer
    last_latency_ms integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- What senders claim: small, since delivered and failed rows leave it.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
-- Per-recipient order: is an earlier event of this recipient still pending
-- for this endpoint?
CREATE INDEX webhook_deliveries_order_idx ON webhook_deliveries (endpoint_id, message_id, rcpt_idx, sequence)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, id);

COMMENT ON TABLE webhook_deliveries IS 'Events to send per endpoint, with their state; deleted with the event (retention) or the endpoint.';

-- Every HTTP attempt, for GET /v1/webhooks/{id}/deliveries.
CREATE TABLE webhook_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    endpoint_id uuid NOT NULL, -- for paging one endpoint's history without a join
    attempt     integer NOT NULL CHECK (attempt >= 1),
    started_at  timestamptz NOT NULL,
    status_code integer, -- NULL: no HTTP answer (refused, timeout)
    latency_ms  integer NOT NULL CHECK (latency_ms >= 0),
    error       text,
    outcome     text NOT NULL CHECK (outcome IN ('delivered', 'retry', 'failed'))
);

CREATE INDEX webhook_attempts_endpoint_idx ON webhook_attempts (endpoint_id, id);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id);

COMMENT ON TABLE webhook_attempts IS 'HTTP attempts of webhook deliveries; deleted with their delivery.';
