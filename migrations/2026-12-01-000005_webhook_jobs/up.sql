-- Background jobs of one webhook (docs/architecture.md, "Replay, recover
-- and bulk retry"): the registry creates them, any delivery-worker replica
-- runs them under a lease and stores its progress in the row, so a job
-- survives a restart and resumes where it stopped.
CREATE TABLE webhook_jobs (
    id              BIGSERIAL    PRIMARY KEY,
    webhook_id      INTEGER      NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    -- recover | replay | retry
    kind            VARCHAR(20)  NOT NULL,
    -- queued | running | completed | cancelled | failed
    status          VARCHAR(20)  NOT NULL DEFAULT 'queued',
    -- The window asked for: times (recover, retry, replay by time) or a
    -- stream sequence after which a replay starts.
    since           TIMESTAMPTZ,
    until           TIMESTAMPTZ,
    since_seq       BIGINT,
    -- The delivery status a bulk retry selects.
    delivery_status VARCHAR(20),
    rate_per_s      INTEGER      NOT NULL,
    -- Items of the window, fixed when the job starts (NULL until then).
    total           BIGINT,
    done            BIGINT       NOT NULL DEFAULT 0,
    failed          BIGINT       NOT NULL DEFAULT 0,
    -- Replay: stream sequences of the window the stream no longer holds.
    unavailable     BIGINT       NOT NULL DEFAULT 0,
    -- The last item handled: a delivery id (recover, retry) or a stream
    -- sequence (replay); the job resumes after it.
    progress_key    BIGINT,
    -- The last item of the window (the largest delivery id or the stream's
    -- last sequence when the job started): the job never chases new rows.
    end_key         BIGINT,
    error           TEXT,
    -- The replica running the job and until when it holds it.
    lease_owner     VARCHAR(64),
    lease_until     TIMESTAMPTZ,
    created_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
    CONSTRAINT webhook_jobs_kind CHECK (kind IN ('recover', 'replay', 'retry')),
    CONSTRAINT webhook_jobs_status
        CHECK (status IN ('queued', 'running', 'completed', 'cancelled', 'failed')),
    CONSTRAINT webhook_jobs_rate CHECK (rate_per_s > 0)
);
-- At most one unfinished job per webhook: a second request finds this one.
CREATE UNIQUE INDEX ux_webhook_jobs_one_active ON webhook_jobs (webhook_id)
    WHERE status IN ('queued', 'running');
-- A webhook's jobs, newest first.
CREATE INDEX ix_webhook_jobs_webhook ON webhook_jobs (webhook_id, id DESC);
-- What the workers claim.
CREATE INDEX ix_webhook_jobs_runnable ON webhook_jobs (id)
    WHERE status IN ('queued', 'running');
