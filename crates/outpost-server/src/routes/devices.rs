//! Operator routes about devices: inventory, labels, revocation, overrides, desired-state
//! preview, history, commands and the fleet summary.

use super::{page_args, ListQuery};
use crate::auth::{Admin, OperatorRole, Viewer};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::{now_ms, SharedState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use outpost_proto::fleet::api::{
    Command, CreateCommand, Device, DeviceOverride, DeviceStatus, ErrorBody, FleetSummary, LabelChange, Page,
};
use outpost_proto::fleet::device::{DesiredState, StateReport};
use outpost_proto::fleet::selector::{validate_key, validate_value};
use outpost_proto::fleet::{Labels, Selector};
use serde::Deserialize;
use utoipa::IntoParams;

/// Filters of the device listing.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceQuery {
    /// Label selector, e.g. `site=berlin,line!=3`.
    pub selector: Option<String>,
    /// Only devices with this status (`online`, `stale`, `offline`, `revoked`).
    pub status: Option<String>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
}

/// Selector filter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SelectorQuery {
    /// Label selector; empty matches every device.
    pub selector: Option<String>,
}

/// History window.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only reports received at or after this time, Unix milliseconds (default: all kept).
    pub since_ms: Option<i64>,
    /// Most reports returned, 1-1000 (default 100).
    pub limit: Option<u32>,
}

fn parse_selector(text: Option<&str>) -> Result<Selector, ApiError> {
    text.unwrap_or("").parse().map_err(|e| ApiError::InvalidRequest(format!("selector: {e}")))
}

async fn ensure_device(state: &SharedState, id: &str) -> Result<Labels, ApiError> {
    state.db.device_labels(id).await?.ok_or_else(|| ApiError::not_found("device", id))
}

/// Lists devices matching a selector and status.
#[utoipa::path(get, path = "/v1/devices", tag = "devices", params(DeviceQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of devices", body = Page<Device>),
        (status = 400, description = "Bad selector, status, cursor or limit", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 503, description = "database_unavailable or query_timeout", body = ErrorBody),
    ))]
pub async fn list_devices(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiQuery(q): ApiQuery<DeviceQuery>,
) -> Result<Json<Page<Device>>, ApiError> {
    let selector = parse_selector(q.selector.as_deref())?;
    let status =
        match q.status.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(DeviceStatus::parse(s).ok_or_else(|| {
                ApiError::InvalidRequest("status must be one of online, stale, offline, revoked".into())
            })?),
        };
    let (cursor, limit) = page_args(q.cursor.as_deref(), q.limit)?;
    let page = state.db.list_devices(&selector, status, cursor, limit, now_ms(), state.config.thresholds()).await?;
    Ok(Json(page))
}

/// One device.
#[utoipa::path(get, path = "/v1/devices/{id}", tag = "devices", params(("id" = String, Path, description = "Device id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The device", body = Device),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn get_device(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Device>, ApiError> {
    let device = state.db.get_device(&id, now_ms(), state.config.thresholds()).await?;
    device.map(Json).ok_or_else(|| ApiError::not_found("device", &id))
}

