-- 0001_init: the ledger. PostgreSQL is Mailferry's system of record; Redis
-- only lists work to do, and `mailferry requeue` rebuilds it from here.
--
-- Retention, table by table:
--   tenants, api_keys  kept; keys are revoked, never deleted, so old
--                      messages still name the key that sent them.
--   messages           kept as the ledger; body is set to NULL once every
--                      recipient is final, so only metadata stays.
--   recipients         live and die with their message (ON DELETE CASCADE).
--   attempts           monthly partitions, dropped whole by
--                      store.DropAttemptPartitionsBefore.
--   idempotency_keys   24 hours; store.PurgeIdempotency deletes older rows.

CREATE TABLE tenants (
    id         text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE tenants IS 'Senders whose data is kept apart. Rows are created with their first API key.';

CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id),
    -- sha256 of the whole secret. The secret has 256 random bits, so a fast
    -- hash is enough; the secret itself is shown once and never stored.
    secret_hash bytea NOT NULL CHECK (length(secret_hash) = 32),
    domains     text[] NOT NULL CHECK (cardinality(domains) > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id);

COMMENT ON TABLE api_keys IS 'API keys: kept after revocation so messages keep naming their key.';

CREATE TABLE messages (
    id           uuid PRIMARY KEY, -- uuid v7 from the caller: time-ordered, so inserts append to the index
    tenant_id    text NOT NULL REFERENCES tenants (id),
    -- NULL for mail that no key sent (none yet; SMTP submission may add it).
    api_key_id   text REFERENCES api_keys (id),
    ingress      text NOT NULL CHECK (ingress IN ('api', 'smtp')),
    message_id   text NOT NULL, -- RFC 5322 Message-ID without <>
    mail_from    text NOT NULL, -- envelope sender, RFC 5321 MAIL FROM
    from_header  text NOT NULL,
    subject      text NOT NULL,
    tags         text[] NOT NULL DEFAULT '{}',
    metadata     jsonb NOT NULL DEFAULT '{}',
    size         integer NOT NULL CHECK (size >= 0), -- bytes of body, kept after body is cleared
    body         bytea,
    send_at      timestamptz, -- NULL: send at once
    created_at   timestamptz NOT NULL,
    completed_at timestamptz -- set with body = NULL when every recipient is final
);

-- Bodies live only until every recipient is final (minutes, at most the
-- queue age), so compressing them spends CPU on the accept path to save
-- space that is freed soon anyway: in BenchmarkAcceptBatch (4 KB of text)
-- pglz cost about 40% of throughput and lz4 about 15%. EXTERNAL stores
-- them out of line, uncompressed.
ALTER TABLE messages ALTER COLUMN body SET STORAGE EXTERNAL;

CREATE INDEX messages_tenant_created_idx ON messages (tenant_id, created_at);

COMMENT ON TABLE messages IS 'Accepted messages, the ledger. Kept; body is set to NULL once every recipient is final.';
COMMENT ON COLUMN messages.body IS 'Whole RFC 5322 message; kept until every recipient is final, then NULL.';

CREATE TABLE recipients (
    message_id      uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    idx             smallint NOT NULL CHECK (idx >= 0), -- position in the envelope
    email           text NOT NULL,
    domain          text NOT NULL, -- lower case; one SMTP transaction per message and domain
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'deferred', 'delivered', 'bounced', 'suppressed')),
    -- The columns below summarise the latest attempt so that the status
    -- endpoint and requeue read one row instead of the attempts history.
    attempts        integer NOT NULL DEFAULT 0,
    last_attempt_at timestamptz,
    next_attempt_at timestamptz, -- NULL once final
    smtp_code       integer,
    enhanced_code   text,
    response        text,
    mx_host         text,
    tls_version     text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, idx)
);

-- Non-final recipients only: small however large the ledger grows, and what
-- `mailferry requeue` scans after Redis loses its data.
CREATE INDEX recipients_pending_idx ON recipients (next_attempt_at)
    WHERE status IN ('queued', 'deferred');

COMMENT ON TABLE recipients IS 'One row per envelope recipient with its current state; deleted with the message.';

-- Every SMTP attempt per recipient: the largest table by far, so it is
-- partitioned by month and old months are dropped whole (a DROP TABLE, not
-- a DELETE that bloats the table and the WAL).
--
-- No foreign key to messages, and none into it: a foreign key into a
-- partitioned table would need started_at in every referencing key, and one
-- out of it would make each COPY check messages row by row and make
-- dropping a month depend on the messages table. Rows are written only by
-- the delivery worker for messages it has just read.
CREATE TABLE attempts (
    message_id    uuid NOT NULL,
    rcpt_idx      smallint NOT NULL,
    attempt       integer NOT NULL CHECK (attempt >= 1),
    started_at    timestamptz NOT NULL,
    duration_ms   integer NOT NULL CHECK (duration_ms >= 0),
    mx_host       text,
    mx_ip         inet,
    tls_version   text,
    tls_cipher    text,
    tls_verified  boolean NOT NULL DEFAULT false,
    smtp_code     integer,
    enhanced_code text,
    response      text,
    outcome       text NOT NULL CHECK (outcome IN ('delivered', 'deferred', 'bounced'))
) PARTITION BY RANGE (started_at);

-- Catches rows for months whose partition does not exist yet, so an insert
-- never fails. store.EnsureAttemptPartitions creates months ahead of time
-- and moves any such rows out when it creates their month.
CREATE TABLE attempts_default PARTITION OF attempts DEFAULT;

CREATE INDEX attempts_message_idx ON attempts (message_id, started_at);

COMMENT ON TABLE attempts IS 'SMTP attempts. Monthly partitions attempts_yYYYYmMM, created ahead by EnsureAttemptPartitions and dropped by DropAttemptPartitionsBefore for retention.';
COMMENT ON TABLE attempts_default IS 'Attempts outside every monthly partition; should stay empty. EnsureAttemptPartitions moves rows out when it creates their month.';

CREATE TABLE idempotency_keys (
    tenant_id    text NOT NULL REFERENCES tenants (id),
    key          text NOT NULL,
    request_hash bytea NOT NULL,
    status       integer NOT NULL,
    -- bytea, not jsonb: a repeat must return the first answer byte for
    -- byte, and jsonb would reorder keys and whitespace.
    response     bytea NOT NULL,
    -- Deferred so the key can be claimed before the message is written:
    -- a repeat then writes no body at all. The cascade removes the key with
    -- an undone accept (store.DeleteMessages), so a retry sends again.
    message_id   uuid REFERENCES messages (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
CREATE INDEX idempotency_keys_message_idx ON idempotency_keys (message_id);

COMMENT ON TABLE idempotency_keys IS 'Idempotency-Key answers, kept 24 hours; PurgeIdempotency deletes older rows.';
