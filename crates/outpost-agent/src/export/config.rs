//! `[export]` in the agent's configuration: which results leave the device, where to, and how
//! many bytes an hour they may take.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What is exported and where (absent sinks: results are kept in the outbox for a sink added
/// later, up to its cap).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// Models whose inference results are exported unless a request says otherwise
    /// (`?export=false`); `"*"` is every model. Default: none (a request opts in with
    /// `?export=true`).
    pub models: Vec<String>,
    /// Labels added to every record (beside those the server gave the device at enrollment).
    pub labels: BTreeMap<String, String>,
    /// Disk the export outbox may use, MiB; past it the oldest telemetry goes first, then the
    /// oldest results and events, alerts last.
    pub outbox_mb: u64,
    /// When records reach the disk: `group` (default; an append returns once fsynced, fsyncs
    /// shared), `always` (one fsync per append) or `never` (the OS decides; a power cut may
    /// lose the newest records).
    pub fsync: String,
    /// A result larger than this (bytes of JSON) is exported without its outputs, marked
    /// `truncated`: raw tensors are not what should leave a device.
    pub max_result_bytes: usize,
    /// Bytes per hour each priority may send per sink (0: no limit).
    pub budget: BudgetConfig,
    /// A sink waits up to this long for a fuller batch before sending a partial one (alerts
    /// never wait): fewer requests, and batches that compress better. Default 1000 ms.
    pub linger_ms: u64,
    /// Send records to the control-plane server too, when the agent has one (it stores them
    /// and serves them at `GET /v1/results`). Default true.
    pub server: bool,
    /// The MQTT sink, when set.
    pub mqtt: Option<MqttConfig>,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            models: Vec::new(),
            labels: BTreeMap::new(),
            outbox_mb: 64,
            fsync: "group".into(),
            max_result_bytes: 4096,
            budget: BudgetConfig::default(),
            linger_ms: 1000,
            server: true,
            mqtt: None,
        }
    }
}

impl ExportConfig {
    /// Whether results of `model` are exported when a request does not say.
    pub fn exports(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == "*" || m == model)
    }

    /// The outbox's fsync policy; an unknown word is a configuration error.
    pub fn fsync_policy(&self) -> Result<outpost_outbox::FsyncPolicy, String> {
        match self.fsync.as_str() {
            "group" => Ok(outpost_outbox::FsyncPolicy::default()),
            "always" => Ok(outpost_outbox::FsyncPolicy::Always),
            "never" => Ok(outpost_outbox::FsyncPolicy::Never),
            other => Err(format!("export.fsync {other:?}: use \"group\", \"always\" or \"never\"")),
        }
    }
}

/// Bytes per hour per priority; 0 is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// Alerts (drift, failed updates).
    pub high_bytes_per_hour: u64,
    /// Inference results and other events.
    pub normal_bytes_per_hour: u64,
    /// Telemetry.
    pub low_bytes_per_hour: u64,
}

/// An MQTT broker to publish to (QoS 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS; port 8883 when absent).
    pub url: String,
    /// Protocol: 4 (MQTT 3.1.1, default) or 5.
    pub version: u8,
    /// Client id (default `outpost-<device id>`).
    pub client_id: Option<String>,
    /// User name, when the broker wants one.
    pub username: Option<String>,
    /// Password, when the broker wants one.
    pub password: Option<String>,
    /// PEM CA bundle to trust for `mqtts://` (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// First topic level (default `outpost`): `<prefix>/<device>/results/<model>`, `…/events`,
    /// `…/telemetry`.
    pub topic_prefix: String,
    /// Records published before waiting for the broker's acknowledgements.
    pub batch: usize,
    /// Seconds without a PUBACK before the connection is given up and the batch resent.
    pub ack_timeout_s: u64,
    /// Publish each batch as one zstd-compressed JSON array of records on
    /// `<prefix>/<device>/batch` instead of one message per record (for links where every byte
    /// counts; subscribers decompress). Default false.
    pub zstd_batches: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            version: 4,
            client_id: None,
            username: None,
            password: None,
            ca_file: None,
            topic_prefix: "outpost".into(),
            batch: 256,
            ack_timeout_s: 10,
            zstd_batches: false,
        }
    }
}
