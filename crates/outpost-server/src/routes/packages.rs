//! Model packages: publishing one (the bytes go to the artifact store, the manifest fills the
//! registry entry) and downloading one, whole or by `Range`, for operators and devices.

use crate::artifacts::range::{self, RangeAsk};
use crate::artifacts::upload::spool;
use crate::artifacts::verify::verify_package;
use crate::auth::{OperatorRole, SignedDevice, Viewer};
use crate::db::PackagePublish;
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::state::{now_ms, SharedState};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use outpost_proto::fleet::api::{ErrorBody, ModelVersion, PackageRef};
use outpost_proto::{ModelName, Version};

/// Response header naming the package's sha256 (also its ETag, quoted).
pub const HEADER_SHA256: &str = "x-outpost-sha256";

/// Publishes a model package: the body is the `.opkg` file. Name, version and task come from
/// its manifest; its sha256 and size are measured here. The same bytes again are 200 (nothing
/// changes); other bytes under a published name@version are 409.
#[utoipa::path(post, path = "/v1/model-packages", tag = "models",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The .opkg file"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Published", body = ModelVersion),
        (status = 200, description = "Already published with these bytes", body = ModelVersion),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the operator role", body = ErrorBody),
        (status = 409, description = "This name@version is published with other bytes", body = ErrorBody),
        (status = 413, description = "Larger than max_package_bytes", body = ErrorBody),
        (status = 422, description = "invalid_package: not a tar, bad manifest, missing file or hash mismatch", body = ErrorBody),
        (status = 503, description = "overloaded (too many uploads at once), database or artifact store unavailable", body = ErrorBody),
        (status = 507, description = "insufficient_storage", body = ErrorBody),
    ))]
pub async fn publish_package(
    State(state): State<SharedState>,
    caller: OperatorRole,
    body: Body,
) -> Result<Response, ApiError> {
    let _permit = state.uploads.clone().try_acquire_owned().map_err(|_| {
        ApiError::Overloaded(format!(
            "the server is receiving its limit of {} uploads at once; retry shortly",
            state.config.max_concurrent_uploads
        ))
    })?;
    let spooled = spool(body, &state.config.data_dir.join("uploads"), state.config.max_package_bytes).await?;
    let path = spooled.path.clone();
    let manifest = tokio::task::spawn_blocking(move || verify_package(&path))
        .await
        .map_err(|e| ApiError::Internal(format!("package check panicked: {e}")))?
        .map_err(|e| ApiError::InvalidPackage(format!("the upload is not a valid model package: {e}")))?;
    let name =
        ModelName::parse(&manifest.model.name).map_err(|e| ApiError::InvalidPackage(format!("manifest: {e}")))?;
    let version =
        Version::parse(&manifest.model.version).map_err(|e| ApiError::InvalidPackage(format!("manifest: {e}")))?;
    let package = PackageRef { sha256: spooled.sha256.clone(), size_bytes: spooled.size };
    let entry = ModelVersion {
        name: name.to_string(),
        version: version.to_string(),
        metadata: serde_json::to_value(&manifest).unwrap_or_default(),
        published_by: String::new(),
        published_ms: 0,
        package: Some(package.clone()),
        task: Some(manifest.model.task.to_string()),
    };
    // Refuse a conflict before writing any bytes; the transaction below checks again.
    if let Some(existing) = state.db.model_version(name.as_str(), version.as_str()).await? {
        if existing.package.as_ref() != Some(&package) {
            return Err(ApiError::Conflict(format!(
                "model {name}@{version} is already published with other bytes; publish the new package under a new version"
            )));
        }
    }
    state.artifacts.put_file(&package.sha256, package.size_bytes, &spooled.path).await?;
    drop(spooled);
    match state.db.publish_package(&entry, &caller.actor(), now_ms()).await? {
        PackagePublish::Created(model) => {
            state.hub.assignments_changed();
            tracing::info!(model = %name, %version, sha256 = %package.sha256, bytes = package.size_bytes, "package published");
            prebuild_delta(state.clone(), name.to_string(), package.clone());
            Ok((StatusCode::CREATED, Json(model)).into_response())
        }
        PackagePublish::Unchanged(model) => Ok((StatusCode::OK, Json(model)).into_response()),
    }
}

/// Builds, in the background, the delta from the previously published version of `name` (the
/// one most devices run) to `package`, so the first device to update does not wait for it.
fn prebuild_delta(state: SharedState, name: String, package: PackageRef) {
    tokio::spawn(async move {
        let versions = match state.db.model_versions(&name).await {
            Ok(v) => v,
            Err(e) => return tracing::warn!(model = %name, error = %e, "no delta prebuilt"),
        };
        let previous = versions
            .into_iter()
            .filter_map(|v| Some((v.published_ms, v.package?)))
            .filter(|(_, p)| p.sha256 != package.sha256)
            .max_by_key(|(ms, _)| *ms);
        if let Some((_, base)) = previous {
            if let Err(e) = state.deltas.get_or_build(&state.artifacts, &package, &base).await {
                tracing::warn!(model = %name, error = %e, "delta prebuild failed; devices will get the whole package");
            }
        }
    });
}

