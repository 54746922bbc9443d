//! Pipelines: raw request bodies into model inputs, and model outputs into typed predictions, as
//! a manifest's `[pre]` and `[post]` tables declare.
//!
//! Pre-processing cuts a body into items — one image, or one window of an audio clip or of a
//! sensor series — and gives each an [`ItemMeta`] that remembers where the item came from. The
//! caller runs the model once per item and hands the outputs and the meta to post-processing, which
//! uses the meta to answer in the caller's terms: boxes in the pixels of the image that was sent,
//! not of the letterboxed model input.
//!
//! Every failure is a [`PipelineError`] that says whose fault it is. A client error means the
//! request data is wrong (not a WAV, a ragged sensor array) and the caller should fix it and retry
//! (HTTP 400). A config error means the manifest does not fit the model or itself (a zero window,
//! a detection output of the wrong rank) and only the model's author can fix it (HTTP 500). No
//! input bytes, however malformed, make these functions panic; `fuzz_tests` checks that.
//!
//! - `image` decodes JPEG/PNG and fits it to the input size; `resize` holds the geometry and the
//!   resampler.
//! - `audio` reads 16-bit WAV, `resample` converts the sample rate and `mel` computes log-mel
//!   features.
//! - `sensor` reads JSON series and cuts sliding windows.
//! - `post` reads outputs for classification, events, anomaly scores and regression; `detection`
//!   decodes YOLO boxes and `nms` suppresses duplicates.

mod audio;
mod detection;
mod image;
mod mel;
mod nms;
mod post;
mod resample;
mod resize;
mod sensor;

#[cfg(test)]
mod fuzz_tests;

pub use resize::ImageGeometry;

use crate::Tensor;
use outpost_proto::manifest::{
    ClassificationPost, DetectionPost, Manifest, PostProcess, PreProcess, RegressionPost, Task,
};
use outpost_proto::prediction::Prediction;

/// Most values the items of one request may hold together (64 Mi values, 256 MB as f32), so a long
/// clip or a tiny hop cannot make one request exhaust the device's memory.
const MAX_REQUEST_VALUES: usize = 1 << 26;

/// Pre/post-processing failure.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PipelineError {
    message: String,
    client: bool,
}

impl PipelineError {
    /// The manifest's pipeline is wrong for this model (a server-side problem).
    pub fn from_config(message: String) -> PipelineError {
        PipelineError { message, client: false }
    }

    /// The request data is malformed; the caller should fix it and retry.
    pub fn from_request(message: String) -> PipelineError {
        PipelineError { message, client: true }
    }

    /// Whether the request data is at fault.
    pub fn is_client_error(&self) -> bool {
        self.client
    }
}

/// Shorthand for a config error.
fn config(message: impl Into<String>) -> PipelineError {
    PipelineError::from_config(message.into())
}

/// Shorthand for a client error.
fn client(message: impl Into<String>) -> PipelineError {
    PipelineError::from_request(message.into())
}

/// Where an item came from, so post-processing can answer in the caller's terms.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ItemMeta {
    /// Nothing to undo: the tensor was not made by a pre-processing step.
    #[default]
    Raw,
    /// An image and how it was fitted to the model input.
    Image(ImageGeometry),
    /// A window of an audio clip.
    AudioWindow {
        /// Start of the window, in seconds from the start of the clip.
        start_seconds: f64,
    },
    /// A window of a sensor series.
    SensorWindow {
        /// Index of the window's first time step in the series.
        start: usize,
    },
}

/// Raw data turned into model inputs, one per item (image, audio window, sensor window).
#[derive(Debug)]
pub struct Prepared {
    /// Input tensors with their metadata.
    pub items: Vec<(Tensor, ItemMeta)>,
}

/// Turns raw request bytes into model inputs.
pub fn preprocess(pre: &PreProcess, body: &[u8]) -> Result<Prepared, PipelineError> {
    let items = match pre {
        PreProcess::Image(p) => image::prepare(p, body)?,
        PreProcess::Audio(p) => audio::prepare(p, body)?,
        PreProcess::Sensor(p) => sensor::prepare(p, body)?,
    };
    Ok(Prepared { items })
}

