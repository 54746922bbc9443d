//! Typed results of `POST /v1/models/{m}/predict`: what a pipeline's post-processing returns.

use serde::{Deserialize, Serialize};

/// One result: per image, per audio window or per sensor window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Prediction {
    /// Top classes with scores.
    Classification {
        /// Best classes first.
        top: Vec<LabelScore>,
    },
    /// Detected objects.
    Detection {
        /// Boxes after non-maximum suppression, best first.
        boxes: Vec<BoundingBox>,
    },
    /// Anomaly score of one window.
    Anomaly {
        /// Score; higher is more anomalous.
        score: f32,
        /// Threshold from the manifest.
        threshold: f32,
        /// `score > threshold`.
        anomalous: bool,
    },
    /// An event score (voice activity, wake word).
    Event {
        /// Score.
        score: f32,
        /// Threshold from the manifest.
        threshold: f32,
        /// `score >= threshold`.
        detected: bool,
        /// Event name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
    /// Raw numeric outputs.
    Regression {
        /// Values in row-major order.
        values: Vec<f32>,
    },
}

/// A class with its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelScore {
    /// Class index.
    pub index: usize,
    /// Label from the manifest, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Score (probability after softmax).
    pub score: f32,
}

/// An object box in the pixel coordinates of the original image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundingBox {
    /// Class index.
    pub index: usize,
    /// Label from the manifest, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Class score.
    pub score: f32,
    /// Left edge.
    pub x1: f32,
    /// Top edge.
    pub y1: f32,
    /// Right edge.
    pub x2: f32,
    /// Bottom edge.
    pub y2: f32,
}

/// Time spent in each stage of a predict call, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StageTimings {
    /// Decoding and pre-processing.
    pub pre_us: u64,
    /// Model execution, summed over windows.
    pub infer_us: u64,
    /// Post-processing.
    pub post_us: u64,
}

/// `POST /v1/models/{m}/predict` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictResponse {
    /// Model that answered.
    pub model_name: String,
    /// Version that answered.
    pub model_version: String,
    /// One prediction per image or window, in input order.
    pub predictions: Vec<Prediction>,
    /// Stage timings.
    pub timings: StageTimings,
}
