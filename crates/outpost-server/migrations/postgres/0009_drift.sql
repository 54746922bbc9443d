-- Drift: each device's latest closed drift window per model (the report's `drift`), which the
-- drift view and the alert rules aggregate per version and label group. `alert_since_ms` is when
-- the device's status for this model last became `alert` (server clock), kept while it stays
-- there. `report` is the window as the device sent it.
CREATE TABLE device_drift (
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    samples BIGINT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL,
    alert_since_ms BIGINT,
    report TEXT NOT NULL,
    PRIMARY KEY (device_id, model)
);
CREATE INDEX device_drift_model ON device_drift (model, version);
CREATE INDEX device_drift_received ON device_drift (received_ms);

-- Drift windows per version and report, summed by the rollout gates like requests and errors.
ALTER TABLE version_stats ADD COLUMN drift_windows BIGINT NOT NULL DEFAULT 0;
ALTER TABLE version_stats ADD COLUMN drift_alerts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE version_stats ADD COLUMN drift_score DOUBLE PRECISION NOT NULL DEFAULT 0;
