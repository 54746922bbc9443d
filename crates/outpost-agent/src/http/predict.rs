//! `POST /v1/models/{m}/predict`: raw data in (an image, a WAV, a JSON sensor series), the
//! model's declared pipeline, typed results out.
//!
//! Decoding an image may take a few hundred MiB and a pipeline holds a blocking thread for its
//! whole run, so pipelines pass a [`PredictGate`] first, the way inference passes a session pool's
//! queue: `sessions` pipelines run at once, `queue_capacity` more wait, and any beyond get 429.

use super::{body_error, resolve, ApiError, ApiState, ExportQuery};
use crate::shadow::Sample;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Bounds the pipelines in flight across the agent: how many run and how many may wait.
#[derive(Debug)]
pub struct PredictGate {
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
    waiting: usize,
}

impl PredictGate {
    /// `running` pipelines at once (at least one) and `waiting` more queued.
    pub fn new(running: usize, waiting: usize) -> PredictGate {
        let running = running.max(1);
        PredictGate {
            admitted: Arc::new(Semaphore::new(running.saturating_add(waiting))),
            running: Arc::new(Semaphore::new(running)),
            waiting,
        }
    }
}

/// Runs the model's pipeline on the raw data in the body.
pub async fn predict(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    query: Result<Query<ExportQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let asked = match query {
        Ok(Query(q)) => q.export,
        Err(e) => return ApiError::bad_request(format!("bad query: {}", e.body_text())).into_response(),
    };
    let started = Instant::now();
    let model = resolve(&state, &name, None);
    let result = match &model {
        Ok(model) => run(&state, model, body).await,
        Err(e) => Err(e.clone()),
    };
    let status = result.as_ref().map_or_else(|e| e.status, |_| StatusCode::OK);
    if state.store.slot(&name).is_some() {
        let served_by = model.as_ref().ok().map(|m| m.version());
        state.metrics.request(&name, served_by, "predict", status.as_u16(), started.elapsed());
    }
    match result {
        Ok((response, body)) => {
            if let Some(export) = state.export.as_ref().filter(|e| e.wants(&name, asked)) {
                let outputs = serde_json::to_value(&response.predictions).unwrap_or_default();
                let confidence = crate::export::record::confidence(&response.predictions);
                let t = &response.timings;
                let latency_us = t.pre_us + t.infer_us + t.post_us;
                export.result(&name, &response.model_version, Some(&outputs), confidence, latency_us);
            }
            // Cloned only when the shadow takes this request: at most one per model at a time.
            let predictions = &response.predictions;
            state.shadows.offer(&name, || Sample::Predict { body, predictions: predictions.clone() });
            Json(response).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn run(
    state: &ApiState,
    model: &Arc<outpost_runtime::LoadedModel>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(outpost_proto::prediction::PredictResponse, Bytes), ApiError> {
    let model = model.clone();
    let body = body.map_err(body_error)?;
    let gate = &state.predict;
    let admitted = gate.admitted.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("predict queue full ({} pipelines waiting); retry shortly", gate.waiting),
        )
    })?;
    let running = gate
        .running
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the agent is shutting down"))?;
    // The permits move into the task: a pipeline whose client went away still counts until it ends.
    let input = body.clone();
    let task = tokio::task::spawn_blocking(move || {
        let _permits = (admitted, running);
        model.predict_blocking(&input)
    });
    let response = task
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("pipeline task failed: {e}")))??;
    Ok((response, body))
}
