//! Exported records: devices send them (`POST /v1/device/results`), operators read them
//! (`GET /v1/results`).
//!
//! Each record is checked on its own: one that does not name the sending device in its id, has
//! no known kind, or is too large is refused with its reason and the rest of the batch is
//! stored, so one bad record cannot make a device drop the good ones around it.

use super::{given, page_args};
use crate::auth::{SignedDevice, Viewer};
use crate::db::results::{ResultFilter, ResultRow};
use crate::error::ApiError;
use crate::extract::{parse_json, ApiQuery};
use crate::state::{now_ms, SharedState};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::Json;
use outpost_proto::fleet::api::{ErrorBody, Page};
use outpost_proto::fleet::results::{
    RejectedRecord, ResultBatch, ResultsAck, StoredResult, MAX_RESULTS_PER_BATCH, MAX_RESULT_BYTES,
};
use serde::Deserialize;
use std::io::Read;
use utoipa::IntoParams;

/// Kinds of record the server stores.
const KINDS: &[&str] = &["result", "event", "alert", "telemetry"];
/// Longest model name, version or record id stored.
const MAX_FIELD: usize = 256;
/// Largest body after zstd decompression: 500 records of a few hundred bytes are what an agent
/// sends; this bounds what one signed request can make the server inflate.
const MAX_INFLATED: u64 = 8 << 20;

/// The body as JSON bytes: inflated when the device compressed it.
fn inflate(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("identity").trim();
    match encoding {
        "identity" | "" => Ok(body.to_vec()),
        "zstd" => {
            let decoder = zstd::stream::Decoder::new(body)
                .map_err(|e| ApiError::InvalidRequest(format!("the zstd body does not decode: {e}")))?;
            let mut out = Vec::new();
            decoder
                .take(MAX_INFLATED + 1)
                .read_to_end(&mut out)
                .map_err(|e| ApiError::InvalidRequest(format!("the zstd body does not decode: {e}")))?;
            if out.len() as u64 > MAX_INFLATED {
                return Err(ApiError::PayloadTooLarge(format!(
                    "the body inflates past {MAX_INFLATED} bytes; send less"
                )));
            }
            Ok(out)
        }
        other => {
            Err(ApiError::InvalidRequest(format!("Content-Encoding {other:?}: send zstd or an uncompressed body")))
        }
    }
}

fn text_field<'a>(v: &'a serde_json::Value, key: &str) -> Result<Option<&'a str>, String> {
    match v.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.len() <= MAX_FIELD => Ok(Some(s)),
        Some(serde_json::Value::String(_)) => Err(format!("{key} is longer than {MAX_FIELD} bytes")),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

/// Checks one record; returns the row to store.
fn check<'a>(device_id: &str, v: &'a serde_json::Value) -> Result<ResultRow<'a>, String> {
    if !v.is_object() {
        return Err("a record must be a JSON object".into());
    }
    let id = text_field(v, "id")?.ok_or("the record has no id")?;
    if !id.strip_prefix(device_id).is_some_and(|rest| rest.starts_with('/')) {
        return Err(format!("id {id:?} does not start with the sending device's id"));
    }
    let kind = text_field(v, "kind")?.ok_or("the record has no kind")?;
    if !KINDS.contains(&kind) {
        return Err(format!("kind {kind:?} is not one of {KINDS:?}"));
    }
    let at_ms = v.get("at_ms").and_then(serde_json::Value::as_i64).ok_or("at_ms must be an integer (Unix ms)")?;
    let record = serde_json::to_string(v).map_err(|e| e.to_string())?;
    if record.len() > MAX_RESULT_BYTES {
        return Err(format!("the record is larger than {MAX_RESULT_BYTES} bytes"));
    }
    Ok(ResultRow { id, kind, model: text_field(v, "model")?, version: text_field(v, "version")?, at_ms, record })
}

/// Stores exported records (results, events, alerts, telemetry), each once per id.
#[utoipa::path(post, path = "/v1/device/results", tag = "device", request_body = ResultBatch,
    security(("device_id" = [], "device_timestamp" = [], "device_nonce" = [], "device_signature" = [])),
    responses(
        (status = 200, description = "Stored; records refused one by one are listed with why", body = ResultsAck),
        (status = 400, description = "invalid_request: not a batch, more than 1,000 records, a body that does not decode", body = ErrorBody),
        (status = 401, description = "bad_signature, stale_request or unknown_device", body = ErrorBody),
        (status = 403, description = "device_revoked", body = ErrorBody),
        (status = 409, description = "replayed_request", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "database_unavailable; retry after Retry-After", body = ErrorBody),
    ))]
