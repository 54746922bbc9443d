//! Operator REST API v1 messages: inventory, fleet summary, tokens, model registry,
//! assignments, commands, audit log, errors and pagination.

use super::device::{CommandKind, CommandStatus, HardwareProfile, Health, ModelReport, SystemReport};
use super::selector::Labels;
use crate::names::{ModelName, NameError, Version, MODEL_NAME_PATTERN, VERSION_PATTERN};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Every error the API returns: a stable machine code and a human message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code (`unauthorized`, `forbidden`, `not_found`, `conflict`, `invalid_request`,
    /// `replayed_request`, `device_revoked`, `database_unavailable`, ...).
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
}

/// One page of a listing; pass `next_cursor` back as `cursor` for the next page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// Items on this page.
    pub items: Vec<T>,
    /// Cursor of the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_cursor: Option<String>,
}

/// Operator roles, each including the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read inventory, models, summaries.
    Viewer,
    /// Also label devices, send commands, create enrollment tokens, publish models, assign.
    Operator,
    /// Also manage API tokens, revoke devices, read the audit log.
    Admin,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses the wire name.
    pub fn parse(text: &str) -> Option<Role> {
        [Role::Viewer, Role::Operator, Role::Admin].into_iter().find(|r| r.as_str() == text)
    }
}

/// Connectivity derived from the last heartbeat and the server's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Heard from within `stale_after`.
    Online,
    /// Heard from within `offline_after`, but not within `stale_after`.
    Stale,
    /// Not heard from within `offline_after`, or never.
    Offline,
    /// Revoked: every request it makes is refused.
    Revoked,
}

impl DeviceStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Online => "online",
            DeviceStatus::Stale => "stale",
            DeviceStatus::Offline => "offline",
            DeviceStatus::Revoked => "revoked",
        }
    }

    /// Parses the wire name.
    pub fn parse(text: &str) -> Option<DeviceStatus> {
        [DeviceStatus::Online, DeviceStatus::Stale, DeviceStatus::Offline, DeviceStatus::Revoked]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A device in the inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Device {
    /// Device id (derived from its public key).
    pub id: String,
    /// Human name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Connectivity.
    pub status: DeviceStatus,
    /// Last heartbeat, Unix milliseconds; absent when never heard from.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_seen_ms: Option<i64>,
    /// When it enrolled, Unix milliseconds.
    pub enrolled_ms: i64,
    /// When it was revoked, Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub revoked_ms: Option<i64>,
    /// Agent version from the last report.
    pub agent_version: String,
    /// Health from the last report.
    pub health: Health,
    /// Hardware profile.
    pub hardware: HardwareProfile,
    /// Models from the last report.
    pub models: Vec<ModelReport>,
    /// Resource use from the last report.
    pub system: SystemReport,
    /// ETag of the desired state the device last said it applied.
    pub applied_etag: String,
}

/// `PATCH /v1/devices/{id}/labels`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct LabelChange {
    /// Labels to add or overwrite.
    pub set: Labels,
    /// Label keys to remove.
    pub remove: Vec<String>,
}

/// `PUT /v1/devices/{id}/override`: per-device desired state that wins over assignments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct DeviceOverride {
    /// Model name → version; an empty version removes that model from the device. Names and
    /// versions follow [`crate::names`].
    #[schema(schema_with = override_models_schema)]
    pub models: BTreeMap<ModelName, String>,
    /// Agent settings (setting → value).
    #[schema(value_type = Object)]
    pub config: BTreeMap<String, serde_json::Value>,
}

/// Most models one override may name.
pub const OVERRIDE_MAX_MODELS: usize = 256;

impl DeviceOverride {
    /// Checks what serde cannot: every version is empty (remove) or follows the grammar, and
    /// the map is not larger than [`OVERRIDE_MAX_MODELS`].
    pub fn validate(&self) -> Result<(), NameError> {
        if self.models.len() > OVERRIDE_MAX_MODELS {
            return Err(NameError {
                what: "override",
                value: format!("{} models", self.models.len()),
                rule: "an override names at most 256 models",
            });
        }
        for version in self.models.values().filter(|v| !v.is_empty()) {
            Version::parse(version)?;
        }
        Ok(())
    }
}

fn override_models_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let version = ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(crate::names::NAME_MAX_LEN))
        .pattern(Some(format!("^$|{VERSION_PATTERN}")))
        .description(Some("a version, or empty to remove the model from the device"));
    let name = ObjectBuilder::new().schema_type(Type::String).pattern(Some(MODEL_NAME_PATTERN));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(name))
        .additional_properties(Some(version))
        .max_properties(Some(OVERRIDE_MAX_MODELS))
        .build()
}

/// Counts of devices by one attribute.
pub type Counts = BTreeMap<String, u64>;

