-- Rollouts: a model version moving over label-selected devices in waves, gated on health.
-- `spec` is the request as JSON, `waves` the per-wave records (phase, times, last gate
-- readings); the engine holds a rollout through a lease (owner + expiry) so two replicas
-- never act on the same one.
CREATE TABLE rollouts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    wave BIGINT NOT NULL DEFAULT 0,
    waves TEXT NOT NULL DEFAULT '[]',
    reason TEXT NOT NULL DEFAULT '',
    assignment_id BIGINT,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX rollouts_state ON rollouts (state);

-- Devices of a rollout; the primary key keeps a device in a rollout once.
CREATE TABLE rollout_devices (
    rollout_id BIGINT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    wave BIGINT NOT NULL,
    mode TEXT NOT NULL,
    state TEXT NOT NULL,
    from_version TEXT,
    failure TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    retry_ms BIGINT,
    since_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_device ON rollout_devices (device_id);
-- Replicas that do not hold a rollout read its changes by time to drop their cached ETags.
CREATE INDEX rollout_devices_updated ON rollout_devices (updated_ms);

-- What devices report per model version and report interval: served requests, errors and a
-- latency histogram, or a shadow candidate's comparisons. Additive, so gates sum them over a
-- wave and a window; kept for `version_stats_retention`.
CREATE TABLE version_stats (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    shadow BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    latency TEXT NOT NULL,
    agreement DOUBLE PRECISION NOT NULL
);
CREATE INDEX version_stats_model_received ON version_stats (model, received_ms);

-- The failure kind of a device's model or update row, and shadow rows (`shadow:<state>`).
ALTER TABLE device_models ADD COLUMN failure TEXT;
