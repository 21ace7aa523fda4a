-- bedolaga-events transactional outbox (issue 14), for the bot's database.
--
-- The bot inserts one row per event, in the transaction of the change the
-- event describes or, after its own commit, in a transaction of its own;
-- `outbox-relay` publishes committed rows to JetStream in id order and
-- deletes them once JetStream has stored them. A rolled-back transaction
-- leaves no row, so it publishes nothing.
--
-- Safe to run more than once, and it upgrades what an earlier version of
-- this script created: every statement is idempotent. Apply it with
-- `psql -f`, from an Alembic migration (op.execute), with
-- `bedolaga_events.outbox.install_outbox(conn)` or `outbox-relay migrate`.
--
-- History:
-- - issue 14: the table, with `envelope jsonb`.
-- - issue 23: `envelope json`. json keeps the text as the bot wrote it
--   (key order, spacing, raw UTF-8) and the relay publishes `envelope::text`,
--   so a receiver gets the payload's keys in the bot's order; jsonb sorted
--   them. An existing jsonb column is converted below (rows already in it
--   keep jsonb's order).

CREATE TABLE IF NOT EXISTS event_outbox (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The full envelope {"id","type","timestamp","payload"} (SPEC section 4),
    -- as the text the bot serialised.
    envelope   JSON NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Nats-Msg-Id is the envelope id: 1 to 64 characters.
    -- (A CHECK that yields NULL passes, hence the coalesce: a missing
    -- field must fail.)
    CONSTRAINT event_outbox_id_ok CHECK (coalesce(
        json_typeof(envelope -> 'id') = 'string'
        AND length(envelope ->> 'id') BETWEEN 1 AND 64, false)),
    -- The type becomes the subject events.<type>: dot-separated tokens only.
    CONSTRAINT event_outbox_type_ok CHECK (coalesce(
        (envelope ->> 'type') ~ '^[a-z0-9_]+(\.[a-z0-9_]+)+$', false)),
    CONSTRAINT event_outbox_timestamp_ok CHECK (coalesce(json_typeof(envelope -> 'timestamp') = 'string', false)),
    CONSTRAINT event_outbox_payload_ok CHECK (coalesce(json_typeof(envelope -> 'payload') = 'object', false))
);

-- Upgrade: an outbox created with `envelope jsonb` becomes json. The
-- checks name jsonb functions, so they are dropped and added again around
-- the type change. The table is rewritten under an ACCESS EXCLUSIVE lock;
-- an outbox holds few rows, so this takes milliseconds. Skipped once the
-- column is json.
DO $$
BEGIN
    IF (SELECT atttypid FROM pg_attribute
         WHERE attrelid = 'event_outbox'::regclass AND attname = 'envelope'
           AND NOT attisdropped) = 'jsonb'::regtype THEN
        LOCK TABLE event_outbox IN ACCESS EXCLUSIVE MODE;
        ALTER TABLE event_outbox
            DROP CONSTRAINT IF EXISTS event_outbox_id_ok,
            DROP CONSTRAINT IF EXISTS event_outbox_type_ok,
            DROP CONSTRAINT IF EXISTS event_outbox_timestamp_ok,
            DROP CONSTRAINT IF EXISTS event_outbox_payload_ok;
        ALTER TABLE event_outbox ALTER COLUMN envelope TYPE json USING envelope::json;
        ALTER TABLE event_outbox
            ADD CONSTRAINT event_outbox_id_ok CHECK (coalesce(
                json_typeof(envelope -> 'id') = 'string'
                AND length(envelope ->> 'id') BETWEEN 1 AND 64, false)),
            ADD CONSTRAINT event_outbox_type_ok CHECK (coalesce(
                (envelope ->> 'type') ~ '^[a-z0-9_]+(\.[a-z0-9_]+)+$', false)),
            ADD CONSTRAINT event_outbox_timestamp_ok CHECK (coalesce(json_typeof(envelope -> 'timestamp') = 'string', false)),
            ADD CONSTRAINT event_outbox_payload_ok CHECK (coalesce(json_typeof(envelope -> 'payload') = 'object', false));
    END IF;
END
$$;

-- A queue table: rows live for milliseconds. Vacuum after a fixed number of
-- dead rows rather than a fraction of a table that is almost always empty,
-- so the relay's index scan does not wade through dead entries.
ALTER TABLE event_outbox SET (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 10000
);

-- Wakes the relay (LISTEN event_outbox) when a transaction that inserted
-- rows commits; NOTIFY is delivered only on commit. One notice per
-- statement: PostgreSQL folds identical notices of one transaction anyway.
CREATE OR REPLACE FUNCTION event_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('event_outbox', '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS event_outbox_notify ON event_outbox;
CREATE TRIGGER event_outbox_notify
    AFTER INSERT ON event_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION event_outbox_notify();
