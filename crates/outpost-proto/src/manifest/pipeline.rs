//! Pre- and post-processing steps a manifest declares: how raw data becomes model input and
//! how outputs become typed predictions.

use crate::DType;
use serde::{Deserialize, Serialize};

/// Pre-processing: raw data to model input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PreProcess {
    /// JPEG/PNG image.
    Image(ImagePre),
    /// 16-bit PCM WAV.
    Audio(AudioPre),
    /// Multichannel sensor series as JSON.
    Sensor(SensorPre),
}

/// Image pre-processing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePre {
    /// Model input width in pixels.
    pub width: u32,
    /// Model input height in pixels.
    pub height: u32,
    /// How the image is fitted to width x height.
    #[serde(default)]
    pub resize: ResizeMode,
    /// Tensor layout.
    #[serde(default)]
    pub layout: ImageLayout,
    /// Channel order and count.
    #[serde(default)]
    pub color: ColorOrder,
    /// Element type of the tensor: `UINT8` keeps raw pixels, `FP32` applies scale/mean/std.
    #[serde(default = "default_image_dtype")]
    pub dtype: DType,
    /// Multiplier applied to pixel values before mean/std (`1/255` maps to 0..1).
    #[serde(default = "default_scale")]
    pub scale: f32,
    /// Per-channel mean subtracted after scaling.
    #[serde(default = "default_mean")]
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided after mean subtraction.
    #[serde(default = "default_std")]
    pub std: Vec<f32>,
    /// Pixel value of letterbox padding.
    #[serde(default = "default_pad")]
    pub pad_value: u8,
}

fn default_image_dtype() -> DType {
    DType::F32
}
fn default_scale() -> f32 {
    1.0 / 255.0
}
fn default_mean() -> Vec<f32> {
    vec![0.0; 3]
}
fn default_std() -> Vec<f32> {
    vec![1.0; 3]
}
fn default_pad() -> u8 {
    114
}

/// How an image is fitted to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Scale each axis independently.
    #[default]
    Stretch,
    /// Keep aspect ratio, pad the rest (YOLO style).
    Letterbox,
    /// Scale the short side, crop the centre.
    CenterCrop,
}

/// Image tensor layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageLayout {
    /// `[1, C, H, W]`.
    #[default]
    Nchw,
    /// `[1, H, W, C]`.
    Nhwc,
}

/// Channel order of the image tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    /// Red, green, blue.
    #[default]
    Rgb,
    /// Blue, green, red (OpenCV-trained models).
    Bgr,
    /// One luminance channel.
    Gray,
}

/// Audio pre-processing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioPre {
    /// Sample rate the model expects; input is resampled to it.
    pub sample_rate: u32,
    /// Samples per model window; the clip is cut into windows of this length (zero-padded).
    pub window_samples: usize,
    /// Hop between windows in samples; defaults to `window_samples`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop_samples: Option<usize>,
    /// What the model consumes.
    #[serde(default)]
    pub features: AudioFeatures,
    /// FFT size for log-mel features.
    #[serde(default = "default_n_fft")]
    pub n_fft: usize,
    /// Hop between STFT frames in samples.
    #[serde(default = "default_hop")]
    pub hop_length: usize,
    /// Number of mel bands.
    #[serde(default = "default_n_mels")]
    pub n_mels: usize,
    /// Lowest mel frequency in Hz.
    #[serde(default)]
    pub f_min: f32,
    /// Highest mel frequency in Hz; defaults to Nyquist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f_max: Option<f32>,
    /// Added before the logarithm to avoid log(0).
    #[serde(default = "default_log_offset")]
    pub log_offset: f32,
    /// Tensor layout of log-mel features.
    #[serde(default)]
    pub mel_layout: MelLayout,
}

fn default_n_fft() -> usize {
    512
}
fn default_hop() -> usize {
    160
}
fn default_n_mels() -> usize {
    40
}
fn default_log_offset() -> f32 {
    1e-6
}

/// Audio model input kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioFeatures {
    /// Raw float waveform in [-1, 1], shape `[1, window_samples]`.
    #[default]
    Waveform,
    /// Log-mel spectrogram.
    LogMel,
}

