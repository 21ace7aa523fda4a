-- Per-webhook delivery policy and the delivery audit (docs/contract.md,
-- "Delivery policy" and "Delivery audit").

-- Rate limit: at most rate_limit_per_s requests per second to the webhook,
-- across every worker replica, with bursts of up to rate_burst (NULL: the
-- rate, rounded up). NULL rate: unlimited.
ALTER TABLE webhooks ADD COLUMN rate_limit_per_s double precision;
ALTER TABLE webhooks ADD COLUMN rate_burst integer;
ALTER TABLE webhooks ADD CONSTRAINT webhooks_rate_limit
    CHECK ((rate_limit_per_s IS NULL OR (rate_limit_per_s > 0 AND rate_limit_per_s <= 100000))
           AND (rate_burst IS NULL OR (rate_limit_per_s IS NOT NULL AND rate_burst BETWEEN 1 AND 100000)));

-- Ordered delivery: one event at a time, in stream order. ordered_since is
-- when it was switched on: events published from then on are delivered in
-- order, earlier ones as they were.
ALTER TABLE webhooks ADD COLUMN ordered boolean NOT NULL DEFAULT false;
ALTER TABLE webhooks ADD COLUMN ordered_since timestamptz;
ALTER TABLE webhooks ADD CONSTRAINT webhooks_ordered CHECK (ordered = (ordered_since IS NOT NULL));

-- Circuit breaker: per-webhook overrides of the worker's settings (NULL:
-- the worker's).
ALTER TABLE webhooks ADD COLUMN circuit_threshold integer;
ALTER TABLE webhooks ADD COLUMN circuit_cooldown_s integer;
ALTER TABLE webhooks ADD CONSTRAINT webhooks_circuit
    CHECK ((circuit_threshold IS NULL OR circuit_threshold BETWEEN 1 AND 1000000)
           AND (circuit_cooldown_s IS NULL OR circuit_cooldown_s BETWEEN 1 AND 604800));

-- The circuit's state (closed, open or half_open, since when) and the
-- failed attempts since the last success, moved by the recorder in the
-- same transaction as the attempts that move them. No row: closed.
CREATE TABLE webhook_circuit (
    webhook_id           INTEGER PRIMARY KEY REFERENCES webhooks (id) ON DELETE CASCADE,
    state                VARCHAR(20) NOT NULL DEFAULT 'closed'
                         CHECK (state IN ('closed', 'open', 'half_open')),
    since                TIMESTAMPTZ NOT NULL,
    consecutive_failures INTEGER NOT NULL DEFAULT 0
);

-- The shared rate limiter (GCRA): tat is the theoretical arrival time of
-- the next request; tail is where the next held delivery is queued.
CREATE TABLE webhook_rate (
    webhook_id INTEGER PRIMARY KEY REFERENCES webhooks (id) ON DELETE CASCADE,
    tat        TIMESTAMPTZ NOT NULL,
    tail       TIMESTAMPTZ NOT NULL
);

-- Takes one request of a rate-limited webhook from the shared limiter:
-- period = 1 / rate (seconds), burst, horizon (seconds). go: the request may
-- be sent after wait_s seconds (the limiter's slot for it, never more than
-- horizon away). Otherwise the delivery is held: due is when it should be
-- tried again, each held delivery queued one period after the one before.
-- One call is one transaction on the webhook's row, so every replica sees
-- the same limiter and no window of any length holds more than
-- burst + length × rate requests.
CREATE FUNCTION webhook_rate_take(wid INTEGER, period DOUBLE PRECISION, burst INTEGER,
    horizon DOUBLE PRECISION, OUT go BOOLEAN, OUT wait_s DOUBLE PRECISION, OUT due TIMESTAMPTZ)
LANGUAGE plpgsql AS $$
DECLARE
    t INTERVAL := make_interval(secs => period);
    h INTERVAL := make_interval(secs => horizon);
    r webhook_rate%ROWTYPE;
    now_ts TIMESTAMPTZ;
    base TIMESTAMPTZ;
    slot TIMESTAMPTZ;
