//! Running the exported ONNX bytes with tract, the way a device will.
//!
//! Every number training reports (threshold, ROC-AUC, self-test outputs) comes from here, so it
//! describes the shipped artifact rather than the in-memory model it was made from.

use crate::synth::{CHANNELS, WINDOW};
use crate::TrainError;
use std::sync::Arc;
use tract_onnx::prelude::*;

/// Windows per tract run when scoring large sets; bounds the activation memory.
const CHUNK: usize = 512;

/// The exported anomaly model, parsed and optimised by tract.
#[derive(Debug, Clone)]
pub struct ArtifactScorer {
    plan: Arc<TypedRunnableModel>,
    batch: Option<usize>,
}

fn tract_err(stage: &'static str) -> impl Fn(TractError) -> TrainError {
    move |e| TrainError::Tract { stage, reason: format!("{e:#}") }
}

impl ArtifactScorer {
    /// Loads `onnx`; with `batch` the symbolic batch is pinned (as a manifest's `symbols` do),
    /// without it the plan stays symbolic and accepts any batch.
    pub fn load(onnx: &[u8], batch: Option<usize>) -> Result<ArtifactScorer, TrainError> {
        let mut model = tract_onnx::onnx().model_for_read(&mut &onnx[..]).map_err(tract_err("parse"))?;
        if let Some(b) = batch {
            let fact = InferenceFact::dt_shape(f32::datum_type(), tvec!(b, CHANNELS, WINDOW));
            model.set_input_fact(0, fact).map_err(tract_err("pin batch"))?;
        }
        let plan = model.into_optimized().map_err(tract_err("optimise"))?.into_runnable().map_err(tract_err("plan"))?;
        Ok(ArtifactScorer { plan, batch })
    }

    /// Scores channels-first windows (`CHANNELS * WINDOW` values each), one score per window.
    pub fn scores(&self, windows: &[f32]) -> Result<Vec<f32>, TrainError> {
        let per_window = CHANNELS * WINDOW;
        // Bound separately: `is_multiple_of` is newer than the workspace's minimum Rust.
        let partial = windows.len() % per_window;
        if partial != 0 {
            return Err(TrainError::Tract {
                stage: "input",
                reason: format!("{} values is not a whole number of {per_window}-value windows", windows.len()),
            });
        }
        let chunk = self.batch.unwrap_or(CHUNK);
        let mut scores = Vec::with_capacity(windows.len() / per_window);
        for part in windows.chunks(chunk * per_window) {
            let n = part.len() / per_window;
            if self.batch.is_some_and(|b| b != n) {
                return Err(TrainError::Tract {
                    stage: "input",
                    reason: format!("the plan is pinned to batch {chunk} but {n} windows remain"),
                });
            }
            let input = Tensor::from_shape(&[n, CHANNELS, WINDOW], part).map_err(tract_err("input"))?;
            let outputs = self.plan.run(tvec!(input.into())).map_err(tract_err("run"))?;
            let out = outputs.first().ok_or_else(|| TrainError::Tract { stage: "run", reason: "no output".into() })?;
            let plain = out.try_as_plain_ram().map_err(tract_err("output"))?;
            let values = plain.as_slice::<f32>().map_err(tract_err("output"))?;
            if values.len() != n {
                return Err(TrainError::Tract {
                    stage: "output",
                    reason: format!("expected {n} scores, got {}", values.len()),
                });
            }
            scores.extend_from_slice(values);
        }
        Ok(scores)
    }
}
