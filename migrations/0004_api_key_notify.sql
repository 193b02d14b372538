-- 0004_api_key_notify: API processes hear at once when a key changes.
--
-- Each API process caches the keys it has verified, for a few seconds at
-- most (store.KeyCache), and LISTENs on the channel mailferry_api_keys.
-- Every change to api_keys (a revocation, an edit, a delete) NOTIFYs that
-- channel with the key id, and every listening process flushes its cache:
-- a revoked key is refused within milliseconds everywhere. PostgreSQL
-- delivers a NOTIFY when, and only if, its transaction commits.
CREATE FUNCTION mailferry_api_keys_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        PERFORM pg_notify('mailferry_api_keys', OLD.id);
    ELSE
        PERFORM pg_notify('mailferry_api_keys', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_notify
    AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION mailferry_api_keys_notify();

CREATE TRIGGER api_keys_notify_truncate
    AFTER TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION mailferry_api_keys_notify();

COMMENT ON FUNCTION mailferry_api_keys_notify() IS 'NOTIFY mailferry_api_keys with the key id on any change to api_keys, so API processes flush their key caches.';
