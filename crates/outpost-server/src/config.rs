//! Server configuration: one struct whose `Default` is the documented default of every option,
//! so a missing TOML key, environment variable or flag always means the same thing.

use crate::db::{DbOptions, Thresholds};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the control plane can be told at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP API listens on (port 0 picks a free port). Default `127.0.0.1:8700`.
    pub listen: SocketAddr,
    /// Directory for the SQLite database and the bootstrap admin token. Default `outpost-data`.
    pub data_dir: PathBuf,
    /// Database URL (`sqlite:...` or `postgres://...`); default `sqlite:<data_dir>/outpost.db`.
    pub database: Option<String>,
    /// Database connections for the device channel (enrollment, heartbeats, reports, desired
    /// state, acknowledgements). Default 12.
    pub max_connections: u32,
    /// Database connections for the operator API, a pool of its own so that operator requests
    /// can never take the device channel's connections. Default 4.
    pub operator_max_connections: u32,
    /// Longest an operator database query may run before it is stopped and answered with 503
    /// `query_timeout` (PostgreSQL: `statement_timeout` on the operator connections). Default 5000.
    pub operator_query_timeout_ms: u64,
    /// A device not heard from for this long is `stale`. Default 90 s.
    pub stale_after_s: u64,
    /// A device not heard from for this long is `offline`. Default 300 s.
    pub offline_after_s: u64,
    /// Heartbeat interval the server asks devices for. Default 30 s.
    pub heartbeat_interval_s: u32,
    /// Longest a desired-state long-poll is held open. Default 30 s.
    pub long_poll_max_s: u64,
    /// Largest accepted difference between a device's signing time and the server clock. Default 300 s.
    pub clock_skew_s: u64,
    /// Keep one report per device per this interval in the history. Default 300 s.
    pub history_interval_s: u64,
    /// Delete history older than this. Default 7 days.
    pub history_retention_days: u64,
    /// Commands not acknowledged within this time expire. Default 7 days.
    pub command_ttl_s: u64,
    /// Largest accepted request body. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Most reports written in one database transaction (and accepted in one batch). Default 2000.
    pub report_batch_max: usize,
    /// Reports a device may send at once before its rate limit applies (0: no limit). Default
    /// 10 000, an agent's whole outbox, so the catch-up after an outage is not held back.
    pub device_report_burst: u32,
    /// Reports a minute a device may send on average (0: no limit). Default 120: a device on the
    /// default 30 s heartbeat sends 2, so this leaves room for short intervals and retries. Over
    /// the limit the device gets 429 `rate_limited` with `Retry-After`.
    pub device_reports_per_min: u32,
    /// Where model packages are kept: `s3://bucket[/prefix]` (credentials, region and endpoint
    /// from the `AWS_*` variables and `artifact_store_options`), a `file://` URL or a directory.
    /// Default `<data_dir>/artifacts`.
    pub artifact_store: Option<String>,
    /// Options of an S3 artifact store by `object_store`'s key names, e.g. `aws_endpoint`,
    /// `aws_region`, `aws_allow_http`, `aws_access_key_id`. Default none.
    pub artifact_store_options: std::collections::BTreeMap<String, String>,
    /// Largest model package accepted by `POST /v1/model-packages`. Default 2 GiB.
    pub max_package_bytes: u64,
    /// Package uploads received at once; more get 503 `overloaded`. Default 4.
    pub max_concurrent_uploads: usize,
    /// How often the rollout engine evaluates every rollout it holds. Default 2000 ms.
    pub rollout_tick_ms: u64,
    /// How long a replica holds a rollout without renewing its lease before another replica
    /// may take it over. Default 15000 ms.
    pub rollout_lease_ms: u64,
    /// First delay before a device whose update failed for a transient reason (download,
    /// disk, I/O) is offered the version again; doubles per attempt, at most 1 h. Default 30 s.
    pub rollout_retry_s: u64,
    /// Keep per-version request windows (what rollout gates read) this long. Default 2 days.
    pub version_stats_retention_s: u64,
    /// Keep the results, events and alerts devices exported over HTTP this long. Default 7 days.
    pub results_retention_s: u64,
    /// A device's latest drift window counts in the drift view and alerts for this long after
    /// it arrived. Default 1 h.
    pub drift_stale_s: u64,
    /// Alert rules (`[[alert_rules]]`); none configured means one rule, `drift`: any device at
    /// the drift alert level.
    pub alert_rules: Vec<outpost_proto::fleet::drift::AlertRule>,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8700)),
            data_dir: PathBuf::from("outpost-data"),
            database: None,
            max_connections: 12,
            operator_max_connections: 4,
            operator_query_timeout_ms: 5000,
            stale_after_s: 90,
            offline_after_s: 300,
            heartbeat_interval_s: 30,
            long_poll_max_s: 30,
            clock_skew_s: 300,
            history_interval_s: 300,
            history_retention_days: 7,
            command_ttl_s: 7 * 24 * 3600,
            max_body_bytes: 1024 * 1024,
            report_batch_max: 2000,
            device_report_burst: 10_000,
            device_reports_per_min: 120,
            artifact_store: None,
            artifact_store_options: Default::default(),
            max_package_bytes: 2 << 30,
            max_concurrent_uploads: 4,
            rollout_tick_ms: 2000,
            rollout_lease_ms: 15_000,
            rollout_retry_s: 30,
            version_stats_retention_s: 2 * 86_400,
            results_retention_s: 7 * 86_400,
            drift_stale_s: 3600,
            alert_rules: Vec::new(),
        }
    }
}

