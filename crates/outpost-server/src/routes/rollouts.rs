//! Operator routes of rollouts: create, list, show with per-wave progress, devices, and the
//! hand actions (pause, resume, abort, rollback, promote).

use crate::auth::{OperatorRole, Viewer};
use crate::db::rollouts::{Reader, StoredRollout};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::rollout::actions::{act, Action};
use crate::rollout::view::{device_view, rollout_view, Meta};
use crate::rollout::waves::normalise_waves;
use crate::state::{now_ms, SharedState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use outpost_proto::fleet::api::ErrorBody;
use outpost_proto::fleet::rollout::{CreateRollout, Rollout, RolloutDevice};
use outpost_proto::fleet::Selector;
use serde::Deserialize;
use utoipa::IntoParams;

/// Checks what serde cannot and returns the spec in canonical form.
fn validate(mut spec: CreateRollout) -> Result<CreateRollout, ApiError> {
    let selector: Selector = spec.selector.parse().map_err(|e| ApiError::InvalidRequest(format!("selector: {e}")))?;
    spec.selector = selector.to_string();
    spec.waves = normalise_waves(&spec.waves).map_err(ApiError::InvalidRequest)?;
    let pct = |name: &str, v: f64| {
        if v.is_finite() && (0.0..=100.0).contains(&v) {
            Ok(())
        } else {
            Err(ApiError::InvalidRequest(format!("{name} must be a percentage in [0, 100], not {v}")))
        }
    };
    pct("max_failures", spec.max_failures)?;
    pct("success", spec.success)?;
    pct("shadow_sample", spec.shadow_sample)?;
    if spec.success <= 0.0 {
        return Err(ApiError::InvalidRequest("success must be above 0 %".into()));
    }
    if spec.bake_s > 30 * 86_400 || spec.wave_deadline_s.is_some_and(|d| d == 0 || d > 90 * 86_400) {
        return Err(ApiError::InvalidRequest(
            "bake_s is at most 30 days; wave_deadline_s within 1 s .. 90 days".into(),
        ));
    }
    if spec.gates.len() > 16 {
        return Err(ApiError::InvalidRequest("at most 16 gates".into()));
    }
    let shadow_gate = spec.gates.iter().any(|g| g.metric == outpost_proto::fleet::rollout::GateMetric::ShadowAgreement);
    if spec.shadow && spec.gates.iter().any(|g| g.metric != outpost_proto::fleet::rollout::GateMetric::ShadowAgreement)
    {
        return Err(ApiError::InvalidRequest(
            "a shadow rollout never serves the candidate: only shadow_agreement gates apply".into(),
        ));
    }
    if (spec.shadow || shadow_gate) && spec.shadow_sample <= 0.0 {
        return Err(ApiError::InvalidRequest("shadow evaluation needs shadow_sample above 0 %".into()));
    }
    Ok(spec)
}

async fn view_of(state: &SharedState, stored: &StoredRollout) -> Result<Rollout, ApiError> {
    let r = &stored.record;
    let (fleet, members) = tokio::try_join!(
        state.db.rollout_fleet(r, now_ms(), state.config.thresholds(), Reader::Operator),
        state.db.rollout_members(r.id, Reader::Operator),
    )?;
    let meta = Meta { created_by: stored.created_by.clone(), updated_ms: stored.updated_ms };
    Ok(rollout_view(r, &meta, &members, &fleet))
}

async fn find(state: &SharedState, id: i64) -> Result<StoredRollout, ApiError> {
    state.db.get_rollout(id).await?.ok_or_else(|| ApiError::not_found("rollout", &id.to_string()))
}

/// Starts a rollout of a published model version over the devices a selector matches.
#[utoipa::path(post, path = "/v1/rollouts", tag = "rollouts", request_body = CreateRollout,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; the engine starts it on its next tick", body = Rollout),
        (status = 400, description = "invalid_request: selector, waves, gates, percentages", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the operator role", body = ErrorBody),
        (status = 404, description = "The model version is not in the registry, or has no package", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn create_rollout(
    State(state): State<SharedState>,
    caller: OperatorRole,
    ApiJson(req): ApiJson<CreateRollout>,
) -> Result<(StatusCode, Json<Rollout>), ApiError> {
    // What does not exist is named first: the checks below concern a rollout that could run.
    let published = state.db.model_version(req.model.as_str(), req.version.as_str()).await?;
    if published.is_none_or(|m| m.package.is_none()) {
        return Err(ApiError::NotFound(format!(
            "model {}@{} is not in the registry with a package; publish it with `outpost model publish`",
            req.model, req.version
        )));
    }
    let spec = validate(req)?;
    let stored = state.db.create_rollout(&spec, &caller.actor(), now_ms()).await?;
    Ok((StatusCode::CREATED, Json(view_of(&state, &stored).await?)))
}

/// Query of the rollout list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RolloutQuery {
    /// Only rollouts of this model.
    pub model: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Lists rollouts, newest first.
#[utoipa::path(get, path = "/v1/rollouts", tag = "rollouts", params(RolloutQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "Rollouts with their progress", body = Vec<Rollout>),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn list_rollouts(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiQuery(q): ApiQuery<RolloutQuery>,
) -> Result<Json<Vec<Rollout>>, ApiError> {
    let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 1000));
    let stored = state.db.list_rollouts(q.model.as_deref(), limit).await?;
    let mut out = Vec::with_capacity(stored.len());
    for s in &stored {
        out.push(view_of(&state, s).await?);
    }
    Ok(Json(out))
}