/// Turns model outputs for one item into a typed prediction.
pub fn postprocess(
    post: &PostProcess,
    manifest: &Manifest,
    outputs: &[Tensor],
    meta: &ItemMeta,
) -> Result<Prediction, PipelineError> {
    match post {
        PostProcess::Classification(p) => post::classification(p, manifest, outputs),
        PostProcess::Threshold(p) => post::threshold(p, manifest, outputs),
        PostProcess::Detection(p) => detection::boxes(p, manifest, outputs, meta),
        PostProcess::Anomaly(p) => post::anomaly(p, manifest, outputs),
        PostProcess::Regression(p) => post::regression(p, manifest, outputs),
    }
}

/// The post-processing a manifest implies when it declares none (from its task).
pub fn default_post(manifest: &Manifest) -> Result<PostProcess, PipelineError> {
    let model = &manifest.model.name;
    match manifest.model.task {
        Task::Classification => {
            Ok(PostProcess::Classification(ClassificationPost { output: None, softmax: false, top_k: 5 }))
        }
        Task::Detection => Ok(PostProcess::Detection(DetectionPost {
            output: None,
            format: Default::default(),
            score_threshold: 0.25,
            iou_threshold: 0.45,
            max_detections: 100,
        })),
        Task::Regression => Ok(PostProcess::Regression(RegressionPost::default())),
        // A threshold is a decision about false alarms that only the model's author can make;
        // inventing one (say from reference quantiles) would silently flag or miss events.
        Task::Anomaly => Err(config(format!(
            "model `{model}` has task `anomaly` but no [post] table; add `[post] kind = \"anomaly\"` with a `threshold`"
        ))),
        Task::AudioEvent => Err(config(format!(
            "model `{model}` has task `audio-event` but no [post] table; add `[post] kind = \"threshold\"` with a \
             `threshold`"
        ))),
    }
}

/// Builds an f32 tensor; the shape always matches the data here, so a failure is a bug in this
/// module rather than anything the caller sent.
fn f32_tensor(shape: &[usize], data: &[f32]) -> Result<Tensor, PipelineError> {
    Tensor::from_shape::<f32>(shape, data).map_err(|e| config(format!("building an input tensor {shape:?}: {e}")))
}

/// Checks that `items` items of `per_item` values each stay within [`MAX_REQUEST_VALUES`].
fn check_request_size(what: &str, items: usize, per_item: usize) -> Result<(), PipelineError> {
    match items.checked_mul(per_item) {
        Some(total) if total <= MAX_REQUEST_VALUES => Ok(()),
        _ => Err(client(format!(
            "{what}: the request makes {items} windows of {per_item} values, more than the limit of \
             {MAX_REQUEST_VALUES} values per request; send a shorter series"
        ))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn manifest(task: &str, labels: &[&str]) -> Manifest {
        let labels: Vec<String> = labels.iter().map(|l| format!("\"{l}\"")).collect();
        let text = format!(
            r#"
format = 1
labels = [{}]

[model]
name = "m"
version = "1"
task = "{task}"

[[inputs]]
name = "input"
dtype = "FP32"
shape = [1, 3]

[[outputs]]
name = "scores"
dtype = "FP32"
shape = [1, 3]

[[outputs]]
name = "extra"
dtype = "FP32"
shape = [1]

[files]
"model.onnx" = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
"#,
            labels.join(", ")
        );
        Manifest::from_toml(&text).unwrap()
    }

    #[test]
    fn default_post_follows_the_task() {
        let cls = default_post(&manifest("classification", &[])).unwrap();
        assert!(matches!(cls, PostProcess::Classification(ref c) if !c.softmax && c.top_k == 5));
        let det = default_post(&manifest("detection", &[])).unwrap();
        assert!(matches!(det, PostProcess::Detection(ref d) if d.max_detections == 100));
        assert!(matches!(default_post(&manifest("regression", &[])).unwrap(), PostProcess::Regression(_)));
    }

    #[test]
    fn default_post_refuses_to_invent_thresholds() {
        for task in ["anomaly", "audio-event"] {
            let err = default_post(&manifest(task, &[])).unwrap_err();
            assert!(!err.is_client_error());
            assert!(err.to_string().contains("threshold"), "{err}");
        }
    }

    #[test]
    fn oversized_requests_are_client_errors() {
        assert!(check_request_size("audio", 10, 100).is_ok());
        let err = check_request_size("audio", usize::MAX, 2).unwrap_err();
        assert!(err.is_client_error());
        assert!(check_request_size("audio", 1 << 20, 1 << 20).is_err());
    }
}
