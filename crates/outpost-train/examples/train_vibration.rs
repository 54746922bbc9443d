//! Trains the vibration anomaly detector with the default config and prints how good it is.
//!
//! `cargo run --release -p outpost-train --example train_vibration -- [OUT_DIR]` also writes
//! `model.onnx`, `selftest.json` and `manifest.toml` (files unhashed) to OUT_DIR, which is how
//! the export was cross-checked against onnxruntime by hand.

use outpost_train::{train_vibration_anomaly, TrainConfig};
use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn Error>> {
    let cfg = TrainConfig::default();
    let started = Instant::now();
    let model = train_vibration_anomaly(&cfg)?;
    let elapsed = started.elapsed();
    let e = &model.evaluation;
    println!(
        "trained in {:.2} s: {} components, {} bytes of ONNX",
        elapsed.as_secs_f64(),
        e.components,
        model.onnx.len()
    );
    println!(
        "held-out: ROC-AUC {:.4}, threshold {:.4}, TPR {:.4}, FPR {:.4} ({} windows)",
        e.roc_auc, e.threshold, e.tpr, e.fpr, e.test_windows
    );
    for (name, auc, rate) in &e.per_condition {
        println!("  {name:<11} AUC {auc:.4}  detected {rate:.4}");
    }
    if let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("model.onnx"), &model.onnx)?;
        std::fs::write(dir.join("selftest.json"), serde_json::to_vec_pretty(&model.selftest)?)?;
        std::fs::write(dir.join("manifest.toml"), model.manifest.to_toml())?;
        println!("wrote {}", dir.display());
    }
    Ok(())
}
