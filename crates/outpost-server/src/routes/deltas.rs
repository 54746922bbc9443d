//! Delta downloads: the plan that rebuilds a version from the one a device runs, and the plan's
//! blobs by `Range` (a device fetches only the pieces it does not hold). Both are built on the
//! first request for a pair and then served from the artifact store. Also each version's
//! piece index, for operators.

use super::packages::{serve_object, Stored};
use crate::artifacts::delta::DIR;
use crate::auth::{SignedDevice, Viewer};
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::state::SharedState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use outpost_proto::fleet::api::{ErrorBody, ModelVersion, PackageRef};
use outpost_proto::{ModelName, Version};

async fn package_of(state: &SharedState, name: &ModelName, version: &Version) -> Result<PackageRef, ApiError> {
    match state.db.model_version(name.as_str(), version.as_str()).await? {
        Some(ModelVersion { package: Some(p), .. }) => Ok(p),
        Some(_) => Err(ApiError::NotFound(format!("model {name}@{version} has no package"))),
        None => Err(ApiError::not_found("model version", &format!("{name}@{version}"))),
    }
}

async fn pair(
    state: &SharedState,
    name: &ModelName,
    version: &Version,
    base: &Version,
) -> Result<crate::artifacts::delta::StoredDelta, ApiError> {
    let new = package_of(state, name, version).await?;
    let old = package_of(state, name, base).await?;
    if new.sha256 == old.sha256 {
        return Err(ApiError::NotFound(format!("{name}@{version} and @{base} are the same bytes; nothing to fetch")));
    }
    state.deltas.get_or_build(&state.artifacts, &new, &old).await
}

/// The plan (zstd-compressed JSON) that rebuilds `version` from `base`, built on first request.
#[utoipa::path(get, path = "/v1/device/packages/{name}/{version}/delta/{base}", tag = "device",
    params(
        ("name" = String, Path, description = "Model name"),
        ("version" = String, Path, description = "The version wanted"),
        ("base" = String, Path, description = "The version the device runs"),
    ),
    responses(
        (status = 200, description = "The plan", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 400, description = "invalid_request: a name or version breaks the grammar", body = ErrorBody),
        (status = 401, description = "bad_signature, stale_request or unknown_device", body = ErrorBody),
        (status = 404, description = "A version is unknown, has no package, or both are the same bytes", body = ErrorBody),
        (status = 503, description = "database or artifact store unavailable", body = ErrorBody),
    ))]
pub async fn device_delta_plan(
    State(state): State<SharedState>,
    ApiPath((name, version, base)): ApiPath<(ModelName, Version, Version)>,
    headers: HeaderMap,
    _signed: SignedDevice,
) -> Result<Response, ApiError> {
    let stored = pair(&state, &name, &version, &base).await?;
    let sent = state.metrics.delta_bytes_sent.clone();
    serve_object(&state, Stored::Derived(DIR, &stored.plan), &stored.plan, stored.plan_size, &headers, sent).await
}

/// The plan's blobs, whole or by `Range`.
#[utoipa::path(get, path = "/v1/device/packages/{name}/{version}/delta/{base}/blobs", tag = "device",
    params(
        ("name" = String, Path, description = "Model name"),
        ("version" = String, Path, description = "The version wanted"),
        ("base" = String, Path, description = "The version the device runs"),
    ),
    responses(
        (status = 200, description = "The blob file", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 206, description = "The requested byte range", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 400, description = "invalid_request: a name or version breaks the grammar", body = ErrorBody),
        (status = 401, description = "bad_signature, stale_request or unknown_device", body = ErrorBody),
        (status = 404, description = "A version is unknown, has no package, or both are the same bytes", body = ErrorBody),
        (status = 416, description = "The range starts past the end", body = ErrorBody),
        (status = 503, description = "database or artifact store unavailable", body = ErrorBody),
    ))]
pub async fn device_delta_blobs(
    State(state): State<SharedState>,
    ApiPath((name, version, base)): ApiPath<(ModelName, Version, Version)>,
    headers: HeaderMap,
    _signed: SignedDevice,
) -> Result<Response, ApiError> {
    let stored = pair(&state, &name, &version, &base).await?;
    let sent = state.metrics.delta_bytes_sent.clone();
    serve_object(&state, Stored::Derived(DIR, &stored.blobs), &stored.blobs, stored.blobs_size, &headers, sent).await
}

/// The piece index of a version's package: each ONNX tensor and file chunk with its hash.
#[utoipa::path(get, path = "/v1/models/{name}/{version}/index", tag = "models",
    params(("name" = String, Path, description = "Model name"), ("version" = String, Path, description = "Version")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The index (JSON: size, sha256, pieces)", body = serde_json::Value),
        (status = 400, description = "invalid_request: the name or version breaks the grammar", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such version, or it has no package", body = ErrorBody),
        (status = 503, description = "database or artifact store unavailable", body = ErrorBody),
    ))]
pub async fn package_index(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiPath((name, version)): ApiPath<(ModelName, Version)>,
) -> Result<Json<outpost_delta::Index>, ApiError> {
    let package = package_of(&state, &name, &version).await?;
    Ok(Json(state.deltas.index(&state.artifacts, &package).await?))
}
