//! The model package manifest (`manifest.toml`): what a model is, what it takes and returns,
//! how raw data is turned into tensors and tensors into results, how to self-test it, and the
//! sha256 of every file in the package.
//!
//! This module only describes the format; reading packages from disk, verifying hashes and
//! running pipelines is `outpost-runtime`'s job.

use crate::DType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

mod pipeline;
pub use pipeline::*;

/// Current manifest format version.
pub const FORMAT_VERSION: u32 = 1;
/// File name of the manifest inside a package.
pub const MANIFEST_FILE: &str = "manifest.toml";

/// Parsed `manifest.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version; readers refuse versions newer than [`FORMAT_VERSION`].
    pub format: u32,
    /// Identity and purpose of the model.
    pub model: ModelInfo,
    /// Model inputs, in graph order.
    pub inputs: Vec<TensorSpec>,
    /// Model outputs, in graph order.
    pub outputs: Vec<TensorSpec>,
    /// Values pinned for symbolic dimensions (`batch = 1`, `height = 640`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub symbols: BTreeMap<String, i64>,
    /// Symbolic dimensions that stay dynamic, with the sizes a request may use
    /// (`sequence = { min = 1, max = 512 }`). A symbol neither pinned nor listed here is free:
    /// any size from 1 up.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ranges: BTreeMap<String, DimRange>,
    /// Class labels, indexed by class id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// How raw data (image, WAV, sensor window) becomes the model input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre: Option<PreProcess>,
    /// How model outputs become typed results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<PostProcess>,
    /// Golden self-test vectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selftest: Option<SelfTestRef>,
    /// Reference statistics of inputs and outputs on representative data, for drift detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceStats>,
    /// sha256 (lowercase hex) of every file in the package except the manifest itself.
    pub files: BTreeMap<String, String>,
}

/// Identity and purpose of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// Model name, `[a-z0-9._-]+`.
    pub name: String,
    /// Model version, `[A-Za-z0-9._-]+`; versions compare numerically when both are numbers.
    pub version: String,
    /// What the model does.
    pub task: Task,
    /// Human description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The ONNX file inside the package.
    #[serde(default = "default_model_file")]
    pub file: String,
    /// Which inference backend to use.
    #[serde(default)]
    pub backend: BackendChoice,
    /// Under `backend = "auto"`: the backend `model pack` measured fastest among those that
    /// loaded the model and matched the reference outputs; devices try it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred: Option<BackendChoice>,
}

fn default_model_file() -> String {
    "model.onnx".to_string()
}

/// What a model does; decides which result type `predict` returns by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Image or signal classification.
    Classification,
    /// Object detection with boxes.
    Detection,
    /// Anomaly score against a threshold.
    Anomaly,
    /// Audio events (voice activity, wake word).
    AudioEvent,
    /// Numeric outputs.
    Regression,
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Task::Classification => "classification",
            Task::Detection => "detection",
            Task::Anomaly => "anomaly",
            Task::AudioEvent => "audio-event",
            Task::Regression => "regression",
        })
    }
}

/// Backend selection for a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Use the measured-faster backend that loads, preferring tract.
    #[default]
    Auto,
    /// Pure-Rust tract.
    Tract,
    /// ONNX Runtime loaded from its shared library at run time.
    Onnxruntime,
}

/// Name, type and shape of a model input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Tensor name in the graph.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape; symbolic dimensions are strings.
    pub shape: Vec<Dim>,
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A named symbol (`batch`), possibly pinned in [`Manifest::symbols`].
    Symbol(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => f.write_str(s),
        }
    }
}

/// Sizes a dynamic dimension accepts, both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DimRange {
    /// Smallest size (at least 1).
    #[serde(default = "one")]
    pub min: i64,
    /// Largest size; unbounded when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
}

fn one() -> i64 {
    1
}

impl Default for DimRange {
    fn default() -> Self {
        DimRange { min: 1, max: None }
    }
}

impl DimRange {
    /// Whether `size` is within the range.
    pub fn contains(&self, size: i64) -> bool {
        size >= self.min && self.max.is_none_or(|m| size <= m)
    }
}

impl fmt::Display for DimRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.max {
            Some(max) => write!(f, "{}..={max}", self.min),
            None => write!(f, "{}..", self.min),
        }
    }
}

