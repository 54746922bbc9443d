//! Golden self-tests: run the package's recorded inputs and compare with the recorded outputs.
//!
//! A model that loads is not necessarily a model that works: a different backend, a bad
//! optimisation or a silently corrupted weight can all produce plausible but wrong numbers. The
//! self-test runs before a model is put in service and again on demand (re-verify).

use crate::backend::Engine;
use crate::tensor::{tensor_from_json, tensor_to_json};
use crate::{RuntimeError, Tensor};
use outpost_proto::manifest::{NamedTensor, SelfTest};
use serde_json::Value;

/// Outcome of a passed self-test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelfTestReport {
    /// Cases run.
    pub cases: usize,
    /// Largest absolute difference seen.
    pub max_abs_diff: f64,
}

/// Converts a golden tensor to a runtime tensor.
pub fn to_tensor(t: &NamedTensor) -> Result<Tensor, RuntimeError> {
    tensor_from_json(&t.name, t.dtype, &t.shape, &Value::Array(t.data.clone()))
}

/// Converts a runtime tensor to a golden tensor.
pub fn to_named(name: &str, t: &Tensor) -> Result<NamedTensor, RuntimeError> {
    let dtype = crate::tensor::dtype_of(t.datum_type()).ok_or_else(|| RuntimeError::SelfTest {
        model: String::new(),
        reason: format!("`{name}` has type {:?} which golden vectors cannot hold", t.datum_type()),
    })?;
    let data = match tensor_to_json(t)? {
        Value::Array(items) => items,
        other => vec![other],
    };
    Ok(NamedTensor { name: name.to_string(), dtype, shape: t.shape().to_vec(), data })
}

/// Runs every case on a fresh session of `engine`; fails on the first output out of tolerance.
pub fn run(
    model: &str,
    engine: &dyn Engine,
    test: &SelfTest,
    atol: f64,
    rtol: f64,
) -> Result<SelfTestReport, RuntimeError> {
    let fail = |reason: String| RuntimeError::SelfTest { model: model.to_string(), reason };
    let mut session = engine.session()?;
    let mut max_abs_diff: f64 = 0.0;
    for (ci, case) in test.cases.iter().enumerate() {
        let mut inputs = Vec::with_capacity(engine.inputs().len());
        for spec in engine.inputs() {
            let golden = case
                .inputs
                .iter()
                .find(|t| t.name == spec.name)
                .ok_or_else(|| fail(format!("case {ci} has no input `{}`", spec.name)))?;
            inputs.push(to_tensor(golden)?);
        }
        let outputs = session.run(inputs).map_err(|e| fail(format!("case {ci}: {e}")))?;
        for expected in &case.outputs {
            let ix = engine
                .outputs()
                .iter()
                .position(|o| o.name == expected.name)
                .ok_or_else(|| fail(format!("case {ci}: model has no output `{}`", expected.name)))?;
            let actual = &outputs[ix];
            if actual.shape() != expected.shape.as_slice() {
                return Err(fail(format!(
                    "case {ci}: output `{}` has shape {:?}, expected {:?}",
                    expected.name,
                    actual.shape(),
                    expected.shape
                )));
            }
            // Labels (a classifier's string classes) must be equal, not close.
            if let Ok(labels) = crate::tensor::values::<String>(actual) {
                for (i, (a, e)) in labels.iter().zip(&expected.data).enumerate() {
                    if e.as_str() != Some(a.as_str()) {
                        return Err(fail(format!("case {ci}: output `{}`[{i}] is {a:?}, expected {e}", expected.name)));
                    }
                }
                continue;
            }
            let actual = actual.cast_to::<f64>().map_err(|e| fail(e.to_string()))?;
            let actual = crate::tensor::values::<f64>(&actual).map_err(|e| fail(e.to_string()))?;
            for (i, (a, e)) in actual.iter().zip(&expected.data).enumerate() {
                let e = e.as_f64().or_else(|| e.as_bool().map(|b| b as u8 as f64)).unwrap_or(f64::NAN);
                let diff = (a - e).abs();
                // NaN on either side must fail, so test for "within tolerance" and negate.
                let within = diff <= atol + rtol * e.abs();
                if !within {
                    return Err(fail(format!(
                        "case {ci}: output `{}`[{i}] is {a}, expected {e} (|diff| {diff:.3e} > atol {atol:e} + rtol {rtol:e})",
                        expected.name
                    )));
                }
                max_abs_diff = max_abs_diff.max(diff);
            }
        }
    }
    Ok(SelfTestReport { cases: test.cases.len(), max_abs_diff })
}
