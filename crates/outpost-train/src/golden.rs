//! Golden self-test vectors for the vibration model.
//!
//! A device runs these after installing a model and before switching to it: if the outputs
//! differ, the file is corrupt or the device's runtime computes something else, and the update
//! rolls back. So the expected outputs come from tract running the exported bytes with the
//! manifest's batch of 1, exactly as the device will, and the cases cover both sides of the
//! threshold.

use crate::anomaly::{INPUT, OUTPUT};
use crate::artifact::ArtifactScorer;
use crate::synth::{Condition, VibrationSource, CHANNELS, WINDOW};
use crate::TrainError;
use outpost_proto::manifest::{GoldenCase, NamedTensor, SelfTest};
use outpost_proto::DType;

/// Conditions of the golden cases: two healthy, two clearly faulty.
const CASES: [(Condition, f32); 4] =
    [(Condition::Normal, 0.0), (Condition::Normal, 0.0), (Condition::OuterRace, 0.8), (Condition::Looseness, 0.8)];

/// Builds the self-test for `onnx` from windows drawn with `seed`.
pub fn selftest(onnx: &[u8], seed: u64) -> Result<SelfTest, TrainError> {
    let scorer = ArtifactScorer::load(onnx, Some(1))?;
    let mut source = VibrationSource::new(seed);
    let mut cases = Vec::with_capacity(CASES.len());
    for (case, (condition, severity)) in CASES.into_iter().enumerate() {
        let window = source.window(condition, severity);
        let scores = scorer.scores(&window)?;
        let input = tensor(case, INPUT, vec![1, CHANNELS, WINDOW], &window)?;
        let output = tensor(case, OUTPUT, vec![1], &scores)?;
        cases.push(GoldenCase { inputs: vec![input], outputs: vec![output] });
    }
    Ok(SelfTest { cases, synthetic: vec![], recorded_with: Some("tract".into()) })
}

fn tensor(case: usize, name: &str, shape: Vec<usize>, values: &[f32]) -> Result<NamedTensor, TrainError> {
    let data = values
        .iter()
        .map(|&v| {
            serde_json::Number::from_f64(f64::from(v))
                .map(serde_json::Value::Number)
                .ok_or_else(|| TrainError::NotFinite { case, tensor: name.to_string(), value: v })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NamedTensor { name: name.to_string(), dtype: DType::F32, shape, data })
}
