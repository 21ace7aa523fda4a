-- Back to one unpartitioned table with int4 ids (fails if an id or a
-- counter no longer fits in int4).
ALTER TABLE webhook_deliveries RENAME TO webhook_deliveries_partitioned;
ALTER SEQUENCE webhook_deliveries_id_seq OWNED BY NONE;
DROP INDEX ix_webhook_deliveries_webhook_created;
DROP INDEX ix_webhook_deliveries_webhook_status;
DROP INDEX ix_webhook_deliveries_event;
DROP INDEX ix_webhook_deliveries_due;

CREATE TABLE webhook_deliveries (
    id              INTEGER      NOT NULL DEFAULT nextval('webhook_deliveries_id_seq') PRIMARY KEY,
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
    traceparent     VARCHAR(128)
);
INSERT INTO webhook_deliveries SELECT * FROM webhook_deliveries_partitioned;
DROP TABLE webhook_deliveries_partitioned;
ALTER SEQUENCE webhook_deliveries_id_seq AS INTEGER;
ALTER SEQUENCE webhook_deliveries_id_seq OWNED BY webhook_deliveries.id;
CREATE INDEX ix_webhook_deliveries_webhook_created ON webhook_deliveries (webhook_id, created_at DESC, id DESC);
CREATE INDEX ix_webhook_deliveries_status ON webhook_deliveries (status);
CREATE INDEX ix_webhook_deliveries_event_type ON webhook_deliveries (event_type);
CREATE INDEX ix_webhook_deliveries_event ON webhook_deliveries (event_id, webhook_id);
CREATE INDEX ix_webhook_deliveries_due ON webhook_deliveries (next_retry_at) WHERE status = 'pending';

DROP TABLE delivery_day_counts;
DROP TABLE webhook_delivery_counts;
DROP FUNCTION webhook_deliveries_ensure_partitions(DATE, DATE);

ALTER TABLE webhooks
    ALTER COLUMN success_count TYPE INTEGER,
    ALTER COLUMN failure_count TYPE INTEGER;