/// Sets and removes labels.
#[utoipa::path(patch, path = "/v1/devices/{id}/labels", tag = "devices", request_body = LabelChange,
    params(("id" = String, Path, description = "Device id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "The device's labels after the change", body = std::collections::BTreeMap<String, String>),
        (status = 400, description = "Bad label key or value", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the operator role", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn change_labels(
    State(state): State<SharedState>,
    caller: OperatorRole,
    ApiPath(id): ApiPath<String>,
    ApiJson(change): ApiJson<LabelChange>,
) -> Result<Json<Labels>, ApiError> {
    for (k, v) in &change.set {
        validate_key(k).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
        validate_value(v).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    }
    for k in &change.remove {
        validate_key(k).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    }
    let labels = state.db.change_labels(&id, &change, &caller.actor(), now_ms()).await?;
    let labels = labels.ok_or_else(|| ApiError::not_found("device", &id))?;
    state.hub.device_changed(&id);
    Ok(Json(labels))
}

/// Revokes a device: every request it makes from now on is refused.
#[utoipa::path(post, path = "/v1/devices/{id}/revoke", tag = "devices",
    params(("id" = String, Path, description = "Device id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "The revoked device", body = Device),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the admin role", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn revoke_device(
    State(state): State<SharedState>,
    caller: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Device>, ApiError> {
    let now = now_ms();
    let found = state.db.revoke_device(&id, &caller.actor(), now).await?;
    // Evict even when not found: a cached key must never outlive the database's answer.
    state.devices.evict_device(&id);
    if !found {
        return Err(ApiError::not_found("device", &id));
    }
    state.hub.device_changed(&id);
    let device = state.db.get_device(&id, now, state.config.thresholds()).await?;
    device.map(Json).ok_or_else(|| ApiError::not_found("device", &id))
}

/// The device's override (empty when none is set).
#[utoipa::path(get, path = "/v1/devices/{id}/override", tag = "devices",
    params(("id" = String, Path, description = "Device id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "The override", body = DeviceOverride),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn get_override(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeviceOverride>, ApiError> {
    match state.db.get_override(&id).await? {
        Some(ov) => Ok(Json(ov)),
        None => {
            ensure_device(&state, &id).await?;
            Ok(Json(DeviceOverride::default()))
        }
    }
}

/// Replaces the device's override.
#[utoipa::path(put, path = "/v1/devices/{id}/override", tag = "devices", request_body = DeviceOverride,
    params(("id" = String, Path, description = "Device id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "The stored override", body = DeviceOverride),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the operator role", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn put_override(
    State(state): State<SharedState>,
    caller: OperatorRole,
    ApiPath(id): ApiPath<String>,
    ApiJson(ov): ApiJson<DeviceOverride>,
) -> Result<Json<DeviceOverride>, ApiError> {
    // Names were checked while parsing; versions may be empty (remove), so they are checked here.
    ov.validate().map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    if !state.db.set_override(&id, Some(&ov), &caller.actor(), now_ms()).await? {
        return Err(ApiError::not_found("device", &id));
    }
    state.hub.device_changed(&id);
    Ok(Json(ov))
}

/// Removes the device's override.
#[utoipa::path(delete, path = "/v1/devices/{id}/override", tag = "devices",
    params(("id" = String, Path, description = "Device id")), security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the operator role", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn delete_override(
    State(state): State<SharedState>,
    caller: OperatorRole,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if !state.db.set_override(&id, None, &caller.actor(), now_ms()).await? {
        return Err(ApiError::not_found("device", &id));
    }
    state.hub.device_changed(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// Preview of what the device is told to run (commands are not marked delivered).
#[utoipa::path(get, path = "/v1/devices/{id}/desired-state", tag = "devices",
    params(("id" = String, Path, description = "Device id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "The desired state", body = DesiredState),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn preview_desired(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DesiredState>, ApiError> {
    state.desired_for(&id).await?.map(Json).ok_or_else(|| ApiError::not_found("device", &id))
}

/// Past reports of a device, downsampled.
#[utoipa::path(get, path = "/v1/devices/{id}/history", tag = "devices",
    params(("id" = String, Path, description = "Device id"), HistoryQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "Reports, oldest first", body = Vec<StateReport>),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn history(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<Vec<StateReport>>, ApiError> {
    ensure_device(&state, &id).await?;
    let (_, limit) = page_args(None, q.limit)?;
    Ok(Json(state.db.device_history(&id, q.since_ms.unwrap_or(0), limit).await?))
}

/// Queues a command for the device.
#[utoipa::path(post, path = "/v1/devices/{id}/commands", tag = "devices", request_body = CreateCommand,
    params(("id" = String, Path, description = "Device id")), security(("bearer" = [])),
    responses(
        (status = 201, description = "Queued", body = Command),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the operator role", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn create_command(
    State(state): State<SharedState>,
    caller: OperatorRole,
    ApiPath(id): ApiPath<String>,
    ApiJson(cmd): ApiJson<CreateCommand>,
) -> Result<(StatusCode, Json<Command>), ApiError> {
    if !cmd.args.is_object() {
        return Err(ApiError::InvalidRequest("args must be a JSON object".into()));
    }
    let command = state.db.create_command(&id, &cmd, &caller.actor(), now_ms()).await?;
    let command = command.ok_or_else(|| ApiError::not_found("device", &id))?;
    state.hub.device_changed(&id);
    Ok((StatusCode::CREATED, Json(command)))
}

/// Commands of a device, newest first.
#[utoipa::path(get, path = "/v1/devices/{id}/commands", tag = "devices",
    params(("id" = String, Path, description = "Device id"), ListQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of commands", body = Page<Command>),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn list_commands(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<Command>>, ApiError> {
    ensure_device(&state, &id).await?;
    let (cursor, limit) = page_args(q.cursor.as_deref(), q.limit)?;
    Ok(Json(state.db.list_commands(&id, cursor, limit).await?))
}

/// Device counts by status, health, agent version and model version.
#[utoipa::path(get, path = "/v1/fleet/summary", tag = "devices", params(SelectorQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "The summary", body = FleetSummary),
        (status = 400, description = "Bad selector", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 503, description = "database_unavailable or query_timeout", body = ErrorBody),
    ))]
pub async fn fleet_summary(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiQuery(q): ApiQuery<SelectorQuery>,
) -> Result<Json<FleetSummary>, ApiError> {
    let selector = parse_selector(q.selector.as_deref())?;
    Ok(Json(state.db.fleet_summary(&selector, now_ms(), state.config.thresholds()).await?))
}
