//! `POST /v1/models/{m}/predict`: raw data in (an image, a WAV, a JSON sensor series), the
//! model's declared pipeline, typed results out.

use super::{body_error, resolve, ApiError, ApiState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;
use std::time::Instant;

pub async fn predict(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let result = async {
        let model = resolve(&state, &name, None)?;
        let body = body.map_err(body_error)?;
        let run = tokio::task::spawn_blocking(move || model.predict_blocking(&body));
        let response = run
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("pipeline task failed: {e}")))??;
        Ok::<_, ApiError>(response)
    }
    .await;
    let status = result.as_ref().map_or_else(|e| e.status, |_| StatusCode::OK);
    if state.store.slot(&name).is_some() {
        state.metrics.request(&name, "predict", status.as_u16(), started.elapsed());
    }
    match result {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}
