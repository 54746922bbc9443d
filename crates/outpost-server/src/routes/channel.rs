//! The device channel: enrollment, heartbeats and queued reports, the desired-state long-poll
//! and command acknowledgements. Every request is signed by the device (see [`crate::auth`]).

use crate::auth::{signed_target, SignedDevice};
use crate::db::{AckOutcome, EnrollOutcome, NewDevice, ReportRow};
use crate::error::ApiError;
use crate::extract::{parse_json, read_body, ApiPath, ApiQuery};
use crate::state::{now_ms, SharedState};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use outpost_proto::fleet::api::{Command, ErrorBody};
use outpost_proto::fleet::device::{
    CommandAck, CommandStatus, DesiredState, EnrollRequest, EnrollResponse, ReportAck, ReportBatch, StateReport,
};
use outpost_proto::fleet::signing::{parse_public_key, ALGORITHM_ED25519};
use serde::Deserialize;
use std::time::Duration;
use tokio::time::Instant;
use utoipa::IntoParams;

/// Enrolls a device with a one-time token; the request is signed with the new key.
#[utoipa::path(post, path = "/v1/enroll", tag = "device", request_body = EnrollRequest,
    security(("device_id" = [], "device_timestamp" = [], "device_nonce" = [], "device_signature" = [])),
    responses(
        (status = 201, description = "Enrolled a new device", body = EnrollResponse),
        (status = 200, description = "This key was already enrolled; the existing device", body = EnrollResponse),
        (status = 400, description = "Malformed body or key (invalid_request)", body = ErrorBody),
        (status = 401, description = "bad_signature, stale_request, invalid_enrollment_token, enrollment_token_expired", body = ErrorBody),
        (status = 403, description = "enrollment_token_revoked or device_revoked", body = ErrorBody),
        (status = 409, description = "replayed_request or enrollment_token_used_up", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn enroll(State(state): State<SharedState>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let (method, pq) = signed_target(&parts);
    let headers = parts.headers.clone();
    // Authentication comes before validation: an unsigned request learns nothing about its body.
    crate::auth::SignatureHeaders::parse(&headers)?;
    let body = read_body(Request::from_parts(parts, body), &state).await?;
    let request: EnrollRequest = parse_json(&body)?;
    if request.algorithm != ALGORITHM_ED25519 {
        return Err(ApiError::InvalidRequest(format!("algorithm must be {ALGORITHM_ED25519:?}")));
    }
    let public_key = parse_public_key(&request.public_key)
        .map_err(|e| ApiError::InvalidRequest(format!("public_key: {e}; send the 32-byte Ed25519 key in base64")))?;
    let device_id = state.devices.verify_enrollment(&public_key, &method, &pq, &headers, &body).await?;
    let new = NewDevice {
        token_secret: request.token,
        device_id,
        public_key,
        name: request.name,
        agent_version: request.agent_version,
        hardware: request.hardware,
    };
    let heartbeat_interval_s = state.config.heartbeat_interval_s;
    let (status, device_id, labels, already_enrolled) = match state.db.enroll(&new, now_ms()).await? {
        EnrollOutcome::Enrolled { device_id, labels } => (StatusCode::CREATED, device_id, labels, false),
        EnrollOutcome::AlreadyEnrolled { device_id, labels } => (StatusCode::OK, device_id, labels, true),
        EnrollOutcome::TokenUnknown => {
            return Err(ApiError::InvalidEnrollmentToken("unknown enrollment token; ask an operator for one".into()))
        }
        EnrollOutcome::TokenExpired => {
            return Err(ApiError::EnrollmentTokenExpired("the enrollment token expired; ask for a new one".into()))
        }
        EnrollOutcome::TokenUsedUp => {
            return Err(ApiError::EnrollmentTokenUsedUp(
                "the enrollment token has no uses left; ask for a new one".into(),
            ))
        }
        EnrollOutcome::TokenRevoked => {
            return Err(ApiError::EnrollmentTokenRevoked("the enrollment token was revoked; ask for a new one".into()))
        }
        EnrollOutcome::DeviceRevoked => {
            return Err(ApiError::DeviceRevoked("this key belongs to a revoked device; generate a new key".into()))
        }
    };
    state.devices.evict_device(&device_id);
    let response = EnrollResponse { device_id, labels, already_enrolled, heartbeat_interval_s };
    Ok((status, Json(response)).into_response())
}

async fn write_reports(state: &SharedState, device: &str, reports: Vec<StateReport>) -> Result<ReportAck, ApiError> {
    let received_ms = now_ms();
    let accepted = reports.len();
    let rows =
        reports.into_iter().map(|report| ReportRow { device_id: device.to_string(), received_ms, report }).collect();
    state.reports.submit(rows).await?;
    state.metrics.reports_received.inc_by(accepted as u64);
    let desired_etag = state.desired_etag(device).await?;
    Ok(ReportAck { accepted, server_time_ms: now_ms(), desired_etag })
}

/// Records one state report (heartbeat); answers once it is durable.
#[utoipa::path(post, path = "/v1/device/heartbeat", tag = "device", request_body = StateReport,
    security(("device_id" = [], "device_timestamp" = [], "device_nonce" = [], "device_signature" = [])),
    responses(
        (status = 200, description = "Report stored", body = ReportAck),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "bad_signature, stale_request or unknown_device", body = ErrorBody),
        (status = 403, description = "device_revoked", body = ErrorBody),
        (status = 409, description = "replayed_request", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "rate_limited: more reports than the device's rate limit; retry after Retry-After", body = ErrorBody),
        (status = 503, description = "database_unavailable or overloaded; retry after Retry-After", body = ErrorBody),
    ))]
