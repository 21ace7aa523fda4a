UPDATE webhook_jobs SET status = 'queued' WHERE status = 'paused';
DROP INDEX ux_webhook_jobs_one_active;
CREATE UNIQUE INDEX ux_webhook_jobs_one_active ON webhook_jobs (webhook_id)
    WHERE status IN ('queued', 'running');
ALTER TABLE webhook_jobs DROP CONSTRAINT webhook_jobs_status;
ALTER TABLE webhook_jobs ADD CONSTRAINT webhook_jobs_status
    CHECK (status IN ('queued', 'running', 'completed', 'cancelled', 'failed'));
