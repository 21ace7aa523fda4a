-- Delivery history that scales (docs/architecture.md, "Delivery history"):
-- 64-bit ids and counters, daily partitions by created_at, and counters
-- kept with the rows so reads never count history.

-- Webhook counters: one bump per attempt overflows int4 at 10k/s in days.
ALTER TABLE webhooks
    ALTER COLUMN success_count TYPE BIGINT,
    ALTER COLUMN failure_count TYPE BIGINT;

-- The unpartitioned table steps aside; its id sequence is kept (and widened)
-- so ids go on where they were.
ALTER TABLE webhook_deliveries RENAME TO webhook_deliveries_unpartitioned;
ALTER TABLE webhook_deliveries_unpartitioned
    RENAME CONSTRAINT webhook_deliveries_pkey TO webhook_deliveries_unpartitioned_pkey;
ALTER TABLE webhook_deliveries_unpartitioned
    RENAME CONSTRAINT webhook_deliveries_webhook_id_fkey TO webhook_deliveries_unpartitioned_webhook_id_fkey;
ALTER SEQUENCE webhook_deliveries_id_seq OWNED BY NONE;
ALTER SEQUENCE webhook_deliveries_id_seq AS BIGINT;
DROP INDEX ix_webhook_deliveries_webhook_created;
DROP INDEX ix_webhook_deliveries_status;
DROP INDEX ix_webhook_deliveries_event_type;
DROP INDEX ix_webhook_deliveries_event;
DROP INDEX ix_webhook_deliveries_due;

CREATE TABLE webhook_deliveries (
    id              BIGINT       NOT NULL DEFAULT nextval('webhook_deliveries_id_seq'),
    webhook_id      INTEGER      NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_type      VARCHAR(50)  NOT NULL,
    payload         JSONB        NOT NULL,
    response_status INTEGER,
    response_body   TEXT,
    status          VARCHAR(20)  NOT NULL DEFAULT 'pending',
    error_message   TEXT,
    attempt_number  INTEGER      NOT NULL DEFAULT 1,
    created_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
    delivered_at    TIMESTAMPTZ,
    next_retry_at   TIMESTAMPTZ,
    event_id        VARCHAR(64),
    traceparent     VARCHAR(128),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
ALTER SEQUENCE webhook_deliveries_id_seq OWNED BY webhook_deliveries.id;

-- A webhook's history newest first, all of it or by status; both lead with
-- the webhook so neither reads another webhook's rows.
CREATE INDEX ix_webhook_deliveries_webhook_created
    ON webhook_deliveries (webhook_id, created_at DESC, id DESC);
CREATE INDEX ix_webhook_deliveries_webhook_status
    ON webhook_deliveries (webhook_id, status, created_at DESC, id DESC);
-- The attempts of one event (redelivered events, manual retries).
CREATE INDEX ix_webhook_deliveries_event ON webhook_deliveries (event_id, webhook_id);
-- The retry queue: a 'pending' row is an attempt due at next_retry_at.
CREATE INDEX ix_webhook_deliveries_due ON webhook_deliveries (next_retry_at)
    WHERE status = 'pending';

-- Creates the missing daily partitions for the UTC days first_day..last_day
-- and returns how many it created (storage::history). A partition is created as a plain table
-- and then attached: ATTACH takes a lock that lets inserts go on, where
-- CREATE TABLE ... PARTITION OF would stop them for a moment.
CREATE FUNCTION webhook_deliveries_ensure_partitions(first_day DATE, last_day DATE)
RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    d DATE;
    part TEXT;
    created INTEGER := 0;
BEGIN
    -- One creator at a time, so replicas racing at start cannot collide.
    PERFORM pg_advisory_xact_lock(7263540001);
    FOR d IN SELECT generate_series(first_day, last_day, INTERVAL '1 day')::date LOOP
        part := 'webhook_deliveries_p' || to_char(d, 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            EXECUTE format('CREATE TABLE %I (LIKE webhook_deliveries INCLUDING DEFAULTS)', part);
            EXECUTE format(
                'ALTER TABLE webhook_deliveries ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                part, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$$;

-- Rows per webhook, UTC day (= partition) and status, changed in the same
-- transaction as the rows. A list's total sums at most one row per day.
CREATE TABLE webhook_delivery_counts (
    webhook_id INTEGER     NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    day        DATE        NOT NULL,
    status     VARCHAR(20) NOT NULL,
    n          BIGINT      NOT NULL,
    PRIMARY KEY (webhook_id, day, status)
);
CREATE INDEX ix_webhook_delivery_counts_day ON webhook_delivery_counts (day);
-- The same summed over webhooks, for /webhooks/stats.
CREATE TABLE delivery_day_counts (
    day    DATE        NOT NULL,
    status VARCHAR(20) NOT NULL,
    n      BIGINT      NOT NULL,
    PRIMARY KEY (day, status)
);

-- Carry the rows over: partitions for the days that have rows and the week
-- ahead, then the rows, then their counts.
SELECT webhook_deliveries_ensure_partitions(day, day)
FROM (SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date AS day
      FROM webhook_deliveries_unpartitioned) AS days;
SELECT webhook_deliveries_ensure_partitions((now() AT TIME ZONE 'UTC')::date,
                                            (now() AT TIME ZONE 'UTC')::date + 7);
INSERT INTO webhook_deliveries (id, webhook_id, event_type, payload, response_status,
    response_body, status, error_message, attempt_number, created_at, delivered_at,
    next_retry_at, event_id, traceparent)
SELECT id, webhook_id, event_type, payload, response_status, response_body, status,
    error_message, attempt_number, created_at, delivered_at, next_retry_at, event_id,
    traceparent
FROM webhook_deliveries_unpartitioned;
INSERT INTO webhook_delivery_counts (webhook_id, day, status, n)
SELECT webhook_id, (created_at AT TIME ZONE 'UTC')::date, status, count(*)
FROM webhook_deliveries GROUP BY 1, 2, 3;
INSERT INTO delivery_day_counts (day, status, n)
SELECT day, status, sum(n) FROM webhook_delivery_counts GROUP BY 1, 2;
DROP TABLE webhook_deliveries_unpartitioned;
