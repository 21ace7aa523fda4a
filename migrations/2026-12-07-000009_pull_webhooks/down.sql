-- Pull webhooks have no URL and cannot be kept as push webhooks.
DELETE FROM webhooks WHERE mode = 'pull';
ALTER TABLE webhooks DROP CONSTRAINT webhooks_pull_position;
ALTER TABLE webhooks DROP COLUMN pull_seq;
ALTER TABLE webhooks DROP COLUMN pull_epoch;
ALTER TABLE webhooks DROP CONSTRAINT webhooks_mode_url;
ALTER TABLE webhooks ALTER COLUMN url SET NOT NULL;
ALTER TABLE webhooks DROP CONSTRAINT webhooks_mode;
ALTER TABLE webhooks DROP COLUMN mode;
