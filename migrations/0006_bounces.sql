-- 0006_bounces: one failure taxonomy, asynchronous reports (DSNs and
-- complaints) and per-tenant suppression lists.
--
-- Retention:
--   suppressions      kept until removed or expired (expires_at).
--   soft_bounces      one row per address with a run of soft failures;
--                     deleted on a delivery to it.
--   inbound_messages  reports as received; kept for operators
--                     (`mailferry inbound list`).
--   recipient_events  live and die with their message.

-- Every failed recipient carries its class; a suppressed one its reason.
-- bounce_async: the latest failure came as a report after the SMTP session.
ALTER TABLE recipients
    ADD COLUMN bounce_type text CHECK (bounce_type IN ('hard', 'soft')),
    ADD COLUMN bounce_class text CHECK (bounce_class IN ('invalid_recipient', 'mailbox_full',
        'message_too_large', 'content_rejected', 'spam_block', 'policy', 'auth_failure', 'rate_limited',
        'dns_failure', 'tls_failure', 'connection_failure', 'protocol_error', 'expired', 'suppressed', 'other')),
    ADD COLUMN bounce_async boolean NOT NULL DEFAULT false,
    ADD COLUMN suppressed_reason text
        CHECK (suppressed_reason IN ('hard_bounce', 'complaint', 'soft_bounce_limit', 'manual'));

COMMENT ON COLUMN recipients.bounce_class IS 'Class of the latest failure (package bounce); NULL when none failed.';
COMMENT ON COLUMN recipients.suppressed_reason IS 'Why the address was on the suppression list when the message was accepted.';

-- The attempt rows carry the class of their failure too (NULL for a delivery).
ALTER TABLE attempts
    ADD COLUMN bounce_type text,
    ADD COLUMN bounce_class text;

-- An ARF complaint or a report without a return path is traced back to the
-- message by its RFC 5322 Message-ID.
CREATE INDEX messages_message_id_idx ON messages (message_id);

CREATE TABLE suppressions (
    tenant_id  text NOT NULL REFERENCES tenants (id),
    -- local part as written, domain in lower case (mail.Address's form):
    -- RFC 5321 2.4, a local part may be case-sensitive, a domain is not.
    email      text NOT NULL,
    reason     text NOT NULL CHECK (reason IN ('hard_bounce', 'complaint', 'soft_bounce_limit', 'manual')),
    message_id uuid, -- the message whose failure or complaint added it; NULL when added by hand
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz, -- NULL: never
    PRIMARY KEY (tenant_id, email)
);

CREATE INDEX suppressions_reason_idx ON suppressions (tenant_id, reason, email);

COMMENT ON TABLE suppressions IS 'Addresses a tenant no longer sends to; a message to one is accepted with that recipient suppressed.';

CREATE TABLE soft_bounces (
    tenant_id       text NOT NULL REFERENCES tenants (id),
    email           text NOT NULL,
    failures        integer NOT NULL CHECK (failures > 0), -- consecutive, across messages
    last_message_id uuid NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, email)
);

COMMENT ON TABLE soft_bounces IS 'Runs of soft failures per address; MAILFERRY_SOFT_BOUNCE_LIMIT of them suppress it, a delivery ends the run.';

CREATE TABLE inbound_messages (
    id           uuid PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    remote_ip    inet,
    helo         text NOT NULL DEFAULT '',
    mail_from    text NOT NULL, -- usually <> (RFC 3464 2: a DSN has a null return path)
    rcpt_to      text[] NOT NULL,
    body         bytea NOT NULL,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'processed', 'unparseable', 'unmatched')),
    kind         text, -- dsn, arf or plain once parsed
    reason       text, -- why unparseable or unmatched
    tries        integer NOT NULL DEFAULT 0,
    processed_at timestamptz
);

CREATE INDEX inbound_messages_pending_idx ON inbound_messages (received_at) WHERE status = 'pending';

COMMENT ON TABLE inbound_messages IS 'DSNs and complaints as received by the inbound listener, stored before its 250 and processed after.';

-- Things that happened to a recipient after its SMTP session: an
-- asynchronous bounce, a delay report, a complaint, a suppression.
CREATE TABLE recipient_events (
    message_id    uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    rcpt_idx      smallint NOT NULL,
    at            timestamptz NOT NULL DEFAULT now(),
    type          text NOT NULL CHECK (type IN ('bounced', 'deferred', 'complained', 'suppressed')),
    async         boolean NOT NULL DEFAULT true,
    smtp_code     integer,
    enhanced_code text,
    response      text,    -- the report's diagnostic code or feedback type
    reporting_mta text,
    remote_mta    text,
    bounce_type   text,
    bounce_class  text,
    inbound_id    uuid REFERENCES inbound_messages (id) ON DELETE SET NULL
);

CREATE INDEX recipient_events_message_idx ON recipient_events (message_id, at);

COMMENT ON TABLE recipient_events IS 'Recipient events after the SMTP session (DSNs, complaints, suppressions); shown with the attempts.';
