//! Device channel messages: enrollment, state reports (heartbeats), desired state and commands.
//!
//! Every field that an older agent may not send has a serde default, so the server accepts
//! reports from agents one protocol revision behind.

use super::selector::Labels;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// What a device is built from; sent at enrollment and whenever it changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct HardwareProfile {
    /// CPU architecture (`x86_64`, `aarch64`, ...).
    pub arch: String,
    /// Operating system (`linux`, ...).
    pub os: String,
    /// CPU features that matter for inference (`avx2`, `fma`, `neon`, ...).
    pub cpu_features: Vec<String>,
    /// Logical CPU cores.
    pub cores: u32,
    /// Physical memory, bytes.
    pub ram_bytes: u64,
    /// Size of the filesystem holding the agent's data, bytes.
    pub disk_bytes: u64,
    /// Inference accelerators (`cuda:0`, `npu`, ...); empty for CPU-only devices.
    pub accelerators: Vec<String>,
}

/// `POST /v1/enroll`: a new device asks to join with an enrollment token. The request is signed
/// with the new key (headers from [`super::signing`], device header = the key's device id),
/// which proves the device holds the private key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EnrollRequest {
    /// The enrollment token secret (`oet_...`).
    pub token: String,
    /// Key algorithm; only `ed25519`.
    pub algorithm: String,
    /// The device's public key, base64.
    pub public_key: String,
    /// Human name for the device (defaults to the host name).
    #[serde(default)]
    pub name: String,
    /// Agent version string.
    #[serde(default)]
    pub agent_version: String,
    /// Hardware profile.
    #[serde(default)]
    pub hardware: HardwareProfile,
}

/// Answer to an enrollment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EnrollResponse {
    /// The device id to put in the device header from now on.
    pub device_id: String,
    /// Labels the device got from its enrollment token.
    pub labels: Labels,
    /// True when this key was already enrolled and the existing device is returned.
    pub already_enrolled: bool,
    /// Heartbeat interval the server asks for, seconds.
    pub heartbeat_interval_s: u32,
}

/// Overall health a device reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Everything desired is served.
    #[default]
    Ok,
    /// Serving, but something failed (a model did not load, a disk is nearly full).
    Degraded,
    /// Not serving what it should.
    Failing,
}

/// Why a package could not be served, for code that branches on it (update, rollback, the
/// fleet view); the report's `reason` says it in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The package or a file in it could not be read.
    Io,
    /// A file's hash differs from the manifest: corrupt or tampered with.
    HashMismatch,
    /// The package is malformed: not a tar, a missing or oversized file, a path escaping it.
    BadPackage,
    /// The manifest is missing, not TOML, or fails validation.
    BadManifest,
    /// The graph uses operators no available backend runs.
    UnsupportedModel,
    /// The ONNX file cannot be parsed, typed or run.
    InvalidModel,
    /// The model does not fit the device's memory budget.
    MemoryBudget,
    /// The backend the package needs is not installed on the device.
    BackendUnavailable,
    /// The golden self-test does not reproduce on this device.
    SelfTest,
    /// The download could not be completed or did not match its published length and hash.
    Download,
    /// The device has no room for the package.
    DiskFull,
    /// The version failed its probation window after activation (errors, latency or a crash
    /// loop) and was rolled back.
    Probation,
    /// The signed TUF metadata does not vouch for the package (not listed, other length or
    /// hash, or metadata that fails verification: expired, rolled back, badly signed).
    Untrusted,
    /// Anything else.
    Other,
}

/// A model version on its way to a device (downloading, verifying) or refused on the way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct UpdateReport {
    /// The version being installed.
    pub version: String,
    /// `downloading`, `verifying`, `installed` or `failed`.
    pub state: String,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The kind of that failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_kind: Option<FailureKind>,
    /// Bytes received from the server for this version (resumed bytes are not counted twice).
    pub bytes_fetched: u64,
    /// The package's full size.
    pub bytes_total: u64,
    /// The version a delta download rebuilt this one from (absent: a full download).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_from: Option<String>,
}

/// One served (or failed) model in a report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ModelReport {
    /// Model name.
    pub name: String,
    /// Version served (or attempted).
    pub version: String,
    /// `ready`, `loading` or `failed`.
    pub state: String,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The kind of that failure, when the package failed to load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_kind: Option<FailureKind>,
    /// Versions of this model whose packages are on the device (the active one, older ones
    /// kept for rollback, staged ones), highest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub installed: Vec<String>,
    /// The desired version on its way, when it is not the one reported above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateReport>,
    /// Inference requests since the agent started.
    pub requests: u64,
    /// Failed inference requests since the agent started.
    pub errors: u64,
    /// Median latency over the last report interval, milliseconds.
    pub latency_p50_ms: f64,
    /// 99th percentile latency over the last report interval, milliseconds.
    pub latency_p99_ms: f64,
    /// Requests since the previous report, per version that answered them: the additive
    /// counts rollout gates sum over devices and time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<super::quality::VersionWindow>,
    /// The candidate version running in shadow, when the desired state names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<super::quality::ShadowReport>,
    /// The latest closed drift window of the serving version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<super::drift::DriftReport>,
}

/// Resource use of the device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct SystemReport {
    /// CPU busy over the last interval, percent of all cores (0-100).
    pub cpu_percent: f64,
    /// Memory in use on the device, bytes.
    pub mem_used_bytes: u64,
    /// Physical memory, bytes.
    pub mem_total_bytes: u64,
    /// The agent's own resident memory, bytes.
    pub agent_rss_bytes: u64,
    /// Free space for the agent's data, bytes.
    pub disk_free_bytes: u64,
    /// Size of that filesystem, bytes.
    pub disk_total_bytes: u64,
}

