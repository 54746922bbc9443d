-- When anything the rollout engine reads about a device last changed: its labels, revocation,
-- enrolment, override, or the model rows it reported. The engine keeps each rollout's view of
-- the fleet in memory and reads only the devices stamped since its last tick, so a tick costs
-- what changed, not the fleet's size. One narrow row per device, written in the same
-- transaction as the change it stamps; heartbeats that change nothing the engine reads leave
-- it alone. A stamp only moves forward (a change in the same millisecond adds one), so a
-- changed stamp always means "read this device again".
CREATE TABLE device_changes (
    device_id TEXT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    changed_ms BIGINT NOT NULL
);
CREATE INDEX device_changes_changed ON device_changes (changed_ms);
