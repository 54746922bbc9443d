//! Exported results on the control plane: what a device's HTTP export sink sends
//! (`POST /v1/device/results`) and what operators read back (`GET /v1/results`).
//!
//! A device sends `{"records": [...]}`, each record the JSON object its export outbox holds (see
//! the agent's `export::record`): `id` (`<device>/<priority>/<seq>`), `kind`, `model`,
//! `version`, `at_ms`, `labels` and the kind's own fields. The body may be zstd-compressed
//! (`Content-Encoding: zstd`); the signature covers the bytes as sent.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Records per `POST /v1/device/results` at most.
pub const MAX_RESULTS_PER_BATCH: usize = 1000;
/// Bytes of one record's JSON at most.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;

/// A batch of exported records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResultBatch {
    /// The records, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub records: Vec<serde_json::Value>,
}

/// What the server answers to a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResultsAck {
    /// Records stored now.
    pub stored: u64,
    /// Records already stored before (a resent batch): at-least-once delivery, stored once.
    pub duplicates: u64,
    /// Records refused, with why (the rest of the batch is stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<RejectedRecord>,
}

/// A record the server refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RejectedRecord {
    /// Its position in the batch.
    pub index: usize,
    /// Why.
    pub reason: String,
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StoredResult {
    /// Position in the server's store (the page cursor).
    pub seq: i64,
    /// The record's id, unique per device.
    pub id: String,
    /// Device that sent it.
    pub device_id: String,
    /// `result`, `event`, `alert` or `telemetry`.
    pub kind: String,
    /// Model it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// That model's version, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When it happened on the device, Unix ms (device clock).
    pub at_ms: i64,
    /// When the server stored it, Unix ms.
    pub received_ms: i64,
    /// The record as the device sent it.
    #[schema(value_type = Object)]
    pub record: serde_json::Value,
}
