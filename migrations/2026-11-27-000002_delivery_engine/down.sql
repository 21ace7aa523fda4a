ALTER TABLE webhooks DROP COLUMN IF EXISTS disabled_reason;
ALTER TABLE webhooks DROP COLUMN IF EXISTS failing_since;
ALTER TABLE webhooks DROP COLUMN IF EXISTS previous_secret_expires_at;
ALTER TABLE webhooks DROP COLUMN IF EXISTS previous_secret;
DROP INDEX IF EXISTS ix_webhook_deliveries_due;
DROP INDEX IF EXISTS ix_webhook_deliveries_event;
ALTER TABLE webhook_deliveries DROP COLUMN IF EXISTS event_id;
