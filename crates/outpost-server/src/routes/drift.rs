//! The fleet's drift (`GET /v1/drift`) and the alerts its rules raise (`GET /v1/alerts`), from
//! each device's latest drift window (see [`crate::drift`]).

use super::given;
use crate::auth::Viewer;
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::{now_ms, SharedState};
use axum::extract::State;
use axum::Json;
use outpost_proto::fleet::api::ErrorBody;
use outpost_proto::fleet::drift::{Alert, DriftGroup};
use outpost_proto::fleet::selector::validate_key;
use outpost_proto::fleet::Selector;
use serde::Deserialize;
use utoipa::IntoParams;

/// Which drift to show.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DriftQuery {
    /// Only this model.
    pub model: Option<String>,
    /// Only this version.
    pub version: Option<String>,
    /// Only devices matching this label selector.
    pub selector: Option<String>,
    /// One group per value of this device label.
    pub group_by: Option<String>,
}

/// Which alerts to show.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// Only alerts about this model.
    pub model: Option<String>,
}

fn fresh_since(state: &SharedState) -> i64 {
    now_ms().saturating_sub(i64::try_from(state.config.drift_stale_s.saturating_mul(1000)).unwrap_or(i64::MAX))
}

/// Drift per model version (and label group): devices by status, scores, the features that
/// moved and the devices at the alert level.
#[utoipa::path(get, path = "/v1/drift", tag = "drift", params(DriftQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "Groups by model, version and group", body = Vec<DriftGroup>),
        (status = 400, description = "invalid_request: bad selector or label key", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 503, description = "database_unavailable or query_timeout", body = ErrorBody),
    ))]
pub async fn list_drift(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiQuery(q): ApiQuery<DriftQuery>,
) -> Result<Json<Vec<DriftGroup>>, ApiError> {
    let selector = given(&q.selector)
        .map(str::parse::<Selector>)
        .transpose()
        .map_err(|e| ApiError::InvalidRequest(format!("selector: {e}")))?;
    let group_by = given(&q.group_by);
    if let Some(key) = group_by {
        validate_key(key).map_err(|e| ApiError::InvalidRequest(format!("group_by: {e}")))?;
    }
    let mut entries = state.db.drift_entries(given(&q.model), fresh_since(&state)).await?;
    if let Some(v) = given(&q.version) {
        entries.retain(|e| e.version == v);
    }
    Ok(Json(crate::drift::summarize(&entries, selector.as_ref(), group_by)))
}

/// The alerts the configured rules raise now, with the devices that raised them.
#[utoipa::path(get, path = "/v1/alerts", tag = "drift", params(AlertQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "Firing alerts", body = Vec<Alert>),
        (status = 400, description = "invalid_request: a query that does not parse", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 503, description = "database_unavailable or query_timeout", body = ErrorBody),
    ))]
pub async fn list_alerts(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiQuery(q): ApiQuery<AlertQuery>,
) -> Result<Json<Vec<Alert>>, ApiError> {
    let entries = state.db.drift_entries(given(&q.model), fresh_since(&state)).await?;
    let rules = crate::drift::rules_in_force(&state.config.alert_rules);
    Ok(Json(crate::drift::evaluate(&rules, &entries)))
}
