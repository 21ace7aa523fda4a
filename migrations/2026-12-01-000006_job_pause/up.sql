-- A job can be paused (docs/architecture.md, "Replay, recover and bulk
-- retry"): it keeps its progress and stays the webhook's one unfinished job,
-- but no replica claims it until it is resumed (queued again).
ALTER TABLE webhook_jobs DROP CONSTRAINT webhook_jobs_status;
ALTER TABLE webhook_jobs ADD CONSTRAINT webhook_jobs_status
    CHECK (status IN ('queued', 'running', 'paused', 'completed', 'cancelled', 'failed'));
DROP INDEX ux_webhook_jobs_one_active;
CREATE UNIQUE INDEX ux_webhook_jobs_one_active ON webhook_jobs (webhook_id)
    WHERE status IN ('queued', 'running', 'paused');
