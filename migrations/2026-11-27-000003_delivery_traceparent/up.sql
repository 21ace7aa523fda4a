-- The W3C trace context an event was published with, kept so that every
-- retry of a delivery carries it too, not only the first attempt.
ALTER TABLE webhook_deliveries ADD COLUMN traceparent VARCHAR(128);
