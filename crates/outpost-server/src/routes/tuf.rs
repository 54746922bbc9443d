//! The TUF repository over HTTP: metadata and targets for any TUF client (the agents,
//! python-tuf), read-only and without credentials since every byte is verified against signed
//! metadata; and the operator routes that publish a targets version signed offline.

use super::packages::serve_object;
use crate::auth::{OperatorRole, Viewer};
use crate::error::ApiError;
use crate::state::SharedState;
use crate::tuf::TufRepoError;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use outpost_proto::fleet::api::ErrorBody;
use outpost_proto::{ModelName, Version};

impl From<TufRepoError> for ApiError {
    fn from(e: TufRepoError) -> ApiError {
        match e {
            TufRepoError::NotConfigured => ApiError::NotFound(e.to_string()),
            TufRepoError::Refused(m) => ApiError::InvalidRequest(m),
            TufRepoError::MissingKey(m) => ApiError::Conflict(m),
            TufRepoError::Io(m) => ApiError::Internal(format!("TUF repository: {m}")),
        }
    }
}

/// A metadata file of the repository: `N.root.json`, `N.targets.json`, `N.snapshot.json`,
/// `timestamp.json`.
#[utoipa::path(get, path = "/tuf/metadata/{file}", tag = "tuf",
    params(("file" = String, Path, description = "Metadata file name")),
    responses(
        (status = 200, description = "The signed metadata", body = Object),
        (status = 404, description = "No such file, or no repository", body = ErrorBody),
    ))]
pub async fn metadata(State(state): State<SharedState>, Path(file): Path<String>) -> Result<Response, ApiError> {
    let bytes = state.tuf.metadata_file(&file).ok_or_else(|| ApiError::not_found("TUF metadata file", &file))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

/// A target at its consistent-snapshot path `NAME/HASH.NAME-VERSION.opkg`, from the artifact
/// store, with `Range` support.
#[utoipa::path(get, path = "/tuf/targets/{name}/{file}", tag = "tuf",
    params(("name" = String, Path, description = "Model name"), ("file" = String, Path, description = "HASH.NAME-VERSION.opkg")),
    responses(
        (status = 200, description = "The package", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 206, description = "The requested byte range", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 404, description = "No such target", body = ErrorBody),
        (status = 416, description = "The range starts past the end", body = ErrorBody),
    ))]
pub async fn target(
    State(state): State<SharedState>,
    Path((_name, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let sha = file.split_once('.').map(|(h, _)| h).unwrap_or_default();
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(ApiError::not_found("TUF target", &file));
    }
    let size = state.artifacts.size(sha).await?.ok_or_else(|| ApiError::not_found("TUF target", &file))?;
    let sent = state.metrics.package_bytes_sent.clone();
    serve_object(&state, super::packages::Stored::Package(sha), sha, size, &headers, sent).await
}

/// The current top-level targets (`signed` part; version 0 before the first), to sign the
/// next version from.
#[utoipa::path(get, path = "/v1/tuf/targets", tag = "tuf", security(("bearer" = [])),
    responses(
        (status = 200, description = "The published targets", body = Object),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No repository on this server", body = ErrorBody),
    ))]
pub async fn current_targets(
    State(state): State<SharedState>,
    _caller: Viewer,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(state.tuf.targets()?))
}

/// Publishes a targets version signed offline (threshold of the root's targets keys, the
/// next version, every target a published package with that length and sha256); the server
/// then signs a snapshot and timestamp.
#[utoipa::path(put, path = "/v1/tuf/targets", tag = "tuf", request_body = Object, security(("bearer" = [])),
    responses(
        (status = 204, description = "Published"),
        (status = 400, description = "Does not verify, wrong version, or a target that is not a published package", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the operator role", body = ErrorBody),
        (status = 404, description = "No repository on this server", body = ErrorBody),
        (status = 409, description = "The server lacks the online key the root names", body = ErrorBody),
    ))]
pub async fn put_targets(
    State(state): State<SharedState>,
    caller: OperatorRole,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let packages = state.db.channel_packages().await?;
    let repo = state.clone();
    let version = tokio::task::spawn_blocking(move || {
        repo.tuf.put_targets(
            &body,
            |path, length, sha| {
                let (name, file) = path.split_once('/').ok_or("targets are NAME/NAME-VERSION.opkg")?;
                let version = file
                    .strip_prefix(&format!("{name}-"))
                    .and_then(|f| f.strip_suffix(".opkg"))
                    .ok_or("targets are NAME/NAME-VERSION.opkg")?;
                let (Ok(name), Ok(version)) = (ModelName::parse(name), Version::parse(version)) else {
                    return Err("the name or version breaks the model-name grammar".into());
                };
                match packages.get(&(name.to_string(), version.to_string())) {
                    Some(p) if p.sha256 == sha && p.size_bytes == length => Ok(()),
                    Some(p) => Err(format!("the registry holds {} bytes with sha256 {}", p.size_bytes, p.sha256)),
                    None => Err(format!("{name}@{version} is not a published package")),
                }
            },
            std::time::SystemTime::now(),
        )
    })
    .await
    .map_err(|e| ApiError::Internal(format!("TUF publish panicked: {e}")))??;
    tracing::info!(version, actor = %caller.actor(), "TUF targets published");
    Ok(StatusCode::NO_CONTENT)
}
