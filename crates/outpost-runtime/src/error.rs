//! Errors of the runtime: each names the file, model, operator or tensor involved.

use outpost_proto::fleet::device::FailureKind;
use std::path::PathBuf;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The package is malformed: missing file, bad manifest, broken tar.
    #[error("{path}: {reason}")]
    Package {
        /// Package path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The manifest is missing, not TOML, or fails validation.
    #[error("{path}: {reason}")]
    Manifest {
        /// Package path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file's sha256 differs from the manifest: corrupted or tampered with.
    #[error(
        "{path}: sha256 of `{file}` is {actual}, manifest says {expected}: the file is corrupt or was tampered with"
    )]
    HashMismatch {
        /// Package path.
        path: PathBuf,
        /// File inside the package.
        file: String,
        /// Hash from the manifest.
        expected: String,
        /// Hash of the bytes on disk.
        actual: String,
    },
    /// The ONNX file cannot be parsed or analysed, or uses an unsupported operator.
    #[error("model `{model}`: {reason}")]
    Model {
        /// Model file or name.
        model: String,
        /// Cause, naming the operator or node when known.
        reason: String,
    },
    /// The graph uses operators the backend does not implement.
    #[error("model `{model}`: {reason}")]
    Unsupported {
        /// Model file or name.
        model: String,
        /// The operators, once per type with a count, and what to do.
        reason: String,
    },
    /// No backend could serve the model; each one's reason is in `reason`.
    #[error("model `{model}`: no backend can serve it ({reason})")]
    NoBackend {
        /// Model name.
        model: String,
        /// Each backend's refusal, `backend: error`, joined by `; `.
        reason: String,
        /// The most telling kind among the refusals.
        kind: FailureKind,
    },
    /// Loading would exceed the memory budget.
    #[error("model `{model}` needs an estimated {needed_mb:.1} MB but only {available_mb:.1} MB of the {budget_mb:.1} MB budget is free")]
    MemoryBudget {
        /// Model name.
        model: String,
        /// Estimated bytes needed, in MB.
        needed_mb: f64,
        /// Bytes still free in the budget, in MB.
        available_mb: f64,
        /// Whole budget, in MB.
        budget_mb: f64,
    },
    /// A request tensor does not fit the model's declared input.
    #[error("input `{tensor}`: {reason}")]
    BadInput {
        /// Tensor name.
        tensor: String,
        /// What does not fit.
        reason: String,
    },
    /// The requested backend is not available on this device.
    #[error("backend {backend} unavailable: {reason}")]
    BackendUnavailable {
        /// Backend name.
        backend: String,
        /// Why.
        reason: String,
    },
    /// Inference failed at run time.
    #[error("model `{model}`: inference failed: {reason}")]
    Inference {
        /// Model name.
        model: String,
        /// Cause.
        reason: String,
    },
    /// The session queue is full; retry later.
    #[error("model `{model}`: queue full ({capacity} requests waiting)")]
    QueueFull {
        /// Model name.
        model: String,
        /// Queue capacity.
        capacity: usize,
    },
    /// The model's sessions have shut down (the model was unloaded).
    #[error("model `{model}` is shutting down")]
    ShuttingDown {
        /// Model name.
        model: String,
    },
    /// Golden self-test vectors do not reproduce.
    #[error("model `{model}`: self-test failed: {reason}")]
    SelfTest {
        /// Model name.
        model: String,
        /// Which case and output differ, and by how much.
        reason: String,
    },
    /// Pre- or post-processing failed.
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
}

impl RuntimeError {
    /// Whether the error is the caller's fault (bad request data) rather than the model's.
    pub fn is_client_error(&self) -> bool {
        match self {
            RuntimeError::BadInput { .. } => true,
            RuntimeError::Pipeline(e) => e.is_client_error(),
            _ => false,
        }
    }

    /// What kind of load failure this is, for code that branches on it.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            RuntimeError::Io { .. } => FailureKind::Io,
            RuntimeError::Package { .. } => FailureKind::BadPackage,
            RuntimeError::Manifest { .. } => FailureKind::BadManifest,
            RuntimeError::HashMismatch { .. } => FailureKind::HashMismatch,
            RuntimeError::Unsupported { .. } => FailureKind::UnsupportedModel,
            RuntimeError::NoBackend { kind, .. } => *kind,
            RuntimeError::Model { .. } | RuntimeError::Inference { .. } => FailureKind::InvalidModel,
            RuntimeError::MemoryBudget { .. } => FailureKind::MemoryBudget,
            RuntimeError::BackendUnavailable { .. } => FailureKind::BackendUnavailable,
            RuntimeError::SelfTest { .. } => FailureKind::SelfTest,
            RuntimeError::BadInput { .. }
            | RuntimeError::QueueFull { .. }
            | RuntimeError::ShuttingDown { .. }
            | RuntimeError::Pipeline(_) => FailureKind::Other,
        }
    }

    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> RuntimeError {
        RuntimeError::Io { path: path.into(), source }
    }
}

/// The message a caught panic carried, for turning it into an error.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
