//! Operator routes about everything that is not one device: enrollment tokens, API tokens,
//! the model registry, assignments and the audit log.

use super::{page_args, ListQuery};
use crate::auth::{Admin, OperatorRole, Viewer};
use crate::db::RevokeOutcome;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::{now_ms, SharedState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use outpost_proto::fleet::api::{
    ApiToken, Assignment, AuditEntry, CreateApiToken, CreateAssignment, CreateEnrollmentToken, EnrollmentToken,
    ErrorBody, ModelVersion, Page, PublishModel,
};
use outpost_proto::fleet::selector::{validate_key, validate_value};
use outpost_proto::fleet::Selector;

/// Longest API token name, in characters.
pub const API_TOKEN_NAME_MAX: usize = 200;
/// Longest token lifetime: 10 years.
pub const MAX_EXPIRES_IN_S: u64 = 10 * 365 * 86_400;

/// Creates an enrollment token; the secret is only in this response.
#[utoipa::path(post, path = "/v1/enrollment-tokens", tag = "tokens", request_body = CreateEnrollmentToken,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created (with secret)", body = EnrollmentToken),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the operator role", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn create_enrollment_token(
    State(state): State<SharedState>,
    caller: OperatorRole,
    ApiJson(req): ApiJson<CreateEnrollmentToken>,
) -> Result<(StatusCode, Json<EnrollmentToken>), ApiError> {
    if req.uses == 0 {
        return Err(ApiError::InvalidRequest("uses must be at least 1".into()));
    }
    if req.expires_in_s == 0 || req.expires_in_s > MAX_EXPIRES_IN_S {
        return Err(ApiError::InvalidRequest("expires_in_s must be between 1 and 315360000 (10 years)".into()));
    }
    for (k, v) in &req.labels {
        validate_key(k).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
        validate_value(v).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    }
    let token = state.db.create_enrollment_token(&req, &caller.actor(), now_ms()).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

/// Lists enrollment tokens (without secrets).
#[utoipa::path(get, path = "/v1/enrollment-tokens", tag = "tokens", params(ListQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of tokens", body = Page<EnrollmentToken>),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the operator role", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn list_enrollment_tokens(
    State(state): State<SharedState>,
    _caller: OperatorRole,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<EnrollmentToken>>, ApiError> {
    let (cursor, limit) = page_args(q.cursor.as_deref(), q.limit)?;
    Ok(Json(state.db.list_enrollment_tokens(cursor, limit).await?))
}

/// Revokes an enrollment token.
#[utoipa::path(delete, path = "/v1/enrollment-tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id")), security(("bearer" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the operator role", body = ErrorBody),
        (status = 404, description = "No such token", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn revoke_enrollment_token(
    State(state): State<SharedState>,
    caller: OperatorRole,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if !state.db.revoke_enrollment_token(&id, &caller.actor(), now_ms()).await? {
        return Err(ApiError::not_found("enrollment token", &id));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Creates an API token; the secret is only in this response.
#[utoipa::path(post, path = "/v1/api-tokens", tag = "tokens", request_body = CreateApiToken, security(("bearer" = [])),
    responses(
        (status = 201, description = "Created (with secret)", body = ApiToken),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the admin role", body = ErrorBody),
        (status = 409, description = "A token with this name exists", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn create_api_token(
    State(state): State<SharedState>,
    caller: Admin,
    ApiJson(req): ApiJson<CreateApiToken>,
) -> Result<(StatusCode, Json<ApiToken>), ApiError> {
    // The same rule as the OpenAPI document's (`minLength`, `maxLength` in characters and a
    // pattern asking for one character that is not ASCII white space), so that generated
    // clients and the server agree on every name.
    if crate::db::is_blank(&req.name) || req.name.chars().count() > API_TOKEN_NAME_MAX {
        return Err(ApiError::InvalidRequest(format!(
            "name must be 1-{API_TOKEN_NAME_MAX} characters, not all white space"
        )));
    }
    if req.expires_in_s.is_some_and(|s| s == 0 || s > MAX_EXPIRES_IN_S) {
        return Err(ApiError::InvalidRequest("expires_in_s must be between 1 and 315360000 (10 years)".into()));
    }
    let token = state.db.create_api_token(&req, &caller.actor(), now_ms()).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

/// Lists API tokens (without secrets).
#[utoipa::path(get, path = "/v1/api-tokens", tag = "tokens", params(ListQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of tokens", body = Page<ApiToken>),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the admin role", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn list_api_tokens(
    State(state): State<SharedState>,
    _caller: Admin,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<ApiToken>>, ApiError> {
    let (cursor, limit) = page_args(q.cursor.as_deref(), q.limit)?;
    Ok(Json(state.db.list_api_tokens(cursor, limit).await?))
}

/// Revokes an API token; it stops working at once.
#[utoipa::path(delete, path = "/v1/api-tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id")), security(("bearer" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the admin role", body = ErrorBody),
        (status = 404, description = "No such token", body = ErrorBody),
        (status = 409, description = "last_admin: the only active admin token cannot be revoked", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn revoke_api_token(
    State(state): State<SharedState>,
    caller: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    match state.db.revoke_api_token(&id, &caller.actor(), now_ms()).await? {
        RevokeOutcome::Revoked => {
            state.tokens.evict(&id);
            Ok(StatusCode::NO_CONTENT)
        }
        RevokeOutcome::NotFound => Err(ApiError::not_found("API token", &id)),
        RevokeOutcome::LastAdmin => Err(ApiError::LastAdmin(format!(
            "API token {id:?} is the only active admin token; create another admin token first \
             (revoking it would lock every operator out)"
        ))),
    }
}

/// Publishes a model version to the registry.
#[utoipa::path(post, path = "/v1/models", tag = "models", request_body = PublishModel, security(("bearer" = [])),
    responses(
        (status = 201, description = "Published", body = ModelVersion),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the operator role", body = ErrorBody),
        (status = 409, description = "This version exists", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn publish_model(
    State(state): State<SharedState>,
    caller: OperatorRole,
    ApiJson(req): ApiJson<PublishModel>,
) -> Result<(StatusCode, Json<ModelVersion>), ApiError> {
    // Name and version were checked against the model-name grammar while parsing the body.
    let model = state.db.publish_model(&req, &caller.actor(), now_ms()).await?;
    Ok((StatusCode::CREATED, Json(model)))
}

/// Lists model versions.
#[utoipa::path(get, path = "/v1/models", tag = "models", params(ListQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of model versions", body = Page<ModelVersion>),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn list_models(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<ModelVersion>>, ApiError> {
    let (cursor, limit) = page_args(q.cursor.as_deref(), q.limit)?;
    Ok(Json(state.db.list_models(cursor, limit).await?))
}

/// Every version of one model.
#[utoipa::path(get, path = "/v1/models/{name}", tag = "models",
    params(("name" = String, Path, description = "Model name")), security(("bearer" = [])),
    responses(
        (status = 200, description = "The versions", body = Vec<ModelVersion>),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn model_versions(
    State(state): State<SharedState>,
    _caller: Viewer,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vec<ModelVersion>>, ApiError> {
    let versions = state.db.model_versions(&name).await?;
    if versions.is_empty() {
        return Err(ApiError::not_found("model", &name));
    }
    Ok(Json(versions))
}

/// Assigns a model version to every device a selector matches.
#[utoipa::path(post, path = "/v1/assignments", tag = "assignments", request_body = CreateAssignment,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = Assignment),
        (status = 400, description = "Bad selector", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the operator role", body = ErrorBody),
        (status = 404, description = "The model version is not in the registry", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn create_assignment(
    State(state): State<SharedState>,
    caller: OperatorRole,
    ApiJson(req): ApiJson<CreateAssignment>,
) -> Result<(StatusCode, Json<Assignment>), ApiError> {
    req.selector.parse::<Selector>().map_err(|e| ApiError::InvalidRequest(format!("selector: {e}")))?;
    let assignment = state.db.create_assignment(&req, &caller.actor(), now_ms()).await?;
    state.hub.assignments_changed();
    Ok((StatusCode::CREATED, Json(assignment)))
}

/// Lists assignments, oldest first.
#[utoipa::path(get, path = "/v1/assignments", tag = "assignments", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every assignment", body = Vec<Assignment>),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn list_assignments(
    State(state): State<SharedState>,
    _caller: Viewer,
) -> Result<Json<Vec<Assignment>>, ApiError> {
    Ok(Json(state.db.list_assignments().await?))
}

/// Deletes an assignment.
#[utoipa::path(delete, path = "/v1/assignments/{id}", tag = "assignments",
    params(("id" = i64, Path, description = "Assignment id")), security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the operator role", body = ErrorBody),
        (status = 404, description = "No such assignment", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn delete_assignment(
    State(state): State<SharedState>,
    caller: OperatorRole,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiError> {
    if !state.db.delete_assignment(id, &caller.actor(), now_ms()).await? {
        return Err(ApiError::not_found("assignment", &id.to_string()));
    }
    state.hub.assignments_changed();
    Ok(StatusCode::NO_CONTENT)
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(ListQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of entries", body = Page<AuditEntry>),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Needs the admin role", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn list_audit(
    State(state): State<SharedState>,
    _caller: Admin,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    let (cursor, limit) = page_args(q.cursor.as_deref(), q.limit)?;
    Ok(Json(state.db.list_audit(cursor, limit).await?))
}