/// Downloads a published package (operators). Supports `Range` and `If-Range`.
#[utoipa::path(get, path = "/v1/models/{name}/{version}/package", tag = "models",
    params(("name" = String, Path, description = "Model name"), ("version" = String, Path, description = "Version")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The package", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 206, description = "The requested byte range", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 400, description = "invalid_request: the name or version breaks the model-name grammar", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such version, or it has no package", body = ErrorBody),
        (status = 416, description = "The range starts past the end", body = ErrorBody),
        (status = 503, description = "database or artifact store unavailable", body = ErrorBody),
    ))]
pub async fn download_package(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiPath((name, version)): ApiPath<(ModelName, Version)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve(&state, &name, &version, &headers).await
}

/// Downloads a published package (devices, signed). Supports `Range` and `If-Range`.
#[utoipa::path(get, path = "/v1/device/packages/{name}/{version}", tag = "device",
    params(("name" = String, Path, description = "Model name"), ("version" = String, Path, description = "Version")),
    responses(
        (status = 200, description = "The package", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 206, description = "The requested byte range", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 400, description = "invalid_request: the name or version breaks the model-name grammar", body = ErrorBody),
        (status = 401, description = "bad_signature, stale_request or unknown_device", body = ErrorBody),
        (status = 404, description = "No such version, or it has no package", body = ErrorBody),
        (status = 416, description = "The range starts past the end", body = ErrorBody),
        (status = 503, description = "database or artifact store unavailable", body = ErrorBody),
    ))]
pub async fn device_package(
    State(state): State<SharedState>,
    ApiPath((name, version)): ApiPath<(ModelName, Version)>,
    headers: HeaderMap,
    _signed: SignedDevice,
) -> Result<Response, ApiError> {
    serve(&state, &name, &version, &headers).await
}

async fn serve(
    state: &SharedState,
    name: &ModelName,
    version: &Version,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let package = match state.db.model_version(name.as_str(), version.as_str()).await? {
        Some(ModelVersion { package: Some(p), .. }) => p,
        Some(_) => {
            return Err(ApiError::NotFound(format!(
                "model {name}@{version} was published without a package; publish one with `outpost model publish`"
            )))
        }
        None => return Err(ApiError::not_found("model version", &format!("{name}@{version}"))),
    };
    let sent = state.metrics.package_bytes_sent.clone();
    serve_object(state, Stored::Package(&package.sha256), &package.sha256, package.size_bytes, headers, sent).await
}

/// An object of the artifact store.
#[derive(Debug, Clone, Copy)]
pub enum Stored<'a> {
    /// The package with this sha256.
    Package(&'a str),
    /// A derived object: directory and name.
    Derived(&'a str, &'a str),
}

/// Streams the stored `object` of `size` bytes, whole or the range `headers` ask for, counting
/// what it sends in `sent`; `sha256` names the content (its ETag).
pub async fn serve_object(
    state: &SharedState,
    object: Stored<'_>,
    sha256: &str,
    size: u64,
    headers: &HeaderMap,
    sent: prometheus_client::metrics::counter::Counter,
) -> Result<Response, ApiError> {
    let etag = format!("\"{sha256}\"");
    let header_text = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    // A resuming client that names another version of the bytes gets the whole object.
    let same_object = header_text(header::IF_RANGE).is_none_or(|v| v.trim() == etag);
    let ask = if same_object { range::parse(header_text(header::RANGE), size) } else { RangeAsk::Full };
    let (status, wanted) = match ask {
        RangeAsk::Full => (StatusCode::OK, None),
        RangeAsk::Partial(r) => (StatusCode::PARTIAL_CONTENT, Some(r)),
        RangeAsk::Unsatisfiable => {
            let body = ErrorBody {
                code: "range_not_satisfiable".into(),
                message: format!("the package has {size} bytes; the range starts past the end"),
            };
            let mut r = (StatusCode::RANGE_NOT_SATISFIABLE, Json(body)).into_response();
            r.headers_mut().insert(header::CONTENT_RANGE, value(&format!("bytes */{size}")));
            return Ok(r);
        }
    };
    let got = match object {
        Stored::Package(sha) => state.artifacts.get(sha, wanted.clone()).await?,
        Stored::Derived(dir, name) => state.artifacts.get_derived(dir, name, wanted.clone()).await?,
    };
    if got.meta.size != size {
        return Err(ApiError::Internal(format!(
            "{object:?} holds {} bytes in the artifact store, {size} were expected",
            got.meta.size
        )));
    }
    let length = got.range.end - got.range.start;
    let counted = futures_util::StreamExt::inspect(got.into_stream(), move |chunk| {
        if let Ok(bytes) = chunk {
            sent.inc_by(bytes.len() as u64);
        }
    });
    let mut response = Response::new(Body::from_stream(counted));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, value(&etag));
    h.insert(HEADER_SHA256, value(sha256));
    if let Some(r) = wanted {
        h.insert(header::CONTENT_RANGE, value(&format!("bytes {}-{}/{size}", r.start, r.end - 1)));
    }
    Ok(response)
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}
