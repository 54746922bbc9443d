//! The HTTP router: every route, the health and metrics endpoints, and the JSON fallbacks that
//! keep even unknown paths answering with `{code, message}`.

pub mod channel;
pub mod deltas;
pub mod devices;
pub mod drift;
pub mod packages;
pub mod registry;
pub mod results;
pub mod rollouts;
pub mod tuf;

use crate::error::ApiError;
use crate::state::SharedState;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use axum::{Json, Router};
use outpost_proto::fleet::api::ErrorBody;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Default page size.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size.
pub const MAX_LIMIT: u32 = 1000;

/// Pagination of a listing.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Cursor from the previous page.
    pub cursor: Option<String>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
}

/// Checks pagination arguments.
pub fn page_args(cursor: Option<&str>, limit: Option<u32>) -> Result<(Option<&str>, u32), ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    Ok((cursor.filter(|c| !c.is_empty()), limit))
}

/// A query parameter that was given and is not empty (`?model=` means no filter).
pub fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// Body of the health endpoints.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthBody {
    /// `ok` or `ready`.
    pub status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Up", body = HealthBody)))]
pub async fn healthz() -> Json<HealthBody> {
    Json(HealthBody { status: "ok".into() })
}

/// The process can serve: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = HealthBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn readyz(State(state): State<SharedState>) -> Result<Json<HealthBody>, ApiError> {
    state.db.ping().await?;
    Ok(Json(HealthBody { status: "ready".into() }))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text 0.0.4, or OpenMetrics 1.0.0 when `Accept` prefers `application/openmetrics-text`", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<SharedState>, headers: axum::http::HeaderMap) -> Response {
    let format =
        outpost_proto::exposition::Exposition::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    ([(header::CONTENT_TYPE, format.content_type())], format.render(&state.metrics.encode())).into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn openapi() -> Response {
    Json(crate::openapi::document()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see /openapi.json".into())
}

async fn method_not_allowed() -> Response {
    let body = ErrorBody {
        code: "method_not_allowed".into(),
        message: "this route does not accept this method; see /openapi.json".into(),
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

/// Refuses a request whose protocol header names a version this server does not speak, before
/// any route reads it, and names this server's version on every answer. Requests without the
/// header (operators' tools, agents older than the header) are taken as version 1.
async fn protocol(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use outpost_proto::{HEADER_PROTOCOL, PROTOCOL_VERSION};
    let sent = request.headers().get(HEADER_PROTOCOL).map(|v| v.to_str().map(str::trim));
    let mut response = match sent {
        None => next.run(request).await,
        Some(Ok(v)) if v.parse::<u32>() == Ok(PROTOCOL_VERSION) => next.run(request).await,
        Some(v) => {
            let sent = match v {
                Ok(v) => format!("{:?}", v.chars().take(32).collect::<String>()),
                Err(_) => "a value that is not text".into(),
            };
            ApiError::UnsupportedProtocol(format!(
                "this server speaks protocol {PROTOCOL_VERSION} ({HEADER_PROTOCOL}), the client sent {sent}: \
                 run an agent and a server from compatible releases"
            ))
            .into_response()
        }
    };
    response.headers_mut().insert(HEADER_PROTOCOL, header::HeaderValue::from(PROTOCOL_VERSION));
    response
}

/// The full router.
pub fn router(state: SharedState) -> Router {
    let metrics = state.metrics.clone();
    let max_body = state.config.max_body_bytes;
    // Package uploads stream to disk under their own limit (max_package_bytes) instead of
    // being read into memory before routing like every other body.
    let streaming =
        Router::new().route("/v1/model-packages", post(packages::publish_package)).layer(DefaultBodyLimit::disable());
    let buffered = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(self::metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/devices", get(devices::list_devices))
        .route("/v1/devices/{id}", get(devices::get_device))
        .route("/v1/devices/{id}/labels", patch(devices::change_labels))
        .route("/v1/devices/{id}/revoke", post(devices::revoke_device))
        .route(
            "/v1/devices/{id}/override",
            get(devices::get_override).put(devices::put_override).delete(devices::delete_override),
        )
        .route("/v1/devices/{id}/desired-state", get(devices::preview_desired))
        .route("/v1/devices/{id}/history", get(devices::history))
        .route("/v1/devices/{id}/commands", post(devices::create_command).get(devices::list_commands))
        .route("/v1/fleet/summary", get(devices::fleet_summary))
        .route("/v1/enrollment-tokens", post(registry::create_enrollment_token).get(registry::list_enrollment_tokens))
        .route("/v1/enrollment-tokens/{id}", delete(registry::revoke_enrollment_token))
        .route("/v1/api-tokens", post(registry::create_api_token).get(registry::list_api_tokens))
        .route("/v1/api-tokens/{id}", delete(registry::revoke_api_token))
        .route("/v1/models", post(registry::publish_model).get(registry::list_models))
        .route("/v1/models/{name}", get(registry::model_versions))
        .route("/v1/models/{name}/{version}/package", get(packages::download_package))
        .route("/v1/models/{name}/{version}/index", get(deltas::package_index))
        .route("/v1/device/packages/{name}/{version}", get(packages::device_package))
        .route("/v1/device/packages/{name}/{version}/delta/{base}", get(deltas::device_delta_plan))
        .route("/v1/device/packages/{name}/{version}/delta/{base}/blobs", get(deltas::device_delta_blobs))
        .route("/v1/tuf/targets", get(tuf::current_targets).put(tuf::put_targets))
        .route("/v1/tuf/roles/{role}", get(tuf::current_role))
        .route("/v1/tuf/release", put(tuf::put_release))
        .route("/tuf/metadata/{file}", get(tuf::metadata))
        .route("/tuf/targets/{name}/{file}", get(tuf::target))
        .route("/v1/assignments", post(registry::create_assignment).get(registry::list_assignments))
        .route("/v1/assignments/{id}", delete(registry::delete_assignment))
        .route("/v1/rollouts", post(rollouts::create_rollout).get(rollouts::list_rollouts))
        .route("/v1/rollouts/{id}", get(rollouts::get_rollout))
        .route("/v1/rollouts/{id}/devices", get(rollouts::rollout_devices))
        .route("/v1/rollouts/{id}/{action}", post(rollouts::rollout_action))
        .route("/v1/audit", get(registry::list_audit))
        .route("/v1/enroll", post(channel::enroll))
        .route("/v1/device/heartbeat", post(channel::heartbeat))
        .route("/v1/device/reports", post(channel::reports))
        .route("/v1/device/results", post(results::device_results))
        .route("/v1/results", get(results::list_results))
        .route("/v1/drift", get(drift::list_drift))
        .route("/v1/alerts", get(drift::list_alerts))
        .route("/v1/device/desired-state", get(channel::desired_state))
        .route("/v1/device/commands/{id}/ack", post(channel::ack_command))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            crate::budget::BodyBudget::for_bodies_of(max_body),
            crate::budget::limit_bodies,
        ));
    buffered
        .merge(streaming)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(protocol))
        .layer(axum::middleware::from_fn_with_state(metrics, crate::metrics::track))
        .layer(axum::middleware::from_fn(crate::serve::limits))
        .with_state(state)
}
