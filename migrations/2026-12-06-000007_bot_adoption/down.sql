DROP INDEX IF EXISTS ux_web_api_tokens_bot_token_id;
ALTER TABLE web_api_tokens DROP COLUMN IF EXISTS bot_token_id;
ALTER TABLE webhook_deliveries DROP COLUMN IF EXISTS body;
ALTER TABLE webhooks DROP CONSTRAINT IF EXISTS webhooks_body_format;
ALTER TABLE webhooks DROP COLUMN IF EXISTS body_format;