/// `GET /v1/fleet/summary`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FleetSummary {
    /// Devices matched.
    pub devices: u64,
    /// By status (`online`, `stale`, `offline`, `revoked`).
    pub by_status: Counts,
    /// By health from the last report.
    pub by_health: Counts,
    /// By agent version.
    pub by_agent_version: Counts,
    /// By served model, `name@version`.
    pub by_model_version: Counts,
    /// Devices a version is on its way to, by `name@version`, then by update state
    /// (`downloading`, `verifying`, `installed`, `failed`).
    #[serde(default)]
    pub updates_by_model_version: BTreeMap<String, Counts>,
}

/// `POST /v1/enrollment-tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateEnrollmentToken {
    /// How many devices may enroll with it (default 1).
    #[serde(default = "one")]
    pub uses: u32,
    /// Lifetime in seconds (default 86,400).
    #[serde(default = "one_day")]
    pub expires_in_s: u64,
    /// Labels applied to devices that enroll with it.
    #[serde(default)]
    pub labels: Labels,
    /// Free-text note.
    #[serde(default)]
    pub note: String,
}

fn one() -> u32 {
    1
}

fn one_day() -> u64 {
    86_400
}

/// An enrollment token (the secret appears only in the create response).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentToken {
    /// Token id.
    pub id: String,
    /// The secret to give to devices; only present when just created.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub secret: Option<String>,
    /// Devices allowed in total.
    pub uses: u32,
    /// Devices enrolled so far.
    pub used: u32,
    /// Expiry, Unix milliseconds.
    pub expires_ms: i64,
    /// Labels applied at enrollment.
    pub labels: Labels,
    /// Note.
    pub note: String,
    /// Who created it.
    pub created_by: String,
    /// When, Unix milliseconds.
    pub created_ms: i64,
    /// Revoked tokens enroll nobody.
    pub revoked: bool,
}

/// `POST /v1/api-tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateApiToken {
    /// Who or what uses it.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Lifetime in seconds; absent for no expiry.
    #[serde(default)]
    pub expires_in_s: Option<u64>,
}

/// An operator API token (the secret appears only in the create response).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiToken {
    /// Token id.
    pub id: String,
    /// The bearer secret; only present when just created.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub secret: Option<String>,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Expiry, Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expires_ms: Option<i64>,
    /// Who created it.
    pub created_by: String,
    /// When, Unix milliseconds.
    pub created_ms: i64,
    /// Revoked tokens authenticate nobody.
    pub revoked: bool,
}

/// `POST /v1/models`: a model registry entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PublishModel {
    /// Model name.
    pub name: ModelName,
    /// Version.
    pub version: Version,
    /// Free-form metadata (task, input shapes, sha256, size, metrics...).
    #[serde(default)]
    #[schema(value_type = Value)]
    pub metadata: serde_json::Value,
}

/// One model version in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelVersion {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Metadata.
    #[schema(value_type = Value)]
    pub metadata: serde_json::Value,
    /// Who published it.
    pub published_by: String,
    /// When, Unix milliseconds.
    pub published_ms: i64,
    /// The package in the artifact store, when the version was published with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<PackageRef>,
    /// The task the package's manifest declares (`classification`, `detection`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

/// A package's identity in the artifact store: what a download must hash to, and its length.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct PackageRef {
    /// Lowercase hex sha256 of the `.opkg` bytes.
    pub sha256: String,
    /// Length in bytes.
    pub size_bytes: u64,
}

/// `POST /v1/assignments`: run a model version on every device a selector matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateAssignment {
    /// Label selector.
    pub selector: String,
    /// Model name (must be in the registry).
    pub model: ModelName,
    /// Model version (must be in the registry).
    pub version: Version,
}

/// An assignment; when several match a device for the same model, the newest wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Assignment {
    /// Assignment id.
    pub id: i64,
    /// Label selector.
    pub selector: String,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// Who created it.
    pub created_by: String,
    /// When, Unix milliseconds.
    pub created_ms: i64,
}

/// `POST /v1/devices/{id}/commands`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateCommand {
    /// What to do.
    pub kind: CommandKind,
    /// Arguments (an object).
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub args: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// A command as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Command {
    /// Command id.
    pub id: i64,
    /// Target device.
    pub device_id: String,
    /// What to do.
    pub kind: CommandKind,
    /// Arguments.
    #[schema(value_type = Object)]
    pub args: serde_json::Value,
    /// Lifecycle state.
    pub status: CommandStatus,
    /// Result from the device's acknowledgement.
    #[schema(value_type = Value)]
    pub result: serde_json::Value,
    /// Who created it.
    pub created_by: String,
    /// When, Unix milliseconds.
    pub created_ms: i64,
    /// When the device acknowledged it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub acked_ms: Option<i64>,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Sequence number.
    pub id: i64,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// Who: `token:<name>` for operators, `device:<id>` for devices, `server` for the server.
    pub actor: String,
    /// What (`device.revoke`, `device.label`, `token.create`, ...).
    pub action: String,
    /// Which object.
    pub target: String,
    /// Details.
    #[schema(value_type = Value)]
    pub details: serde_json::Value,
}