/// One rollout with per-wave progress and gate readings.
#[utoipa::path(get, path = "/v1/rollouts/{id}", tag = "rollouts",
    params(("id" = i64, Path, description = "Rollout id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "The rollout", body = Rollout),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn get_rollout(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Rollout>, ApiError> {
    let stored = find(&state, id).await?;
    Ok(Json(view_of(&state, &stored).await?))
}

/// The devices of a rollout and where each is.
#[utoipa::path(get, path = "/v1/rollouts/{id}/devices", tag = "rollouts",
    params(("id" = i64, Path, description = "Rollout id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "Its devices", body = Vec<RolloutDevice>),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn rollout_devices(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Vec<RolloutDevice>>, ApiError> {
    find(&state, id).await?;
    Ok(Json(state.db.rollout_members(id, Reader::Operator).await?.iter().map(device_view).collect()))
}

/// Pauses, resumes, aborts, rolls back or promotes a rollout by hand.
#[utoipa::path(post, path = "/v1/rollouts/{id}/{action}", tag = "rollouts",
    params(
        ("id" = i64, Path, description = "Rollout id"),
        ("action" = String, Path, description = "pause, resume, abort, rollback or promote"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Done; the rollout after it", body = Rollout),
        (status = 400, description = "invalid_request: unknown action", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the operator role", body = ErrorBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
        (status = 409, description = "conflict: the action does not apply in the rollout's state", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn rollout_action(
    State(state): State<SharedState>,
    caller: OperatorRole,
    ApiPath((id, action)): ApiPath<(i64, String)>,
) -> Result<Json<Rollout>, ApiError> {
    let action = Action::parse(&action).ok_or_else(|| {
        ApiError::InvalidRequest(format!("unknown action {action:?}: pause, resume, abort, rollback or promote"))
    })?;
    let actor = caller.actor();
    // The engine may store a step between our read and our write: read again and retry.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let stored = find(&state, id).await?;
        let members = state.db.rollout_members(id, Reader::Operator).await?;
        let now = now_ms();
        let step = act(&stored.record, &members, action, &actor, now).map_err(ApiError::Conflict)?;
        match state.db.save_rollout_action(&stored, &step, &actor, now).await {
            Ok(()) => {
                crate::rollout::driver::apply_effects(&state, &step);
                let after = find(&state, id).await?;
                return Ok(Json(view_of(&state, &after).await?));
            }
            Err(crate::db::DbError::Conflict(_)) if attempt < 5 => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
