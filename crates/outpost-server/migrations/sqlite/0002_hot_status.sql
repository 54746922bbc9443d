-- Every heartbeat rewrites its device's device_status row; an index on last_seen_ms would be
-- rewritten with it. Status filters scan device_status (one row per device) instead.
DROP INDEX device_status_last_seen;
