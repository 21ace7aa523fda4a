-- Subscriptions that fit real receivers (docs/contract.md, "Webhooks").
--
-- event_types: every pattern the webhook takes when it has more than one
-- (1-20, each a catalogue type, a family pattern or '*'); NULL when it has
-- exactly one, which is then event_type alone. event_type is always the
-- first pattern, so a client that knows only event_type reads and changes
-- the first one.
ALTER TABLE webhooks ADD COLUMN event_types text[];
ALTER TABLE webhooks ADD CONSTRAINT webhooks_event_types
    CHECK (event_types IS NULL
           OR (cardinality(event_types) BETWEEN 2 AND 20 AND event_types[1] = event_type));
CREATE INDEX ix_webhooks_event_types ON webhooks USING gin (event_types);

-- payload_filter: the payload filter (docs/contract.md, "Payload filters"), as the
-- API wrote it back in its canonical form; NULL for every event.
ALTER TABLE webhooks ADD COLUMN payload_filter jsonb;

-- headers: custom request headers, [{"name", "value"} | {"name", "sealed"}],
-- a secret value sealed (see below); NULL for none.
ALTER TABLE webhooks ADD COLUMN headers jsonb;

-- auth: how the delivery authenticates to the receiver:
-- {"type": "basic", "username", "password"}, {"type": "bearer", "token"} or
-- {"type": "oauth2", "token_url", "client_id", "client_secret", "scope"},
-- each credential sealed; NULL for none.
ALTER TABLE webhooks ADD COLUMN auth jsonb;

-- signature_scheme: 'hmac' (HMAC-SHA256 with the shared secret: the seed's
-- X-Webhook-Signature and Standard Webhooks v1) or 'ed25519' (Standard
-- Webhooks v1a; secret then holds the signing key, whsk_...).
ALTER TABLE webhooks ADD COLUMN signature_scheme varchar(20) NOT NULL DEFAULT 'hmac';
ALTER TABLE webhooks ADD CONSTRAINT webhooks_signature_scheme
    CHECK (signature_scheme IN ('hmac', 'ed25519'));

-- Secrets at rest are sealed (AES-256-GCM, SECRETS_KEY_FILE):
-- 'sealed:v1:<key id>:<base64url>', longer than the bot's 128 characters.
-- Rows written before this are sealed by the registry at its next start
-- (`webhook-registry secrets seal`), which loses nothing: a value that is
-- not sealed is read as it is until then.
ALTER TABLE webhooks ALTER COLUMN secret TYPE text;
ALTER TABLE webhooks ALTER COLUMN previous_secret TYPE text;
