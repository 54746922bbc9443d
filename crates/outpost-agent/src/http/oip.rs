//! Open Inference Protocol v2 handlers: health, metadata, readiness, inference and the
//! repository index of Triton's model repository extension (which carries load failures).

use super::codec::{self, EncodedResponse};
use super::{body_error, resolve, ApiError, ApiState, ExportQuery};
use crate::shadow::Sample;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use outpost_proto::oip::{
    LiveResponse, ModelMetadata, ModelReadyResponse, ReadyResponse, ServerMetadata, TensorMetadata,
    INFERENCE_HEADER_CONTENT_LENGTH,
};
use outpost_runtime::backend::IoSpec;
use outpost_runtime::LoadedModel;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

type AppState = State<Arc<ApiState>>;

pub async fn live() -> Json<LiveResponse> {
    Json(LiveResponse { live: true })
}

/// Ready once the model directory has been scanned; the spec answers "false" with a 4xx.
pub async fn ready(State(state): AppState) -> Response {
    let ready = state.is_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    (status, Json(ReadyResponse { ready })).into_response()
}

pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "outpost".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec!["binary_tensor_data".into(), "model_repository".into()],
    })
}

fn tensors(specs: &[IoSpec]) -> Vec<TensorMetadata> {
    specs
        .iter()
        .map(|s| TensorMetadata { name: s.name.clone(), datatype: s.dtype.to_string(), shape: s.oip_shape() })
        .collect()
}

fn metadata(state: &ApiState, model: &LoadedModel) -> ModelMetadata {
    let m = &model.manifest;
    let mut p = serde_json::Map::new();
    p.insert("backend".into(), json!(model.backend().name()));
    p.insert("task".into(), json!(m.model.task));
    p.insert("sha256".into(), json!(model.model_sha256));
    if !m.model.description.is_empty() {
        p.insert("description".into(), json!(m.model.description));
    }
    if let Some(reason) = &model.fallback_reason {
        p.insert("backend_fallback_reason".into(), json!(reason));
    }
    // KServe metadata has -1 for a dynamic size; the bounds the manifest sets say more.
    if !m.ranges.is_empty() {
        let ranges: serde_json::Map<String, serde_json::Value> =
            m.ranges.iter().map(|(k, r)| (k.clone(), json!({"min": r.min, "max": r.max}))).collect();
        p.insert("dynamic_dims".into(), serde_json::Value::Object(ranges));
    }
    if let Some(f) = state.store.slot(model.name()).and_then(|s| s.failure) {
        p.insert("last_load_error".into(), json!(f.reason));
        p.insert("last_load_error_kind".into(), json!(f.kind));
    }
    ModelMetadata {
        name: model.name().to_string(),
        versions: vec![model.version().to_string()],
        platform: model.backend().platform().to_string(),
        inputs: tensors(model.inputs()),
        outputs: tensors(model.engine.outputs()),
        parameters: Some(p),
    }
}

pub async fn model_metadata(
    State(state): AppState,
    Path(model): Path<String>,
) -> Result<Json<ModelMetadata>, ApiError> {
    let m = resolve(&state, &model, None)?;
    Ok(Json(metadata(&state, &m)))
}

pub async fn model_version_metadata(
    State(state): AppState,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, ApiError> {
    let m = resolve(&state, &model, Some(&version))?;
    Ok(Json(metadata(&state, &m)))
}

fn readiness(state: &ApiState, model: &str, version: Option<&str>) -> Response {
    match resolve(state, model, version) {
        Ok(_) => Json(ModelReadyResponse { name: model.to_string(), ready: true }).into_response(),
        Err(e) if e.status == StatusCode::NOT_FOUND => e.into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, Json(ModelReadyResponse { name: model.to_string(), ready: false }))
            .into_response(),
    }
}

pub async fn model_ready(State(state): AppState, Path(model): Path<String>) -> Response {
    readiness(&state, &model, None)
}

pub async fn model_version_ready(State(state): AppState, Path((model, version)): Path<(String, String)>) -> Response {
    readiness(&state, &model, Some(&version))
}