impl ServerConfig {
    /// The database URL actually used: `database`, or the SQLite file in `data_dir`.
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(url) => url.clone(),
            None => format!("sqlite:{}", self.data_dir.join("outpost.db").display()),
        }
    }

    /// Heartbeat-age thresholds for device status.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            stale_after_ms: secs_to_ms(self.stale_after_s),
            offline_after_ms: secs_to_ms(self.offline_after_s),
        }
    }

    /// The device times a report may carry: up to the skew window ahead of its arrival, up to
    /// the history retention behind.
    pub fn report_window(&self) -> crate::reports::ReportWindow {
        crate::reports::ReportWindow {
            ahead_ms: self.clock_skew_ms(),
            behind_ms: secs_to_ms(self.history_retention_days.saturating_mul(86_400)),
        }
    }

    /// Clock-skew window, milliseconds.
    pub fn clock_skew_ms(&self) -> i64 {
        secs_to_ms(self.clock_skew_s)
    }

    /// Pool sizes and the operator query bound.
    pub fn db_options(&self) -> DbOptions {
        DbOptions {
            device_connections: self.max_connections,
            operator_connections: self.operator_max_connections,
            engine_connections: DbOptions::default().engine_connections,
            operator_query_timeout: Duration::from_millis(self.operator_query_timeout_ms.max(1)),
        }
    }

    /// Longest long-poll.
    pub fn long_poll_max(&self) -> Duration {
        Duration::from_secs(self.long_poll_max_s)
    }

    /// Where the bootstrap admin token is written.
    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }
}

/// Seconds to milliseconds, saturating instead of overflowing on absurd settings.
pub(crate) fn secs_to_ms(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_gives_documented_defaults() {
        let c: ServerConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, ServerConfig::default());
        assert_eq!(c.listen.to_string(), "127.0.0.1:8700");
        assert_eq!(c.database_url(), format!("sqlite:{}", PathBuf::from("outpost-data/outpost.db").display()));
        assert_eq!(c.command_ttl_s, 604_800);
        assert_eq!(c.max_connections + c.operator_max_connections, 16);
        assert_eq!(c.db_options().operator_query_timeout, Duration::from_secs(5));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(serde_json::from_str::<ServerConfig>(r#"{"lisen":"x"}"#).is_err());
    }
}
