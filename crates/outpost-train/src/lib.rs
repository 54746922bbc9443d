//! Models outpost makes itself: synthetic sensor data, training, and ONNX export.
//!
//! `outpost demo` needs a real model to deploy, roll out and monitor, and it must not depend on
//! a download or a Python toolchain. This crate trains one in a few seconds: a vibration
//! anomaly detector for rotating machines ([`train_vibration_anomaly`]), fitted on synthetic
//! accelerometer data ([`synth`]) and written as a plain ONNX graph ([`onnx`]) that tract and
//! onnxruntime both run. It returns the model bytes with the package manifest and golden
//! self-test vectors; writing and hashing the package is the packager's job.
//!
//! Every quality number it reports is measured by running the exported bytes, not the
//! in-memory model, so it describes what ships.

mod anomaly;
mod artifact;
mod error;
mod golden;
mod metrics;
pub mod onnx;
mod pca;
mod spectrum;
pub mod synth;

pub use anomaly::{
    demo_windows, train_vibration_anomaly, Evaluation, TrainConfig, TrainedModel, BATCH, INPUT, MODEL_NAME, OUTPUT,
    SELFTEST_FILE,
};
pub use error::TrainError;
pub use synth::{Condition, VibrationSource, CHANNELS, SAMPLE_RATE, WINDOW};
