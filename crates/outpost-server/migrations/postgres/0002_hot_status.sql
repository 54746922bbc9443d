-- Every heartbeat rewrites its device's device_status row. With no index on a column the
-- update changes and free room in the page, PostgreSQL updates the row in place (a HOT update):
-- no new index entries, and dead versions are pruned from the page without waiting for vacuum.
-- Status filters (online/stale/offline) scan device_status instead: one pass over a table that
-- holds one row per device.
DROP INDEX device_status_last_seen;
ALTER TABLE device_status SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.05);