/// Every model in the directory with its state, and the reason when it cannot serve.
pub async fn repository_index(
    State(state): AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(body_error)?;
    let only_ready = if body.is_empty() {
        false
    } else {
        let v: Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
        v.get("ready").and_then(Value::as_bool).unwrap_or(false)
    };
    let mut out = Vec::new();
    for (name, slot) in state.store.slots() {
        match (&slot.active, &slot.failure) {
            (Some(m), failure) => out.push(json!({
                "name": name, "version": m.version(), "state": "READY",
                "reason": failure.as_ref().map(|f| format!("version {} not loaded: {}", f.version.as_deref().unwrap_or("?"), f.reason)).unwrap_or_default(),
            })),
            (None, Some(f)) if !only_ready => out.push(json!({
                "name": name, "version": f.version.clone().unwrap_or_default(), "state": "UNAVAILABLE", "reason": f.reason,
                "failure_kind": f.kind,
            })),
            _ => {}
        }
    }
    Ok(Json(Value::Array(out)))
}

pub async fn infer(
    State(state): AppState,
    Path(model): Path<String>,
    query: Result<Query<ExportQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run_infer(&state, &model, None, query, &headers, body).await
}

pub async fn infer_version(
    State(state): AppState,
    Path((model, version)): Path<(String, String)>,
    query: Result<Query<ExportQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run_infer(&state, &model, Some(&version), query, &headers, body).await
}

async fn run_infer(
    state: &ApiState,
    name: &str,
    version: Option<&str>,
    query: Result<Query<ExportQuery>, QueryRejection>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let asked = match query {
        Ok(Query(q)) => q.export,
        Err(e) => return ApiError::bad_request(format!("bad query: {}", e.body_text())).into_response(),
    };
    let started = Instant::now();
    let model = resolve(state, name, version);
    let result = match &model {
        Ok(model) => infer_inner(state, model, headers, body).await,
        Err(e) => Err(e.clone()),
    };
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status,
    };
    // Only models the agent knows get series, so random names cannot grow the metric families.
    if state.store.slot(name).is_some() {
        let served_by = model.as_ref().ok().map(|m| m.version());
        state.metrics.request(name, served_by, "infer", status.as_u16(), started.elapsed());
    }
    match result {
        Ok(Answered { encoded: enc, outputs, body, header_len }) => {
            if let (Some(export), Ok(serving)) = (state.export.as_ref().filter(|e| e.wants(name, asked)), &model) {
                export_outputs(export, serving, &enc, started.elapsed());
            }
            if let Ok(serving) = model {
                // The answer is ready; what the shadow needs moves over without a copy.
                state.shadows.offer(name, move || Sample::Infer { serving, body, header_len, outputs });
            }
            let mut resp = enc.body.into_response();
            let h = resp.headers_mut();
            match enc.header_len {
                Some(n) => {
                    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
                    h.insert(INFERENCE_HEADER_CONTENT_LENGTH, HeaderValue::from(n));
                }
                None => {
                    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}

/// Exports an answer's output tensors as the client got them (JSON answers; a binary answer's
/// tensors are raw data and are exported as `truncated`).
fn export_outputs(
    export: &crate::export::Exporter,
    model: &LoadedModel,
    enc: &EncodedResponse,
    took: std::time::Duration,
) {
    let outputs = match enc.header_len {
        None => serde_json::from_slice::<Value>(&enc.body).ok().and_then(|mut v| v.get_mut("outputs").map(Value::take)),
        Some(_) => None,
    };
    let latency_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    export.result(model.name(), model.version(), outputs.as_ref(), None, latency_us);
}

/// A computed answer, with what a shadow comparison of it needs.
struct Answered {
    encoded: EncodedResponse,
    outputs: Vec<outpost_runtime::Tensor>,
    body: Bytes,
    header_len: Option<usize>,
}

async fn infer_inner(
    state: &ApiState,
    model: &Arc<LoadedModel>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Answered, ApiError> {
    let name = model.name();
    let body = body.map_err(body_error)?;
    let header_len = match headers.get(INFERENCE_HEADER_CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| ApiError::bad_request("Inference-Header-Content-Length must be a byte count"))?,
        ),
    };
    let parsed = codec::parse_request(&body, header_len)?;
    let inputs = codec::decode_inputs(&parsed, model.inputs())?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    model.infer(inputs, Box::new(move |done| drop(tx.send(done))))?;
    let done = rx
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("model `{name}` stopped while running")))?;
    state.metrics.inference(name, done.queued, done.run);
    let outputs = done.result?;
    let encoded =
        codec::encode_response(&parsed.request, model.name(), model.version(), model.engine.outputs(), &outputs)?;
    drop(parsed);
    Ok(Answered { encoded, outputs, body, header_len })
}