impl std::str::FromStr for DimRange {
    type Err = String;
    /// `1..=512`, `16..` or `..=4096`.
    fn from_str(s: &str) -> Result<DimRange, String> {
        let bad = || format!("`{s}` is not a range like 1..=512 or 16..");
        let (lo, hi) = s.split_once("..").ok_or_else(bad)?;
        let min = if lo.trim().is_empty() { 1 } else { lo.trim().parse().map_err(|_| bad())? };
        let hi = hi.trim();
        let max = match hi.strip_prefix('=') {
            Some(h) => Some(h.trim().parse().map_err(|_| bad())?),
            None if hi.is_empty() => None,
            None => Some(hi.parse::<i64>().map_err(|_| bad())? - 1),
        };
        let range = DimRange { min, max };
        range.check().map_err(|e| format!("`{s}`: {e}"))?;
        Ok(range)
    }
}

impl DimRange {
    fn check(&self) -> Result<(), String> {
        if self.min < 1 {
            return Err(format!("min {} is below 1", self.min));
        }
        if let Some(max) = self.max {
            if max < self.min {
                return Err(format!("max {max} is below min {}", self.min));
            }
        }
        Ok(())
    }
}

/// Where the golden self-test vectors are and how close outputs must be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfTestRef {
    /// JSON file in the package holding a [`SelfTest`].
    pub file: String,
    /// Absolute tolerance.
    #[serde(default = "default_atol")]
    pub atol: f64,
    /// Relative tolerance.
    #[serde(default = "default_rtol")]
    pub rtol: f64,
}

fn default_atol() -> f64 {
    1e-4
}
fn default_rtol() -> f64 {
    1e-3
}

/// Golden self-test vectors: inputs and the outputs the model must produce for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfTest {
    /// Test cases.
    pub cases: Vec<GoldenCase>,
    /// Inputs whose values were generated rather than taken from real samples (`pack --inputs`):
    /// the test then proves the arithmetic, not that the model is useful on real data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub synthetic: Vec<String>,
    /// Backend whose outputs were recorded (`tract` or `onnxruntime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_with: Option<String>,
}

/// One golden input/output pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldenCase {
    /// Input tensors.
    pub inputs: Vec<NamedTensor>,
    /// Expected outputs; only the outputs listed are compared.
    pub outputs: Vec<NamedTensor>,
}

/// A small tensor written out in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedTensor {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Flat row-major values (numbers, or booleans for `BOOL`).
    pub data: Vec<serde_json::Value>,
}

/// Reference statistics of a model's tensors on representative data.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceStats {
    /// Statistics of the model inputs, by input name.
    #[serde(default)]
    pub inputs: BTreeMap<String, TensorStats>,
    /// Statistics of the model outputs, by output name.
    #[serde(default)]
    pub outputs: BTreeMap<String, TensorStats>,
}

/// Summary statistics of one tensor, per channel along `axis` (or over all values).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorStats {
    /// Axis the statistics are split along; over all elements when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub axis: Option<usize>,
    /// Number of samples summarised.
    pub count: u64,
    /// Mean per channel.
    pub mean: Vec<f64>,
    /// Standard deviation per channel.
    pub std: Vec<f64>,
    /// Minimum per channel.
    pub min: Vec<f64>,
    /// Maximum per channel.
    pub max: Vec<f64>,
    /// Quantiles 1%, 5%, 25%, 50%, 75%, 95%, 99% of the first channel, for drift tests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quantiles: Vec<f64>,
}

