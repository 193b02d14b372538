-- 0011_domains: sending domains a tenant onboards over the API, the last
-- DNS check of each, and the life of DKIM keys through rotation.

-- A domain belongs to one tenant: its DKIM keys (dkim_keys, by domain)
-- sign for whoever sends from it, so two tenants cannot share it.
CREATE TABLE domains (
    name        text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id),
    dkim_mode   text NOT NULL CHECK (dkim_mode IN ('delegated', 'direct')),
    -- pending: never verified; verified: the signing keys' records are
    -- published; failed: was verified, no longer is.
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'verified', 'failed')),
    records     jsonb NOT NULL DEFAULT '[]',
    checked_at  timestamptz,
    verified_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX domains_tenant_idx ON domains (tenant_id, name);
CREATE INDEX domains_checked_idx ON domains (checked_at NULLS FIRST);

COMMENT ON TABLE domains IS 'Sending domains (POST /v1/domains); records is the last DNS check, as GET /v1/domains/{name} shows it.';

-- A key's life: pending (made by a rotation, not signing until DNS shows
-- it), active (signing; active = true), retiring (no longer signing, still
-- published until retire_at), then its row is deleted. Keys made before
-- this migration are active.
ALTER TABLE dkim_keys
    ADD COLUMN state text NOT NULL DEFAULT 'active' CHECK (state IN ('pending', 'active', 'retiring')),
    ADD COLUMN retire_at timestamptz;

COMMENT ON COLUMN dkim_keys.state IS 'pending, active (signs; active is true) or retiring (published until retire_at, not signing).';
