-- 0009_tls: outbound TLS policy (issue 16).

-- MTA-STS policies (RFC 8461 3.2), one per recipient domain, shared by every
-- worker so that a policy is fetched once for the fleet, not once per
-- process. expires_at is fetched_at + max_age (RFC 8461 5.1).
CREATE TABLE mta_sts_policies (
    domain     text PRIMARY KEY,
    policy_id  text NOT NULL,          -- the id of the TXT record it was fetched under (RFC 8461 3.1)
    mode       text NOT NULL CHECK (mode IN ('enforce', 'testing', 'none')),
    mx         text[] NOT NULL,
    max_age    bigint NOT NULL,        -- seconds
    fetched_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    checked_at timestamptz NOT NULL    -- the last refresh that found it current
);

-- The TLS policy each attempt ran under (none, mta-sts, dane, requiretls),
-- when the policy ruled hosts out the TLS-RPT result type (RFC 8460 4.3) of
-- the failure, and whether "TLS-Required: No" (RFC 8689 5) set policies
-- aside.
ALTER TABLE attempts ADD COLUMN tls_policy text, ADD COLUMN tls_failure text,
    ADD COLUMN tls_opt_out boolean NOT NULL DEFAULT false;
ALTER TABLE recipients ADD COLUMN tls_policy text, ADD COLUMN tls_verified boolean;

-- REQUIRETLS (RFC 8689) asked for by the sender, API or SMTP.
ALTER TABLE messages ADD COLUMN require_tls boolean NOT NULL DEFAULT false;

-- TLS-RPT (RFC 8460 4.4) counts per UTC day, policy domain, policy and
-- result type ('' for a success), fleet-wide.
CREATE TABLE tlsrpt_counts (
    day           date NOT NULL,
    policy_domain text NOT NULL,
    policy_type   text NOT NULL,       -- sts, tlsa, no-policy-found (RFC 8460 4.4)
    mx_host       text NOT NULL,
    result_type   text NOT NULL,
    count         bigint NOT NULL,
    PRIMARY KEY (day, policy_domain, policy_type, mx_host, result_type)
);

-- One TLS-RPT report per UTC day and policy domain for the whole fleet:
-- the process that inserts the row sends it (RFC 8460 4.1: one report per
-- 24-hour period).
CREATE TABLE tlsrpt_sent (
    day           date NOT NULL,
    policy_domain text NOT NULL,
    sent_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, policy_domain)
);
