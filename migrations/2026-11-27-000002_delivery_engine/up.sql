-- Columns the delivery engine needs beyond the bot's schema.

-- Which event a delivery carries; with webhook_id it names the Standard
-- Webhooks message id that stays the same across retries.
ALTER TABLE webhook_deliveries ADD COLUMN event_id VARCHAR(64);
CREATE INDEX ix_webhook_deliveries_event ON webhook_deliveries (event_id, webhook_id);
-- The retry queue: a 'pending' row is an attempt that is due at next_retry_at.
CREATE INDEX ix_webhook_deliveries_due ON webhook_deliveries (next_retry_at)
    WHERE status = 'pending';

-- Secret rotation: the previous secret stays valid until it expires.
ALTER TABLE webhooks ADD COLUMN previous_secret VARCHAR(128);
ALTER TABLE webhooks ADD COLUMN previous_secret_expires_at TIMESTAMPTZ;
-- Automatic disabling: when failures without a success began, and why a
-- webhook was switched off.
ALTER TABLE webhooks ADD COLUMN failing_since TIMESTAMPTZ;
ALTER TABLE webhooks ADD COLUMN disabled_reason TEXT;
