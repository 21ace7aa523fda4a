-- Reverts 0001_event_outbox.up.sql. Rows not yet relayed are lost.
DROP TRIGGER IF EXISTS event_outbox_notify ON event_outbox;
DROP FUNCTION IF EXISTS event_outbox_notify();
DROP TABLE IF EXISTS event_outbox;
