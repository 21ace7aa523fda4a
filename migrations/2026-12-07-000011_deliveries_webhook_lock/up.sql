-- The foreign key from webhook_deliveries to webhooks checked every inserted
-- row on its own (a `SELECT ... FOR KEY SHARE` on the webhook per row, 2-6 µs
-- each as measured). Writers now take that key-share lock once per webhook
-- and batch (storage::attempts::lock_webhooks) and insert only the rows of
-- webhooks still there; a webhook's deletion deletes its rows
-- (storage::webhooks::delete_webhook).
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_webhook_id_fkey;
