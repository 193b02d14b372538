-- 0002_delivery: what the delivery workers need.

-- The DKIM-Signature header(s) computed once per message and prepended on
-- every attempt, so retries and other domains' transactions send identical
-- bytes. NULL: not signed yet; '': looked for keys, found none (unsigned).
ALTER TABLE messages
    ADD COLUMN dkim_header text,
    ADD COLUMN needs_8bit boolean NOT NULL DEFAULT false,     -- RFC 6152 BODY=8BITMIME
    ADD COLUMN needs_smtputf8 boolean NOT NULL DEFAULT false; -- RFC 6531

COMMENT ON COLUMN messages.dkim_header IS 'DKIM-Signature fields prepended to body; NULL until signed, empty when the From domain has no key.';

-- DKIM signing keys. Private keys are sealed with AES-256-GCM under
-- MAILFERRY_SECRET_KEY when it is set (the blob says which).
CREATE TABLE dkim_keys (
    domain      text NOT NULL,
    selector    text NOT NULL,
    algorithm   text NOT NULL CHECK (algorithm IN ('rsa2048', 'ed25519')),
    private_key bytea NOT NULL,
    public_key  bytea NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain, selector)
);

COMMENT ON TABLE dkim_keys IS 'DKIM keys; every active key of the From domain signs (RSA and Ed25519 dual-signing).';
