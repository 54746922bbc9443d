//! Errors of training and export.

/// Why a model could not be trained, exported or checked.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value is outside its domain.
    #[error("training config: {field}: {reason}")]
    Config {
        /// Name of the field.
        field: &'static str,
        /// What is wrong with it and what is expected.
        reason: String,
    },
    /// The training data cannot support the model (constant features, failed decomposition).
    #[error("fitting {model}: {reason}")]
    Fit {
        /// Model being fitted.
        model: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The ONNX graph under construction is inconsistent (a bug in the exporter).
    #[error("building ONNX graph `{graph}`: {reason}")]
    Graph {
        /// Graph name.
        graph: String,
        /// What is inconsistent.
        reason: String,
    },
    /// tract refused or failed to run the exported model.
    #[error("checking the exported model with tract: {stage}: {reason}")]
    Tract {
        /// Which step failed (parse, optimise, run).
        stage: &'static str,
        /// tract's explanation.
        reason: String,
    },
    /// The exported graph does not compute what was fitted.
    #[error(
        "exported model disagrees with the fitted model on window {window}: graph {graph}, fitted {fitted}; \
         the exporter is broken, do not ship this model"
    )]
    Mismatch {
        /// Index of the first disagreeing window.
        window: usize,
        /// Score from the exported graph.
        graph: f64,
        /// Score from the fitted model.
        fitted: f64,
    },
    /// A value could not be written as JSON (not finite).
    #[error("self-test case {case}: output `{tensor}` holds {value}, which JSON cannot carry")]
    NotFinite {
        /// Index of the self-test case.
        case: usize,
        /// Tensor name.
        tensor: String,
        /// The offending value.
        value: f32,
    },
}
