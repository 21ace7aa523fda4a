-- Pull webhooks (docs/contract.md, "Pull webhooks"): a webhook whose owner
-- reads its events with GET /webhooks/{id}/pull instead of receiving POSTs.
--
-- mode: 'push' (the delivery worker POSTs to url) or 'pull' (no url; the
-- events wait in the stream until the owner reads them).
ALTER TABLE webhooks ADD COLUMN mode varchar(20) NOT NULL DEFAULT 'push';
ALTER TABLE webhooks ADD CONSTRAINT webhooks_mode CHECK (mode IN ('push', 'pull'));

-- A pull webhook has no URL, a push webhook always has one.
ALTER TABLE webhooks ALTER COLUMN url DROP NOT NULL;
ALTER TABLE webhooks ADD CONSTRAINT webhooks_mode_url CHECK ((mode = 'pull') = (url IS NULL));

-- pull_epoch, pull_seq: the position the owner acknowledged, a cursor
-- '<pull_epoch>:<pull_seq>' (the stream's epoch and a sequence in it);
-- both NULL until the first acknowledgement, and always NULL for a push
-- webhook.
ALTER TABLE webhooks ADD COLUMN pull_epoch text;
ALTER TABLE webhooks ADD COLUMN pull_seq bigint;
ALTER TABLE webhooks ADD CONSTRAINT webhooks_pull_position
    CHECK ((pull_epoch IS NULL) = (pull_seq IS NULL)
           AND (pull_seq IS NULL OR (mode = 'pull' AND pull_seq >= 0)));