/// A manifest that parses but does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// TOML syntax or schema error.
    #[error("manifest.toml: {0}")]
    Parse(String),
    /// Written by a newer outpost.
    #[error("manifest.toml: format {found} is newer than the supported format {FORMAT_VERSION}")]
    Format {
        /// Format found in the file.
        found: u32,
    },
    /// A field has a value outside its domain.
    #[error("manifest.toml: {field}: {reason}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Manifest {
    /// Parses and validates a manifest.
    pub fn from_toml(text: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Serialises the manifest to TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("manifest types always serialise to TOML")
    }

    /// Checks cross-field rules that serde cannot express.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |field: &str, reason: String| ManifestError::Invalid { field: field.to_string(), reason };
        if self.format > FORMAT_VERSION {
            return Err(ManifestError::Format { found: self.format });
        }
        if !valid_name(&self.model.name, false) {
            return Err(invalid(
                "model.name",
                format!("`{}` must be 1-64 characters of a-z 0-9 . _ -", self.model.name),
            ));
        }
        if !valid_name(&self.model.version, true) {
            return Err(invalid(
                "model.version",
                format!("`{}` must be 1-64 characters of A-Z a-z 0-9 . _ -", self.model.version),
            ));
        }
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err(invalid("inputs", "a model needs at least one input and one output".into()));
        }
        if !self.files.contains_key(&self.model.file) {
            return Err(invalid("files", format!("no sha256 listed for the model file `{}`", self.model.file)));
        }
        for (file, hash) in &self.files {
            if file == MANIFEST_FILE || file.contains("..") || file.starts_with('/') {
                return Err(invalid("files", format!("`{file}` is not a valid package file name")));
            }
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(invalid(&format!("files.{file}"), "sha256 must be 64 lowercase hex digits".into()));
            }
        }
        if let Some(st) = &self.selftest {
            if !self.files.contains_key(&st.file) {
                return Err(invalid("selftest.file", format!("`{}` is not listed in [files]", st.file)));
            }
        }
        for (symbol, range) in &self.ranges {
            range.check().map_err(|e| invalid(&format!("ranges.{symbol}"), e))?;
            if self.symbols.contains_key(symbol) {
                return Err(invalid(
                    &format!("ranges.{symbol}"),
                    "the symbol is also pinned in [symbols]; keep one".into(),
                ));
            }
        }
        for (symbol, value) in &self.symbols {
            if *value < 1 {
                return Err(invalid(&format!("symbols.{symbol}"), format!("{value} is below 1")));
            }
        }
        let output_names: Vec<&str> = self.outputs.iter().map(|o| o.name.as_str()).collect();
        if let Some(out) = self.post.as_ref().and_then(PostProcess::output) {
            if !output_names.contains(&out) {
                return Err(invalid("post.output", format!("`{out}` is not one of the outputs {output_names:?}")));
            }
        }
        Ok(())
    }

    /// The declared input with this name.
    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|t| t.name == name)
    }
}

/// Whether `s` is a safe model name (or version, which also allows upper case): the grammar of
/// [`crate::names`].
pub fn valid_name(s: &str, allow_upper: bool) -> bool {
    if allow_upper {
        crate::names::Version::is_valid(s)
    } else {
        crate::names::ModelName::is_valid(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
format = 1
labels = ["normal", "fault"]

[model]
name = "vibration-anomaly"
version = "3"
task = "anomaly"

[[inputs]]
name = "window"
dtype = "FP32"
shape = ["batch", 3, 256]

[[outputs]]
name = "score"
dtype = "FP32"
shape = ["batch"]

[symbols]
batch = 1

[pre]
kind = "sensor"
channels = 3
window = 256
scaling = { kind = "standard", mean = [0, 0, 0], std = [1, 1, 1] }

[post]
kind = "anomaly"
threshold = 0.5

[files]
"model.onnx" = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
"#;

    #[test]
    fn sample_manifest_parses_and_round_trips() {
        let m = Manifest::from_toml(SAMPLE).unwrap();
        assert_eq!(m.inputs[0].shape[0], Dim::Symbol("batch".into()));
        assert_eq!(m.inputs[0].shape[1], Dim::Fixed(3));
        assert!(matches!(m.pre, Some(PreProcess::Sensor(ref s)) if s.window == 256));
        let again = Manifest::from_toml(&m.to_toml()).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn unknown_fields_and_bad_hashes_are_rejected_with_the_field_named() {
        let typo = SAMPLE.replace("task = \"anomaly\"", "task = \"anomaly\"\ntsak = 1");
        assert!(Manifest::from_toml(&typo).unwrap_err().to_string().contains("tsak"));
        let bad = SAMPLE.replace("e3b0c442", "E3B0C442");
        assert!(Manifest::from_toml(&bad).unwrap_err().to_string().contains("files.model.onnx"));
        let newer = SAMPLE.replace("format = 1", "format = 9");
        assert!(matches!(Manifest::from_toml(&newer), Err(ManifestError::Format { found: 9 })));
    }

    #[test]
    fn path_traversal_in_file_names_is_rejected() {
        let evil = SAMPLE.replace("\"model.onnx\" = \"e3", "\"../etc/passwd\" = \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"\n\"model.onnx\" = \"e3");
        assert!(Manifest::from_toml(&evil).unwrap_err().to_string().contains("../etc/passwd"));
    }
}
