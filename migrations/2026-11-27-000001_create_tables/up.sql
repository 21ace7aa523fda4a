-- The three tables of the bot's web admin API, with the bot's column names,
-- types and nullability, so existing rows and tools carry over unchanged.

CREATE TABLE web_api_tokens (
    id            SERIAL PRIMARY KEY,
    name          VARCHAR(255) NOT NULL,
    token_hash    VARCHAR(128) NOT NULL,
    token_prefix  VARCHAR(32)  NOT NULL,
    description   TEXT,
    created_at    TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ  NOT NULL DEFAULT now(),
    expires_at    TIMESTAMPTZ,
    last_used_at  TIMESTAMPTZ,
    last_used_ip  VARCHAR(64),
    is_active     BOOLEAN      NOT NULL DEFAULT TRUE,
    created_by    VARCHAR(255)
);
CREATE UNIQUE INDEX ix_web_api_tokens_token_hash ON web_api_tokens (token_hash);
CREATE INDEX ix_web_api_tokens_token_prefix ON web_api_tokens (token_prefix);

CREATE TABLE webhooks (
    id                SERIAL PRIMARY KEY,
    name              VARCHAR(255) NOT NULL,
    url               TEXT         NOT NULL,
    secret            VARCHAR(128),
    event_type        VARCHAR(50)  NOT NULL,
    is_active         BOOLEAN      NOT NULL DEFAULT TRUE,
    description       TEXT,
    created_at        TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ  NOT NULL DEFAULT now(),
    last_triggered_at TIMESTAMPTZ,
    failure_count     INTEGER      NOT NULL DEFAULT 0,
    success_count     INTEGER      NOT NULL DEFAULT 0
);
-- Matching reads active webhooks by type; listing filters by both.
CREATE INDEX ix_webhooks_event_type_active ON webhooks (event_type, is_active);
CREATE INDEX ix_webhooks_active ON webhooks (is_active);
CREATE INDEX ix_webhooks_created_at ON webhooks (created_at DESC, id DESC);

CREATE TABLE webhook_deliveries (
    id              SERIAL PRIMARY KEY,
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
    next_retry_at   TIMESTAMPTZ
);
-- A webhook's history, newest first, optionally by status.
CREATE INDEX ix_webhook_deliveries_webhook_created ON webhook_deliveries (webhook_id, created_at DESC, id DESC);
CREATE INDEX ix_webhook_deliveries_status ON webhook_deliveries (status);
CREATE INDEX ix_webhook_deliveries_event_type ON webhook_deliveries (event_type);
