-- Partitions are now created 2 days ahead (DELIVERY_PARTITIONS_AHEAD), not 7.
-- A lookup by event (the recorder's success check, the audit's delivery
-- lookup) reads every partition from the event's time on, so each empty day
-- ahead costs a probe per key (about 0.35 µs as measured). The empty days
-- beyond the new horizon go; the registry's maintenance (or the worker, when
-- a row finds no partition) creates them again when they come near.
DO $$
DECLARE
    part REGCLASS;
    empty BOOLEAN;
BEGIN
    FOR part IN
        SELECT i.inhrelid::regclass
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent IN ('webhook_deliveries'::regclass, 'delivery_events'::regclass)
          AND c.relname ~ '_p[0-9]{8}$'
          AND to_date(right(c.relname, 8), 'YYYYMMDD') > (now() AT TIME ZONE 'UTC')::date + 2
    LOOP
        EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM %s)', part) INTO empty;
        IF empty THEN
            EXECUTE format('DROP TABLE %s', part);
        END IF;
    END LOOP;
END
$$;
