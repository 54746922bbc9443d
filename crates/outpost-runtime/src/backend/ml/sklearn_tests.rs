//! Real skl2onnx exports on tract, against the outputs onnxruntime recorded for them.
//!
//! `scripts/test-models/sklearn.py` writes `sklearn-<id>/` directories under
//! `$OUTPOST_TEST_MODELS` (default `target/models/generated` in the workspace): each has
//! `model-tensor.onnx` and two cases (batch 1 and batch 5) of inputs and onnxruntime outputs.

use crate::backend::tract::TractEngine;
use crate::backend::{Engine, EngineOptions};
use crate::bench::load_dump;
use crate::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tract_onnx::prelude::DatumType;

/// Relative tolerance on float outputs, with an absolute floor for values near zero.
const RTOL: f32 = 1e-5;
const ATOL: f32 = 1e-6;

fn models_dir() -> PathBuf {
    match std::env::var_os("OUTPOST_TEST_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/models/generated"),
    }
}

/// The `sklearn-*` model directories, or why there are none.
fn sklearn_models() -> Result<Vec<PathBuf>, String> {
    let dir = models_dir();
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut models: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("sklearn-")))
        .collect();
    models.sort();
    if models.is_empty() {
        return Err(format!("{} holds no sklearn-* model", dir.display()));
    }
    Ok(models)
}

/// The largest relative error between two float tensors, or why they cannot be compared.
fn compare(name: &str, got: &Tensor, want: &Tensor) -> Result<f32, String> {
    if got.shape() != want.shape() {
        return Err(format!("`{name}`: shape {:?}, onnxruntime {:?}", got.shape(), want.shape()));
    }
    match want.datum_type() {
        DatumType::F32 => {
            let got = got.cast_to::<f32>().map_err(|e| e.to_string())?;
            let (g, w) = (crate::tensor::values::<f32>(&got), crate::tensor::values::<f32>(want));
            let (g, w) = (g.map_err(|e| e.to_string())?, w.map_err(|e| e.to_string())?);
            let mut worst = 0f32;
            for (i, (a, b)) in g.iter().zip(w).enumerate() {
                let err = (a - b).abs();
                if err > RTOL * b.abs() + ATOL || a.is_nan() != b.is_nan() {
                    return Err(format!("`{name}`[{i}]: tract {a}, onnxruntime {b}"));
                }
                worst = worst.max(err / b.abs().max(ATOL));
            }
            Ok(worst)
        }
        _ if got == want => Ok(0.0),
        _ => Err(format!("`{name}`: tract {got:?}, onnxruntime {want:?}")),
    }
}

/// Loads one model on tract and checks both cases; returns the worst relative error.
fn check_model(dir: &Path) -> Result<f32, String> {
    let model = dir.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string();
    let bytes = std::fs::read(dir.join("model-tensor.onnx")).map_err(|e| e.to_string())?;
    let report = crate::inspect::inspect(&bytes, &BTreeMap::new()).map_err(|e| e.to_string())?;
    if !report.unsupported_ops.is_empty() {
        return Err(format!("inspect reports unsupported operators {:?}", report.unsupported_ops));
    }
    let mut worst = 0f32;
    for case in ["case0", "case1"] {
        let case = dir.join(case);
        let inputs = load_dump(&case, "inputs.json").map_err(|e| e.to_string())?;
        let expected = load_dump(&case, "outputs.json").map_err(|e| e.to_string())?;
        // Pinned to the case's shapes: this test is about the operators; serving the unnamed
        // batch dynamically is covered by the real-model tests.
        let input_shapes =
            inputs.iter().map(|(n, t)| (n.clone(), t.shape().iter().map(|d| Some(*d)).collect())).collect();
        let opts = EngineOptions { model_name: model.clone(), input_shapes, ..Default::default() };
        let engine = TractEngine::load(&bytes, &opts).map_err(|e| e.to_string())?;
        let mut session = engine.session().map_err(|e| e.to_string())?;
        let outputs = session.run(inputs.into_iter().map(|(_, t)| t).collect()).map_err(|e| e.to_string())?;
        let names: Vec<&str> = engine.outputs().iter().map(|o| o.name.as_str()).collect();
        let want_names: Vec<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        if names != want_names {
            return Err(format!("outputs {names:?}, onnxruntime recorded {want_names:?}"));
        }
        for ((name, want), got) in expected.iter().zip(&outputs) {
            worst = worst.max(compare(name, got, want).map_err(|e| format!("{}: {e}", case.display()))?);
        }
    }
    Ok(worst)
}

#[test]
fn sklearn_exports_run_on_tract_and_match_onnxruntime() {
    let models = match sklearn_models() {
        Ok(models) => models,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI needs the scikit-learn test models (scripts/test-models/sklearn.py): {why}")
        }
        Err(why) => {
            eprintln!("note: skipping the scikit-learn model test ({why}); run scripts/test-models/sklearn.py");
            return;
        }
    };
    let mut failures = Vec::new();
    for dir in &models {
        match check_model(dir) {
            Ok(worst) => eprintln!("{}: matches onnxruntime (worst relative error {worst:.1e})", dir.display()),
            Err(e) => failures.push(format!("{}: {e}", dir.display())),
        }
    }
    assert!(failures.is_empty(), "{} of {} models differ:\n{}", failures.len(), models.len(), failures.join("\n"));
}
