//! Running a loaded candidate on a sampled request and comparing its answer with the one the
//! serving model gave, on the shadow's thread.

use super::compare::{self, Agreement, Values};
use super::Evaluate;
use crate::http::codec;
use axum::body::Bytes;
use outpost_proto::manifest::Task;
use outpost_proto::prediction::Prediction;
use outpost_runtime::model::MemoryBudget;
use outpost_runtime::pipeline::{self, ItemMeta};
use outpost_runtime::{LoadOptions, LoadedModel, Package, RuntimeError, Tensor};
use std::sync::Arc;

/// One sampled request, as the serving model answered it.
#[derive(Debug)]
pub enum Sample {
    /// An OIP v2 `infer` request: its body (decoded again for the candidate's inputs) and the
    /// serving model's outputs.
    Infer {
        /// The model that answered.
        serving: Arc<LoadedModel>,
        /// The request body.
        body: Bytes,
        /// Its `Inference-Header-Content-Length`, when binary tensors follow the JSON.
        header_len: Option<usize>,
        /// The outputs the client was sent (before output selection).
        outputs: Vec<Tensor>,
    },
    /// A v1 `predict` request: the raw data (run through the candidate's own pipeline) and the
    /// serving model's predictions.
    Predict {
        /// The request body.
        body: Bytes,
        /// The predictions the client was sent.
        predictions: Vec<Prediction>,
    },
}

/// A loaded candidate version.
#[derive(Debug)]
pub struct CandidateModel(pub LoadedModel);

impl CandidateModel {
    /// Loads `pkg` as a candidate: the agent's `options` on one single-threaded session with a
    /// queue of one (one sampled request at a time reaches it, and its run time is what the CPU
    /// allowance charges as one core), inside the shared `budget`. Loads on a thread of its own
    /// at the lowest priority, which the candidate's session threads inherit.
    pub fn load(pkg: &Package, options: &LoadOptions, budget: &MemoryBudget) -> Result<CandidateModel, RuntimeError> {
        let options = candidate_options(options);
        std::thread::scope(|scope| {
            let loading = std::thread::Builder::new().name("shadow-load".into()).spawn_scoped(scope, || {
                super::lowest_priority();
                LoadedModel::load(pkg, &options, budget).map(CandidateModel)
            });
            let loading = loading.map_err(|e| RuntimeError::Inference {
                model: pkg.manifest.model.name.clone(),
                reason: format!("cannot start a thread to load the shadow candidate: {e}"),
            })?;
            loading.join().unwrap_or_else(|_| {
                Err(RuntimeError::Inference {
                    model: pkg.manifest.model.name.clone(),
                    reason: "loading the shadow candidate panicked".into(),
                })
            })
        })
    }
}

/// Load options for a candidate: the agent's, on one single-threaded session with a queue of one.
pub fn candidate_options(agent: &LoadOptions) -> LoadOptions {
    LoadOptions { sessions: 1, queue_capacity: 1, threads: 1, ..agent.clone() }
}

impl Evaluate for CandidateModel {
    fn evaluate(&self, sample: Sample) -> Result<Agreement, String> {
        let candidate = &self.0;
        match sample {
            Sample::Predict { body, predictions } => {
                let answer = candidate.predict_blocking(&body).map_err(|e| e.to_string())?;
                compare::predictions(&predictions, &answer.predictions).map_err(|e| e.to_string())
            }
            Sample::Infer { serving, body, header_len, outputs } => {
                let parsed = codec::parse_request(&body, header_len).map_err(|e| e.message)?;
                let inputs = codec::decode_inputs(&parsed, candidate.inputs()).map_err(|e| e.message)?;
                let done = candidate.infer_blocking(inputs).map_err(|e| e.to_string())?;
                let theirs = done.result.map_err(|e| e.to_string())?;
                compare_outputs(&serving, &outputs, candidate, &theirs)
            }
        }
    }
}

/// Compares raw outputs by the serving model's task: read into typed predictions by each
/// model's own post-processing where the task has one and the serving outputs fit it (one
/// item); value by value otherwise, and always for regression, where every output counts.
fn compare_outputs(
    serving: &LoadedModel,
    ours: &[Tensor],
    candidate: &LoadedModel,
    theirs: &[Tensor],
) -> Result<Agreement, String> {
    let typed = |model: &LoadedModel, outputs: &[Tensor]| {
        let post =
            model.post().ok_or_else(|| format!("model {}@{} has no post-processing", model.name(), model.version()))?;
        pipeline::postprocess(post, &model.manifest, outputs, &ItemMeta::Raw).map_err(|e| e.to_string())
    };
    if serving.manifest.model.task != Task::Regression {
        if let Ok(served) = typed(serving, ours) {
            let answered = typed(candidate, theirs)?;
            return compare::prediction(&served, &answered).map_err(|e| e.to_string());
        }
    }
    compare::tensors(&values(ours)?, &values(theirs)?).map_err(|e| e.to_string())
}

fn values(outputs: &[Tensor]) -> Result<Vec<Values>, String> {
    outputs
        .iter()
        .map(|t| {
            let f = t.cast_to::<f32>().map_err(|e| format!("an output is not numeric: {e}"))?;
            let data = outpost_runtime::tensor::values::<f32>(&f).map_err(|e| e.to_string())?.to_vec();
            Ok(Values { shape: t.shape().to_vec(), data })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candidate_runs_on_one_single_threaded_session() {
        let agent = LoadOptions { sessions: 4, queue_capacity: 64, threads: 4, ..LoadOptions::default() };
        let o = candidate_options(&agent);
        assert_eq!((o.sessions, o.queue_capacity, o.threads), (1, 1, 1));
        assert_eq!(o.run_selftest, agent.run_selftest, "the same self-test as a served version");
    }
}