pub async fn heartbeat(State(state): State<SharedState>, signed: SignedDevice) -> Result<Json<ReportAck>, ApiError> {
    let report: StateReport = parse_json(&signed.body)?;
    Ok(Json(write_reports(&state, &signed.device_id, vec![report]).await?))
}

/// Records reports queued while offline, oldest first, in one transaction.
#[utoipa::path(post, path = "/v1/device/reports", tag = "device", request_body = ReportBatch,
    security(("device_id" = [], "device_timestamp" = [], "device_nonce" = [], "device_signature" = [])),
    responses(
        (status = 200, description = "Reports stored", body = ReportAck),
        (status = 400, description = "invalid_request (also: more than report_batch_max reports)", body = ErrorBody),
        (status = 401, description = "bad_signature, stale_request or unknown_device", body = ErrorBody),
        (status = 403, description = "device_revoked", body = ErrorBody),
        (status = 409, description = "replayed_request", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "rate_limited: more reports than the device's rate limit; retry after Retry-After", body = ErrorBody),
        (status = 503, description = "database_unavailable or overloaded; retry after Retry-After", body = ErrorBody),
    ))]
pub async fn reports(State(state): State<SharedState>, signed: SignedDevice) -> Result<Json<ReportAck>, ApiError> {
    let batch: ReportBatch = parse_json(&signed.body)?;
    let max = state.config.report_batch_max;
    if batch.reports.len() > max {
        return Err(ApiError::InvalidRequest(format!("send at most {max} reports per batch")));
    }
    Ok(Json(write_reports(&state, &signed.device_id, batch.reports).await?))
}

/// Query of the desired-state long-poll.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Seconds to wait for a change when `If-None-Match` equals the current ETag (capped by the server).
    pub wait: Option<u64>,
}

fn if_none_match(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    Some(v.trim_matches('"').to_string())
}

