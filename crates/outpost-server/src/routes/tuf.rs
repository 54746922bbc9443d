//! The TUF repository over HTTP: metadata and targets for any TUF client (the agents,
//! python-tuf), read-only and without credentials since every byte is verified against signed
//! metadata; and the operator routes that publish a targets version signed offline.

use super::packages::serve_object;
use crate::auth::{OperatorRole, Viewer};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::state::SharedState;
use crate::tuf::{Release, TufRepoError};
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
    let release = Release { targets: Some(body.to_vec()), roles: Vec::new() };
    publish_release(state, caller, release).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The current `signed` part of a delegated role (version 0 before its first), to sign the
/// next version from.
#[utoipa::path(get, path = "/v1/tuf/roles/{role}", tag = "tuf", security(("bearer" = [])),
    params(("role" = String, Path, description = "Delegated role name (a model namespace)")),
    responses(
        (status = 200, description = "The role's published targets", body = Object),
        (status = 400, description = "Not a delegated role name", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No repository on this server", body = ErrorBody),
    ))]
pub async fn current_role(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiPath(role): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(state.tuf.role(&role)?))
}

/// One release signed offline, published as a whole: `{"targets": METADATA, "roles": {"NAME":
/// METADATA}}`, either part optional. A delegated role is checked against the delegation of
/// the top-level targets (sent along, or published): its keys and threshold, every target
/// inside its paths and a published package.
#[utoipa::path(put, path = "/v1/tuf/release", tag = "tuf", request_body = Object, security(("bearer" = [])),
    responses(
        (status = 200, description = "Published: each role with its new version", body = Object),
        (status = 400, description = "Does not verify, wrong version, outside the role's paths, or not a published package", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the operator role", body = ErrorBody),
        (status = 404, description = "No repository on this server", body = ErrorBody),
        (status = 409, description = "The server lacks the online key the root names", body = ErrorBody),
    ))]
pub async fn put_release(
    State(state): State<SharedState>,
    caller: OperatorRole,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // A server without a repository says so first, whatever the body.
    if !state.tuf.is_configured() {
        return Err(TufRepoError::NotConfigured.into());
    }
    let as_bytes = |v: &serde_json::Value| serde_json::to_vec(v).unwrap_or_default();
    let obj = body.as_object().ok_or_else(|| ApiError::InvalidRequest("the release is a JSON object".into()))?;
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "targets" | "roles")) {
        return Err(ApiError::InvalidRequest(format!("unknown field {k:?}: a release has `targets` and `roles`")));
    }
    let targets = obj.get("targets").filter(|t| !t.is_null()).map(as_bytes);
    let roles = match obj.get("roles") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), as_bytes(v))).collect(),
        Some(_) => return Err(ApiError::InvalidRequest("`roles` maps role names to metadata".into())),
    };
    if targets.is_none() && roles.is_empty() {
        return Err(ApiError::InvalidRequest("an empty release: send `targets`, `roles` or both".into()));
    }
    let published = publish_release(state, caller, Release { targets, roles }).await?;
    Ok(Json(serde_json::Value::Object(published.into_iter().map(|(r, v)| (r, v.into())).collect())))
}

async fn publish_release(
    state: SharedState,
    caller: OperatorRole,
    release: Release,
) -> Result<Vec<(String, u64)>, ApiError> {
    let packages = state.db.channel_packages().await?;
    let repo = state.clone();
    let published: Vec<(String, u64)> = tokio::task::spawn_blocking(move || {
        repo.tuf.put_release(
            &release,
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
    tracing::info!(?published, actor = %caller.actor(), "TUF release published");
    let details = serde_json::Value::Object(published.iter().map(|(r, v)| (r.clone(), (*v).into())).collect());
    let roles: Vec<&str> = published.iter().map(|(r, _)| r.as_str()).collect();
    state.db.audit(crate::state::now_ms(), &caller.actor(), "tuf.release", &roles.join(","), details).await?;
    Ok(published)
}