pub async fn device_results(
    State(state): State<SharedState>,
    headers: HeaderMap,
    signed: SignedDevice,
) -> Result<Json<ResultsAck>, ApiError> {
    let body = inflate(&headers, &signed.body)?;
    let batch: ResultBatch = parse_json(&body)?;
    if batch.records.len() > MAX_RESULTS_PER_BATCH {
        return Err(ApiError::InvalidRequest(format!("send at most {MAX_RESULTS_PER_BATCH} records per batch")));
    }
    let mut rows = Vec::with_capacity(batch.records.len());
    let mut rejected = Vec::new();
    for (index, record) in batch.records.iter().enumerate() {
        match check(&signed.device_id, record) {
            Ok(row) => rows.push(row),
            Err(reason) => rejected.push(RejectedRecord { index, reason }),
        }
    }
    let stored = state.db.write_results(&signed.device_id, &rows, now_ms()).await?;
    Ok(Json(ResultsAck { stored, duplicates: rows.len() as u64 - stored, rejected }))
}

/// Which exported records to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResultQuery {
    /// Only this device's records.
    pub device: Option<String>,
    /// Only this model's records.
    pub model: Option<String>,
    /// Only this kind: `result`, `event`, `alert` or `telemetry`.
    pub kind: Option<String>,
    /// Cursor from the previous page (or the last `next_cursor` seen, to follow new records).
    pub cursor: Option<String>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
}

/// A filter's value; an empty one is no filter, as in the other listings.
/// Exported records, oldest first.
#[utoipa::path(get, path = "/v1/results", tag = "results", params(ResultQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of records", body = Page<StoredResult>),
        (status = 400, description = "invalid_request: bad kind, cursor or limit", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 503, description = "database_unavailable or query_timeout", body = ErrorBody),
    ))]
pub async fn list_results(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiQuery(q): ApiQuery<ResultQuery>,
) -> Result<Json<Page<StoredResult>>, ApiError> {
    let (cursor, limit) = page_args(q.cursor.as_deref(), q.limit)?;
    let kind = given(&q.kind);
    if let Some(kind) = kind.filter(|k| !KINDS.contains(k)) {
        return Err(ApiError::InvalidRequest(format!("kind {kind:?} is not one of {KINDS:?}")));
    }
    let filter = ResultFilter { device: given(&q.device), model: given(&q.model), kind };
    Ok(Json(state.db.list_results(&filter, cursor, limit).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_must_name_its_device_a_known_kind_and_a_time() {
        let ok = serde_json::json!({"id": "d-1/normal/3", "kind": "result", "model": "m", "at_ms": 5});
        let row = check("d-1", &ok).unwrap();
        assert_eq!(
            (row.id, row.kind, row.model, row.version, row.at_ms),
            ("d-1/normal/3", "result", Some("m"), None, 5)
        );
        for (bad, why) in [
            (serde_json::json!({"id": "d-2/normal/3", "kind": "result", "at_ms": 5}), "sending device"),
            (serde_json::json!({"id": "d-10/normal/3", "kind": "result", "at_ms": 5}), "sending device"),
            (serde_json::json!({"id": "d-1/normal/3", "kind": "raw", "at_ms": 5}), "kind"),
            (serde_json::json!({"id": "d-1/normal/3", "kind": "result"}), "at_ms"),
            (serde_json::json!({"id": "d-1/normal/3", "kind": "result", "at_ms": 5, "model": 7}), "model"),
            (serde_json::json!([1, 2]), "object"),
        ] {
            let err = check("d-1", &bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn zstd_bodies_inflate_within_a_bound_and_unknown_encodings_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, "zstd".parse().unwrap());
        let packed = zstd::encode_all(&b"{\"records\":[]}"[..], 3).unwrap();
        assert_eq!(inflate(&h, &packed).unwrap(), b"{\"records\":[]}");
        assert!(inflate(&h, b"not zstd").is_err());
        let bomb = zstd::encode_all(&vec![b' '; (MAX_INFLATED + 10) as usize][..], 19).unwrap();
        assert!(matches!(inflate(&h, &bomb), Err(ApiError::PayloadTooLarge(_))));
        h.insert(header::CONTENT_ENCODING, "br".parse().unwrap());
        assert!(inflate(&h, b"{}").is_err());
    }
}