BEGIN
    -- Every delivery of the webhook takes this row's lock in turn: its
    -- commit does not wait for the WAL flush, so the lock is held for
    -- microseconds, not a disk write. A database crash may forget the last
    -- few takes (a burst over the limit once, after a crash).
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO webhook_rate (webhook_id, tat, tail)
        VALUES (wid, '-infinity', '-infinity') ON CONFLICT DO NOTHING;
    SELECT * INTO r FROM webhook_rate WHERE webhook_id = wid FOR UPDATE;
    now_ts := clock_timestamp();
    base := GREATEST(r.tat, now_ts);
    slot := base - (burst - 1) * t;
    IF slot <= now_ts + h THEN
        go := true;
        wait_s := GREATEST(EXTRACT(EPOCH FROM slot - now_ts)::double precision, 0);
        due := GREATEST(slot, now_ts);
        UPDATE webhook_rate SET tat = base + t WHERE webhook_id = wid;
    ELSE
        go := false;
        wait_s := 0;
        due := GREATEST(r.tail, slot - h, now_ts) + t;
        UPDATE webhook_rate SET tail = due WHERE webhook_id = wid;
    END IF;
END
$$;

-- Why a pending row waits without having been attempted: 'rate_limit',
-- 'circuit' or 'busy' (NULL: a scheduled retry, or a manual one).
ALTER TABLE webhook_deliveries ADD COLUMN held varchar(20);

-- Every event the worker processed: when, and which webhooks it matched
-- (matched: they get deliveries; filtered: their payload filter refused
-- it). Partitioned by day like webhook_deliveries, and dropped with it.
CREATE TABLE delivery_events (
    event_id     VARCHAR(64) NOT NULL,
    event_type   VARCHAR(50) NOT NULL,
    stream_seq   BIGINT      NOT NULL,
    published_at TIMESTAMPTZ NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL,
    matched      INTEGER[]   NOT NULL,
    filtered     INTEGER[]   NOT NULL
) PARTITION BY RANGE (processed_at);
CREATE INDEX ix_delivery_events_event ON delivery_events (event_id);
CREATE INDEX ix_delivery_events_time ON delivery_events (processed_at, event_id);
CREATE INDEX ix_delivery_events_type_time ON delivery_events (event_type, processed_at, event_id);

-- Final failures and pending rows by time, for the audit's state filters.
CREATE INDEX ix_webhook_deliveries_final_failures ON webhook_deliveries (created_at)
    WHERE status = 'failed' AND next_retry_at IS NULL;

CREATE OR REPLACE FUNCTION webhook_deliveries_ensure_partitions(first_day DATE, last_day DATE)
RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    d DATE;
    part TEXT;
    created INTEGER := 0;
    parent TEXT;
BEGIN
    -- One creator at a time, so replicas racing at start cannot collide.
    PERFORM pg_advisory_xact_lock(7263540001);
    FOR d IN SELECT generate_series(first_day, last_day, INTERVAL '1 day')::date LOOP
        FOREACH parent IN ARRAY ARRAY['webhook_deliveries', 'delivery_events'] LOOP
            part := parent || '_p' || to_char(d, 'YYYYMMDD');
            IF to_regclass(part) IS NULL THEN
                EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS)', part, parent);
                EXECUTE format(
                    'ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                    parent, part, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
                IF parent = 'webhook_deliveries' THEN
                    created := created + 1;
                END IF;
            END IF;
        END LOOP;
    END LOOP;
    RETURN created;
END
$$;

-- The days that have delivery partitions get event partitions too.
SELECT webhook_deliveries_ensure_partitions(
    COALESCE((SELECT min(to_date(substr(c.relname, 21), 'YYYYMMDD')) FROM pg_inherits i
              JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'webhook_deliveries'::regclass), current_date),
    GREATEST((SELECT max(to_date(substr(c.relname, 21), 'YYYYMMDD')) FROM pg_inherits i
              JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'webhook_deliveries'::regclass), current_date));
