-- The week ahead again, as the registry created it before.
SELECT webhook_deliveries_ensure_partitions((now() AT TIME ZONE 'UTC')::date,
                                            (now() AT TIME ZONE 'UTC')::date + 7);