fn with_etag(mut response: Response, etag: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// Keeps the long-poll gauge right however the wait ends.
struct WaitingGuard<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The device's desired state; with `If-None-Match` equal to the current ETag, waits up to
/// `wait` seconds for a change and answers 304 when none came.
#[utoipa::path(get, path = "/v1/device/desired-state", tag = "device", params(WaitQuery,
        ("If-None-Match" = Option<String>, Header, description = "ETag of the state the device has")),
    security(("device_id" = [], "device_timestamp" = [], "device_nonce" = [], "device_signature" = [])),
    responses(
        (status = 200, description = "The desired state", body = DesiredState,
            headers(("ETag" = String, description = "Quoted ETag of this state"))),
        (status = 304, description = "Unchanged within the wait"),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "bad_signature, stale_request or unknown_device", body = ErrorBody),
        (status = 403, description = "device_revoked", body = ErrorBody),
        (status = 409, description = "replayed_request", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn desired_state(
    State(state): State<SharedState>,
    ApiQuery(query): ApiQuery<WaitQuery>,
    headers: HeaderMap,
    signed: SignedDevice,
) -> Result<Response, ApiError> {
    let device = signed.device_id;
    let known = if_none_match(&headers);
    let wait = Duration::from_secs(query.wait.unwrap_or(0)).min(state.config.long_poll_max());
    let deadline = Instant::now() + wait;
    // Subscribe before computing, so a change between the computation and the wait is not lost.
    let mut sub = state.hub.subscribe(&device);
    let notify = sub.notify.clone();
    let mut shutdown = state.shutdown.clone();
    let mut guard: Option<WaitingGuard<'_>> = None;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // The common poll (nothing changed since the device's last answer) costs no database
        // round trip: the cached ETag is dropped before waiters are woken, so a hit is current.
        if known.is_none() || known != state.hub.cached_etag(&device) {
            // Boxed here and below: a held long-poll's future is sized by its largest inner
            // future, and these database calls would otherwise make every waiting device
            // carry their state for the whole wait.
            let desired = Box::pin(state.desired_for(&device))
                .await?
                .ok_or_else(|| ApiError::UnknownDevice(format!("device {device:?} is not enrolled")))?;
            if known.as_deref() != Some(desired.etag.as_str()) {
                let ids: Vec<i64> = desired.commands.iter().map(|c| c.id).collect();
                if !ids.is_empty() {
                    Box::pin(state.db.mark_delivered(&ids, now_ms())).await?;
                }
                let etag = desired.etag.clone();
                return Ok(with_etag(Json(desired).into_response(), &etag));
            }
        }
        // From here on the device holds the current state: `known` is its ETag.
        let current = known.as_deref().unwrap_or_default();
        if Instant::now() >= deadline || *shutdown.borrow() {
            return Ok(with_etag(StatusCode::NOT_MODIFIED.into_response(), current));
        }
        if guard.is_none() {
            state.metrics.long_polls_waiting.inc();
            guard = Some(WaitingGuard(&state.metrics.long_polls_waiting));
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = sub.generation.changed() => {}
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(with_etag(StatusCode::NOT_MODIFIED.into_response(), current));
            }
        }
        // A revocation wakes the device's waiters; answer it with 403 instead of a new state.
        Box::pin(state.devices.ensure_active(&state.db, &device)).await?;
    }
}

/// Acknowledges a command with its outcome.
#[utoipa::path(post, path = "/v1/device/commands/{id}/ack", tag = "device", request_body = CommandAck,
    params(("id" = i64, Path, description = "Command id")),
    security(("device_id" = [], "device_timestamp" = [], "device_nonce" = [], "device_signature" = [])),
    responses(
        (status = 200, description = "Recorded", body = Command),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "bad_signature, stale_request or unknown_device", body = ErrorBody),
        (status = 403, description = "device_revoked", body = ErrorBody),
        (status = 404, description = "No such command for this device", body = ErrorBody),
        (status = 409, description = "already_acked or replayed_request", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "database_unavailable", body = ErrorBody),
    ))]
pub async fn ack_command(
    State(state): State<SharedState>,
    ApiPath(id): ApiPath<i64>,
    signed: SignedDevice,
) -> Result<Json<Command>, ApiError> {
    let ack: CommandAck = parse_json(&signed.body)?;
    if !matches!(ack.status, CommandStatus::Succeeded | CommandStatus::Failed) {
        return Err(ApiError::InvalidRequest("status must be succeeded or failed".into()));
    }
    let outcome = state.db.ack_command(&signed.device_id, id, &ack, now_ms()).await?;
    match outcome {
        AckOutcome::Acked(command) => {
            state.hub.device_changed(&signed.device_id);
            Ok(Json(command))
        }
        AckOutcome::NotFound => Err(ApiError::not_found("command", &id.to_string())),
        AckOutcome::AlreadyAcked(command) => {
            Err(ApiError::AlreadyAcked(format!("command {id} was already acknowledged as {}", command.status.as_str())))
        }
    }
}