/// Layout of a log-mel tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MelLayout {
    /// `[1, n_mels, frames]`.
    #[default]
    MelsFrames,
    /// `[1, frames, n_mels]`.
    FramesMels,
}

/// Sensor pre-processing: sliding windows over a multichannel series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorPre {
    /// Number of channels.
    pub channels: usize,
    /// Samples per window.
    pub window: usize,
    /// Step between windows; defaults to `window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<usize>,
    /// Scaling applied per channel.
    #[serde(default)]
    pub scaling: Scaling,
    /// Tensor layout of one window.
    #[serde(default)]
    pub layout: SensorLayout,
}

/// Per-channel scaling of sensor values.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Scaling {
    /// Values pass through unchanged.
    #[default]
    None,
    /// `(x - mean) / std` per channel.
    Standard {
        /// Per-channel mean.
        mean: Vec<f32>,
        /// Per-channel standard deviation.
        std: Vec<f32>,
    },
    /// `(x - min) / (max - min)` per channel.
    Minmax {
        /// Per-channel minimum.
        min: Vec<f32>,
        /// Per-channel maximum.
        max: Vec<f32>,
    },
}

/// Tensor layout of one sensor window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorLayout {
    /// `[1, channels, window]`.
    #[default]
    ChannelsFirst,
    /// `[1, window, channels]`.
    ChannelsLast,
    /// `[1, window * channels]`, channels interleaved per time step.
    Flat,
}

/// Post-processing: model outputs to typed results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PostProcess {
    /// Scores per class: optional softmax, then top-k with labels.
    Classification(ClassificationPost),
    /// One score against a threshold (voice activity, wake word).
    Threshold(ThresholdPost),
    /// YOLO-style box decoding with non-maximum suppression.
    Detection(DetectionPost),
    /// Anomaly score against a threshold.
    Anomaly(AnomalyPost),
    /// Raw numeric values.
    Regression(RegressionPost),
}

/// Classification post-processing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassificationPost {
    /// Output to read; the first output when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Apply softmax (the output holds logits).
    #[serde(default)]
    pub softmax: bool,
    /// How many classes to return.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
}

fn default_top_k() -> usize {
    5
}

/// Threshold post-processing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdPost {
    /// Output to read; the first output when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Score at or above which the event is detected.
    pub threshold: f32,
    /// Name of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Detection post-processing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionPost {
    /// Output to read; the first output when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Layout of the raw predictions.
    #[serde(default)]
    pub format: DetectionFormat,
    /// Minimum class score kept.
    #[serde(default = "default_score_threshold")]
    pub score_threshold: f32,
    /// IoU above which overlapping boxes of one class are suppressed.
    #[serde(default = "default_iou")]
    pub iou_threshold: f32,
    /// Most boxes returned per image.
    #[serde(default = "default_max_det")]
    pub max_detections: usize,
}

fn default_score_threshold() -> f32 {
    0.25
}
fn default_iou() -> f32 {
    0.45
}
fn default_max_det() -> usize {
    100
}

/// Layout of raw YOLO predictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectionFormat {
    /// `[1, 4 + classes, boxes]`, centre-x/y/w/h then class scores (YOLOv8 and later).
    #[default]
    Yolov8,
    /// `[1, boxes, 5 + classes]`, centre-x/y/w/h, objectness, class scores.
    Yolov5,
}

/// Anomaly post-processing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyPost {
    /// Output holding one score per window; the first output when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Score above which a window is anomalous.
    pub threshold: f32,
}

/// Regression post-processing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegressionPost {
    /// Output to read; the first output when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl PostProcess {
    /// The output this step reads, when the manifest names one.
    pub fn output(&self) -> Option<&str> {
        match self {
            PostProcess::Classification(p) => p.output.as_deref(),
            PostProcess::Threshold(p) => p.output.as_deref(),
            PostProcess::Detection(p) => p.output.as_deref(),
            PostProcess::Anomaly(p) => p.output.as_deref(),
            PostProcess::Regression(p) => p.output.as_deref(),
        }
    }
}
