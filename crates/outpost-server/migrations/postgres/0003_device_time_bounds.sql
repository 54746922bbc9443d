-- History retention and downsampling stop trusting the device's clock: every stored report
-- carries the server's receive time, and retention deletes by it. Rows from before this
-- migration get their device time, clamped to now, so a far-future row from an old flood is
-- pruned after one retention period like any other.
ALTER TABLE device_reports ADD COLUMN received_ms BIGINT NOT NULL DEFAULT 0;
UPDATE device_reports SET received_ms = LEAST(at_ms, (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT);
ALTER TABLE device_reports ALTER COLUMN received_ms DROP DEFAULT;
CREATE INDEX device_reports_received ON device_reports (received_ms);
-- Nothing deletes or filters by at_ms alone any more (history reads use (device_id, at_ms)).
DROP INDEX device_reports_at;

-- Nonces of signed device requests, shared by every replica and kept across restarts, so a
-- captured request cannot be replayed inside the clock-skew window. A replay carries the same
-- signing time and nonce (the signature covers both), so (signed_ms, nonce_key) identifies it;
-- signed_ms leads the key so that inserts land at the right edge of the index and pruning
-- (signed_ms older than the skew window) deletes from the left edge without another index.
-- nonce_key is the hex of a hash of (device, nonce).
CREATE TABLE device_nonces (
    signed_ms BIGINT NOT NULL,
    nonce_key TEXT NOT NULL,
    PRIMARY KEY (signed_ms, nonce_key)
);
ALTER TABLE device_nonces SET (autovacuum_vacuum_scale_factor = 0.05);