/// A state report (heartbeat): `POST /v1/device/heartbeat`, or queued ones in a batch to
/// `POST /v1/device/reports` after an offline period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct StateReport {
    /// Per-agent sequence number, increasing by one per report (gaps show lost reports).
    pub seq: u64,
    /// When the report was made, Unix milliseconds (device clock).
    pub at_ms: i64,
    /// Agent version.
    pub agent_version: String,
    /// Seconds since the agent started.
    pub uptime_s: u64,
    /// Overall health.
    pub health: Health,
    /// Models and their counters.
    pub models: Vec<ModelReport>,
    /// Resource use.
    pub system: SystemReport,
    /// ETag of the desired state the agent has applied.
    pub applied_etag: String,
    /// Present when the hardware changed since enrollment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardware: Option<HardwareProfile>,
}

/// A batch of reports queued while offline, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReportBatch {
    /// The reports.
    pub reports: Vec<StateReport>,
}

/// What the server answers to a report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReportAck {
    /// Reports accepted.
    pub accepted: usize,
    /// Server time, Unix milliseconds (lets the agent see clock skew).
    pub server_time_ms: i64,
    /// ETag of the device's current desired state; poll when it differs from the applied one.
    pub desired_etag: String,
}

/// A model the device should serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DesiredModel {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Where this came from: `assignment:<id>` or `override`.
    pub source: String,
    /// The package to download when the device does not hold this version (absent for
    /// versions published without a package: those must be installed on the device by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<crate::fleet::api::PackageRef>,
    /// A candidate to run in shadow beside this version (a rollout's shadow phase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<super::rollout::ShadowSpec>,
    /// Raised by the server to have a device try again a version whose update failed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl DesiredModel {
    /// Whether name and version follow the model-name grammar ([`crate::names`]); a device
    /// refuses any other before it builds a path from them.
    pub fn is_well_named(&self) -> bool {
        crate::names::ModelName::is_valid(&self.name) && crate::names::Version::is_valid(&self.version)
    }
}

/// Kinds of remote command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// Rescan the model directory and reload changed packages.
    ReloadModels,
    /// Re-hash every package on disk and report mismatches (tamper check).
    ReverifyModels,
    /// Return the agent's recent log lines.
    CollectLogs,
    /// Change runtime settings (`args` is an object of setting → value).
    SetConfig,
    /// Restart the agent process.
    RestartAgent,
}

impl CommandKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::ReloadModels => "reload_models",
            CommandKind::ReverifyModels => "reverify_models",
            CommandKind::CollectLogs => "collect_logs",
            CommandKind::SetConfig => "set_config",
            CommandKind::RestartAgent => "restart_agent",
        }
    }

    /// Parses the wire name.
    pub fn parse(text: &str) -> Option<CommandKind> {
        [
            CommandKind::ReloadModels,
            CommandKind::ReverifyModels,
            CommandKind::CollectLogs,
            CommandKind::SetConfig,
            CommandKind::RestartAgent,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// Lifecycle of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Queued, not yet fetched by the device.
    Pending,
    /// Handed to the device in a desired-state response, no result yet.
    Delivered,
    /// The device ran it successfully.
    Succeeded,
    /// The device ran it and it failed (or refused it).
    Failed,
    /// Not acknowledged before its deadline.
    Expired,
}

impl CommandStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Pending => "pending",
            CommandStatus::Delivered => "delivered",
            CommandStatus::Succeeded => "succeeded",
            CommandStatus::Failed => "failed",
            CommandStatus::Expired => "expired",
        }
    }

    /// Parses the wire name.
    pub fn parse(text: &str) -> Option<CommandStatus> {
        [
            CommandStatus::Pending,
            CommandStatus::Delivered,
            CommandStatus::Succeeded,
            CommandStatus::Failed,
            CommandStatus::Expired,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// A command as the device receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeviceCommand {
    /// Command id; acknowledge with it.
    pub id: i64,
    /// What to do.
    pub kind: CommandKind,
    /// Arguments (an object; empty for most kinds).
    #[schema(value_type = Object)]
    pub args: serde_json::Value,
    /// When it was created, Unix milliseconds.
    pub created_ms: i64,
}

/// `GET /v1/device/desired-state`: what the device should run, plus commands waiting for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DesiredState {
    /// Changes whenever anything below changes; also sent as the `ETag` header.
    pub etag: String,
    /// Models to serve, by name.
    pub models: Vec<DesiredModel>,
    /// Agent settings to apply (setting → value).
    #[schema(value_type = Object)]
    pub config: BTreeMap<String, serde_json::Value>,
    /// Commands not yet acknowledged, oldest first.
    pub commands: Vec<DeviceCommand>,
    /// Heartbeat interval the server asks for, seconds.
    pub heartbeat_interval_s: u32,
    /// The device's labels as the server knows them.
    pub labels: Labels,
}

/// `POST /v1/device/commands/{id}/ack`: the outcome of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CommandAck {
    /// `succeeded` or `failed`.
    pub status: CommandStatus,
    /// What the command produced (log lines, mismatches, ...) or why it failed.
    #[serde(default)]
    #[schema(value_type = Value)]
    pub result: serde_json::Value,
}
