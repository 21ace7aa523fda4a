-- Sealed secrets do not fit the old columns and are of no use without the
-- key: a webhook keeps its secret only when it is still in clear.
UPDATE webhooks SET secret = NULL WHERE secret LIKE 'sealed:%' OR length(secret) > 128;
UPDATE webhooks SET previous_secret = NULL, previous_secret_expires_at = NULL
    WHERE previous_secret LIKE 'sealed:%' OR length(previous_secret) > 128;
ALTER TABLE webhooks ALTER COLUMN previous_secret TYPE varchar(128);
ALTER TABLE webhooks ALTER COLUMN secret TYPE varchar(128);
ALTER TABLE webhooks DROP CONSTRAINT webhooks_signature_scheme;
ALTER TABLE webhooks DROP COLUMN signature_scheme;
ALTER TABLE webhooks DROP COLUMN auth;
ALTER TABLE webhooks DROP COLUMN headers;
ALTER TABLE webhooks DROP COLUMN payload_filter;
DROP INDEX ix_webhooks_event_types;
ALTER TABLE webhooks DROP CONSTRAINT webhooks_event_types;
ALTER TABLE webhooks DROP COLUMN event_types;
