-- Moving over from the bot (docs/migrating-from-the-bot.md).
--
-- body_format: how a webhook's POST body is written. 'canonical' is
-- json.dumps(payload, sort_keys=True) (docs/contract.md, "Canonical body");
-- 'bot' is the bot's own json.dumps(payload, default=str, ensure_ascii=False):
-- the payload's key order as emitted, raw UTF-8. Imported webhooks get 'bot'
-- so receivers that verify the bot's way keep working.
ALTER TABLE webhooks ADD COLUMN body_format varchar(20) NOT NULL DEFAULT 'canonical';
ALTER TABLE webhooks ADD CONSTRAINT webhooks_body_format
    CHECK (body_format IN ('canonical', 'bot'));

-- The exact bytes a non-canonical attempt sent. jsonb (the payload column)
-- does not keep key order, so a retry of a 'bot' body sends these again.
-- NULL for canonical bodies, which are rebuilt from the payload.
ALTER TABLE webhook_deliveries ADD COLUMN body text;

-- A token copied from the bot's web_api_tokens: its id there. The import and
-- the token sync match on it, so a second run updates instead of duplicating
-- and a token deleted in the bot is switched off here.
ALTER TABLE web_api_tokens ADD COLUMN bot_token_id integer;
CREATE UNIQUE INDEX ux_web_api_tokens_bot_token_id ON web_api_tokens (bot_token_id)
    WHERE bot_token_id IS NOT NULL;
