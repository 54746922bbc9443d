//! The local inference API: Open Inference Protocol v2 REST (the KServe / Triton HTTP protocol,
//! so `tritonclient` works unchanged), the v1 pipeline endpoint and Prometheus metrics.
//!
//! Handlers never run a model on an async thread: inference is queued to the model's session
//! pool and awaited through a oneshot channel, pipelines run under `spawn_blocking` behind a
//! bounded gate. Request bodies are read by [`budget`] under a per-request limit and a byte budget
//! shared by all requests, before any handler sees them.

pub mod budget;
pub mod codec;
mod oip;
pub mod predict;

use crate::metrics::Metrics;
use crate::shadow::Shadows;
use crate::store::ModelStore;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use budget::BodyBudget;
use outpost_proto::exposition::Exposition;
use outpost_proto::oip::ErrorResponse;
use outpost_runtime::{LoadedModel, RuntimeError};
use predict::PredictGate;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tower_http::decompression::RequestDecompressionLayer;

/// State shared by all handlers.
#[derive(Debug)]
pub struct ApiState {
    /// The served models.
    pub store: Arc<ModelStore>,
    /// Agent metrics.
    pub metrics: Arc<Metrics>,
    /// Set once the model directory has been scanned at start-up.
    pub scanned: AtomicBool,
    /// Largest request body, after decompression, in bytes.
    pub max_body_bytes: usize,
    /// Bytes of request bodies held at once, across all requests.
    pub bodies: Arc<BodyBudget>,
    /// Bounds the raw-data pipelines running and waiting.
    pub predict: PredictGate,
    /// Shadow candidates fed a sample of the requests answered here.
    pub shadows: Arc<Shadows>,
    /// Result export, when a sink is configured.
    pub export: Option<Arc<crate::export::Exporter>>,
}

/// The `?export=` option of an inference request: export this result (true) or not (false)
/// whatever the configuration says.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ExportQuery {
    /// The option, when given.
    pub export: Option<bool>,
}

impl ApiState {
    /// Whether the agent has finished its first model directory scan.
    pub fn is_ready(&self) -> bool {
        self.scanned.load(Ordering::Acquire)
    }
}

/// Builds the router. Bodies are decompressed as they stream in and read under the state's
/// limits ([`budget::limit_bodies`]) before routing.
pub fn router(state: Arc<ApiState>) -> Router {
    let max_body_bytes = state.max_body_bytes;
    Router::new()
        .route("/v2/health/live", get(oip::live))
        .route("/v2/health/ready", get(oip::ready))
        .route("/v2", get(oip::server_metadata))
        .route("/v2/models/{model}", get(oip::model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(oip::model_version_metadata))
        .route("/v2/models/{model}/ready", get(oip::model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(oip::model_version_ready))
        .route("/v2/models/{model}/infer", post(oip::infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(oip::infer_version))
        .route("/v2/repository/index", post(oip::repository_index))
        .route("/v1/models/{model}/predict", post(predict::predict))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        // Outermost last: decompression streams into the budgeted reader, which sees inflated bytes.
        .layer(axum::middleware::from_fn_with_state(state.clone(), budget::limit_bodies))
        .layer(RequestDecompressionLayer::new().gzip(true).deflate(true))
        .layer(axum::middleware::from_fn(known_encodings))
        .with_state(state)
}

/// Refuses a body in an encoding the decompression layer does not read with a JSON 415 (the
/// layer's own answer has no body, which clients cannot show).
async fn known_encodings(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let unknown = req.headers().get_all(header::CONTENT_ENCODING).iter().find(|v| {
        let v = v.to_str().unwrap_or("").trim();
        !(v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("deflate") || v.eq_ignore_ascii_case("identity"))
    });
    if let Some(v) = unknown {
        let message = format!("unsupported Content-Encoding {v:?}; send gzip, deflate or an uncompressed body");
        return ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message).into_response();
    }
    next.run(req).await
}

/// `/metrics` in the format the `Accept` header asks for (see [`Exposition::negotiate`]).
async fn metrics(axum::extract::State(state): axum::extract::State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let slots = state.store.slots();
    for (name, slot) in &slots {
        if let Some(model) = &slot.active {
            state.metrics.queue_depth(name, model.queue_depth());
        }
    }
    state.metrics.models_loaded(slots.values().filter(|s| s.is_ready()).count());
    let format = Exposition::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    ([(header::CONTENT_TYPE, format.content_type())], format.render(&state.metrics.render())).into_response()
}

/// An error answer: an HTTP status and `{"error": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the caller.
    pub message: String,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> ApiError {
        let status = match &e {
            RuntimeError::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            RuntimeError::ShuttingDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
            e if e.is_client_error() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(ErrorResponse { error: self.message })).into_response();
        if matches!(self.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Finds the model a request names: 404 when no package of it exists or the version differs,
/// 503 with the load failure when it exists but cannot serve.
pub fn resolve(state: &ApiState, name: &str, version: Option<&str>) -> Result<Arc<LoadedModel>, ApiError> {
    let Some(slot) = state.store.slot(name) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("unknown model `{name}`")));
    };
    let Some(model) = slot.active else {
        let reason = slot.failure.map(|f| f.reason).unwrap_or_else(|| "still loading".into());
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("model `{name}` is unavailable: {reason}")));
    };
    if let Some(v) = version {
        if v != model.version() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("model `{name}` has no version `{v}` (serving version `{}`)", model.version()),
            ));
        }
    }
    Ok(model)
}

/// Maps a body extraction failure (over the limit, broken gzip) to a JSON error.
pub fn body_error(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
    let status = rejection.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "request body exceeds the configured limit (max_body_bytes)".to_string()
    } else {
        format!("cannot read request body: {}", rejection.body_text())
    };
    ApiError::new(status, message)
}
