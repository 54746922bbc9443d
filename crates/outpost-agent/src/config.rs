//! Agent configuration: one struct, defaults that match the README.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the agent needs to start. Loaded from TOML, `OUTPOST_*` environment and flags
/// (the binary merges them); `Default` is the documented default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Address of the local inference API.
    pub listen: SocketAddr,
    /// Directory holding model packages (`*.opkg` files or package directories).
    pub model_dir: PathBuf,
    /// How often the model directory is rescanned, in milliseconds.
    pub poll_interval_ms: u64,
    /// Memory all loaded models may use together, in MB.
    pub memory_budget_mb: u64,
    /// Sessions (worker threads) per model.
    pub sessions: usize,
    /// Requests that may wait per model before new ones get 429.
    pub queue_capacity: usize,
    /// Intra-op threads per inference.
    pub threads: usize,
    /// tract: plans specialised to one request shape kept per model with dynamic inputs
    /// (each holds its own packed weights); 0 serves every shape from the dynamic plan.
    pub shape_plans: usize,
    /// Largest request body accepted, after decompression, in bytes.
    pub max_body_bytes: usize,
    /// Bytes of request bodies (after decompression) held at once across all requests; a body
    /// that does not fit gets 503 with `Retry-After`. At least `max_body_bytes`.
    pub max_inflight_body_bytes: usize,
    /// Force a backend (`tract` or `onnxruntime`) instead of each manifest's choice.
    pub backend: Option<String>,
    /// Path of `libonnxruntime.so` for the onnxruntime backend.
    pub ort_library: Option<PathBuf>,
    /// Run each package's golden self-test before serving it.
    pub selftest: bool,
    /// For manifests with `backend = "auto"`: time both backends at load and keep the faster.
    pub measure_backends: bool,
    /// Where the device key, enrollment record and control outbox live.
    pub data_dir: PathBuf,
    /// Control-plane server URL (`http://host:8700`); absent: run standalone.
    pub server: Option<String>,
    /// One-time enrollment token, needed until the device is enrolled.
    pub enroll_token: Option<String>,
    /// Name shown in the fleet inventory (default: the host name).
    pub device_name: Option<String>,
    /// The TUF root this device trusts; when set, a package is fetched only after the
    /// server's signed TUF metadata vouches for its length and hash.
    pub tuf_root: Option<PathBuf>,
    /// Seconds a newly activated version is watched (errors, latency, crash loops against the
    /// version it replaced) before it is trusted; a failure rolls it back. Default 60.
    pub probation_s: u64,
    /// Older versions of each model kept on disk after a new one passed probation (for an
    /// instant rollback and cheap deltas back). Default 2.
    pub keep_versions: usize,
    /// Disk those kept older versions of one model may take, MiB. Default 1024.
    pub package_budget_mb: u64,
    /// Share of one core (0..1) each shadow candidate may use for its comparisons; a sampled
    /// request beyond it is skipped, not delayed. Default 0.25.
    pub shadow_cpu_share: f64,
    /// Result export: which results leave the device, to which sinks, within which budget.
    pub export: crate::export::config::ExportConfig,
    /// Drift windows: their length and the levels that make them `warn` and `alert`.
    pub drift: crate::telemetry::DriftConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            model_dir: PathBuf::from("models"),
            poll_interval_ms: 1000,
            memory_budget_mb: 512,
            sessions: 1,
            queue_capacity: 64,
            threads: 1,
            shape_plans: outpost_runtime::backend::DEFAULT_SHAPE_PLANS,
            max_body_bytes: 64 << 20,
            max_inflight_body_bytes: 64 << 20,
            backend: None,
            ort_library: None,
            selftest: true,
            measure_backends: false,
            data_dir: PathBuf::from("outpost-agent-data"),
            server: None,
            enroll_token: None,
            device_name: None,
            tuf_root: None,
            probation_s: 60,
            keep_versions: 2,
            package_budget_mb: 1024,
            shadow_cpu_share: 0.25,
            export: crate::export::config::ExportConfig::default(),
            drift: crate::telemetry::DriftConfig::default(),
        }
    }
}

impl AgentConfig {
    /// Parses a TOML configuration file's text; absent keys keep their defaults.
    pub fn from_toml(text: &str) -> Result<AgentConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// Model directory rescan interval.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(50))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() {
        assert_eq!(AgentConfig::from_toml("").unwrap(), AgentConfig::default());
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = AgentConfig::from_toml("listne = \"0.0.0.0:1\"").unwrap_err().to_string();
        assert!(err.contains("listne"), "{err}");
    }
}
