//! Inference backends behind one trait.
//!
//! tract is the default: pure Rust, no native dependency, small. ONNX Runtime wins on some
//! convolution-heavy graphs and loads a few graphs tract cannot (e.g. `If` on a symbolic batch),
//! so it is available as a second backend, loaded from the shared library that the
//! `onnxruntime` Python wheel ships, at run time. Nothing is downloaded at build time.

use crate::{RuntimeError, Tensor};
use outpost_proto::DType;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub mod ml;
#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
#[cfg(feature = "onnxruntime")]
mod ort_convert;
pub mod tract;
mod tract_plans;

/// Which engine runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendKind {
    /// tract, pure Rust.
    Tract,
    /// ONNX Runtime through the `ort` crate.
    Onnxruntime,
}

impl BackendKind {
    /// Short name used in flags, metrics and metadata.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::Onnxruntime => "onnxruntime",
        }
    }

    /// OIP `platform` string.
    pub fn platform(self) -> &'static str {
        match self {
            BackendKind::Tract => "onnx_tract",
            BackendKind::Onnxruntime => "onnxruntime_onnx",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tract" => Ok(BackendKind::Tract),
            "onnxruntime" | "ort" => Ok(BackendKind::Onnxruntime),
            other => Err(format!("unknown backend `{other}` (expected tract or onnxruntime)")),
        }
    }
}

/// Name, type and shape of a graph input or output as the engine sees it after symbol pinning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoSpec {
    /// Tensor name in the graph.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions; `None` where the size varies per request.
    pub shape: Vec<Option<usize>>,
}

impl IoSpec {
    /// Shape in OIP form, `-1` for variable dimensions.
    pub fn oip_shape(&self) -> Vec<i64> {
        self.shape.iter().map(|d| d.map_or(-1, |d| d as i64)).collect()
    }

    /// Whether a concrete shape fits this spec.
    pub fn accepts(&self, shape: &[usize]) -> bool {
        shape.len() == self.shape.len() && self.shape.iter().zip(shape).all(|(s, d)| s.is_none_or(|s| s == *d))
    }
}

/// Specialised plans a dynamic tract model keeps by default: a few shapes cover the usual
/// client (one resolution, one chunk length) without multiplying packed weights much.
pub const DEFAULT_SHAPE_PLANS: usize = 4;

/// Options for building an engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Model name, used in error messages.
    pub model_name: String,
    /// Values for symbolic dimensions (`batch = 1`).
    pub symbols: BTreeMap<String, i64>,
    /// Threads used inside one inference (intra-op); 1 keeps latency predictable on small devices.
    pub threads: usize,
    /// Path of `libonnxruntime.so`; searched in the usual places when absent.
    pub ort_library: Option<PathBuf>,
    /// Input shapes to pin, by name, `None` where a dimension stays dynamic: reaches
    /// dimensions an exporter left unnamed (`?`), which symbols cannot.
    pub input_shapes: BTreeMap<String, Vec<Option<usize>>>,
    /// Largest sizes of dynamic symbols, for the memory estimate (free symbols count as 1).
    pub symbol_bounds: BTreeMap<String, i64>,
    /// tract: how many plans specialised to one request shape a dynamic model keeps (0: none).
    pub shape_plans: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            model_name: "model".into(),
            symbols: BTreeMap::new(),
            threads: 1,
            ort_library: None,
            input_shapes: BTreeMap::new(),
            symbol_bounds: BTreeMap::new(),
            shape_plans: DEFAULT_SHAPE_PLANS,
        }
    }
}

/// Estimated memory a model needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryEstimate {
    /// Weights, shared by all sessions.
    pub weights_bytes: u64,
    /// Peak intermediate tensors of one session running one request.
    pub activations_bytes: u64,
}

impl MemoryEstimate {
    /// Total for a given number of sessions.
    pub fn total(&self, sessions: usize) -> u64 {
        self.weights_bytes + self.activations_bytes * sessions as u64
    }
}

/// A model compiled for one backend; hands out sessions that run it.
pub trait Engine: Send + Sync + fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Graph inputs, in order.
    fn inputs(&self) -> &[IoSpec];
    /// Graph outputs, in order.
    fn outputs(&self) -> &[IoSpec];
    /// A new session: per-thread scratch state for running the model.
    fn session(&self) -> Result<Box<dyn Session>, RuntimeError>;
    /// Waits, at most `timeout`, for background work such as compiling a plan for a request
    /// shape; true when none is left. Benchmarks call it so they time the steady state.
    fn settle(&self, _timeout: std::time::Duration) -> bool {
        true
    }
    /// Gives up plans specialised to request shapes, and the memory counted for them, when the
    /// budget cannot hold them; true when there were any. Sessions made afterwards run every
    /// shape on the dynamic plan.
    fn drop_shape_plans(&self) -> bool {
        false
    }
    /// Request shapes (inputs in graph order) that have a plan specialised to them.
    fn specialised_shapes(&self) -> Vec<Vec<Vec<usize>>> {
        Vec::new()
    }
    /// Memory the model needs.
    fn memory(&self) -> MemoryEstimate;
}

/// Runs one inference at a time; sessions are not shared between threads.
pub trait Session: Send {
    /// Runs the model on inputs given in graph order and returns outputs in graph order.
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError>;
}

/// Compiles `onnx` on the requested backend.
pub fn load_engine(kind: BackendKind, onnx: &[u8], opts: &EngineOptions) -> Result<Arc<dyn Engine>, RuntimeError> {
    // Parsers index into untrusted graphs; a panic there must become an error naming the model,
    // not take the agent down.
    let load = || -> Result<Arc<dyn Engine>, RuntimeError> {
        let onnx = crate::rewrite::prepare(&opts.model_name, onnx)?;
        let onnx = onnx.as_ref();
        match kind {
            BackendKind::Tract => Ok(Arc::new(tract::TractEngine::load(onnx, opts)?)),
            #[cfg(feature = "onnxruntime")]
            BackendKind::Onnxruntime => Ok(Arc::new(onnxruntime::OrtEngine::load(onnx, opts)?)),
            #[cfg(not(feature = "onnxruntime"))]
            BackendKind::Onnxruntime => Err(RuntimeError::BackendUnavailable {
                backend: "onnxruntime".into(),
                reason: "this build was compiled without the `onnxruntime` feature".into(),
            }),
        }
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)).unwrap_or_else(|panic| {
        let what = crate::error::panic_message(panic.as_ref());
        Err(RuntimeError::Model {
            model: opts.model_name.clone(),
            reason: format!("{kind} failed on this graph: {what}"),
        })
    })
}

/// Checks request inputs against the engine's specs: count, dtype and shape, naming the tensor.
pub fn check_inputs(specs: &[IoSpec], inputs: &[Tensor]) -> Result<(), RuntimeError> {
    if specs.len() != inputs.len() {
        return Err(RuntimeError::BadInput {
            tensor: specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(","),
            reason: format!("model takes {} inputs, got {}", specs.len(), inputs.len()),
        });
    }
    for (spec, t) in specs.iter().zip(inputs) {
        let dtype = crate::tensor::dtype_of(t.datum_type());
        if dtype != Some(spec.dtype) {
            return Err(RuntimeError::BadInput {
                tensor: spec.name.clone(),
                reason: format!("expected datatype {}, got {:?}", spec.dtype, t.datum_type()),
            });
        }
        if !spec.accepts(t.shape()) {
            return Err(RuntimeError::BadInput {
                tensor: spec.name.clone(),
                reason: format!("expected shape {:?}, got {:?}", spec.oip_shape(), t.shape()),
            });
        }
    }
    Ok(())
}
