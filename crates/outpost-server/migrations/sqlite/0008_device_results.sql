-- Records devices export over HTTP (inference results, events, alerts, telemetry): only results
-- leave a device, never raw inputs. `id` is the device's record id (`<device>/<priority>/<seq>`),
-- unique per device for good, so a batch a device sends again after a lost answer is stored
-- once. `seq` orders the store for paging and for clients that follow it. Kept for
-- `results_retention_s`.
CREATE TABLE device_results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    model TEXT,
    version TEXT,
    at_ms BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX device_results_received ON device_results (received_ms);
CREATE INDEX device_results_device ON device_results (device_id, seq);
CREATE INDEX device_results_model ON device_results (model, seq);
