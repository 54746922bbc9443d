-- Control-plane schema, SQLite flavour. Keep in step with ../postgres/0001_initial.sql: the
-- queries are shared, only id generation differs. Booleans are BIGINT 0/1, JSON is TEXT,
-- timestamps are BIGINT Unix milliseconds.

CREATE TABLE enrollment_tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    uses BIGINT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    expires_ms BIGINT NOT NULL,
    labels TEXT NOT NULL,
    note TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    expires_ms BIGINT,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    name TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    hardware TEXT NOT NULL,
    enrolled_ms BIGINT NOT NULL,
    enrollment_token TEXT NOT NULL,
    revoked_ms BIGINT
);

CREATE TABLE device_labels (
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (device_id, key)
);
CREATE INDEX device_labels_key_value ON device_labels (key, value);

CREATE TABLE device_status (
    device_id TEXT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    last_seen_ms BIGINT NOT NULL,
    health TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    applied_etag TEXT NOT NULL,
    models TEXT NOT NULL,
    system TEXT NOT NULL,
    last_seq BIGINT NOT NULL
);
CREATE INDEX device_status_last_seen ON device_status (last_seen_ms);

CREATE TABLE device_models (
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX device_models_device ON device_models (device_id);
CREATE INDEX device_models_name_version ON device_models (name, version);

CREATE TABLE device_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    at_ms BIGINT NOT NULL,
    report TEXT NOT NULL
);
CREATE INDEX device_reports_device_at ON device_reports (device_id, at_ms);
CREATE INDEX device_reports_at ON device_reports (at_ms);

CREATE TABLE device_overrides (
    device_id TEXT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    body TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);

CREATE TABLE models (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    metadata TEXT NOT NULL,
    published_by TEXT NOT NULL,
    published_ms BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE assignments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    selector TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    FOREIGN KEY (model, version) REFERENCES models (name, version)
);

CREATE TABLE commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    args TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    delivered_ms BIGINT,
    acked_ms BIGINT
);
CREATE INDEX commands_device ON commands (device_id, id);
CREATE INDEX commands_status_created ON commands (status, created_ms);

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    details TEXT NOT NULL
);
