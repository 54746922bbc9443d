//! outpost-runtime: everything needed to run a model on a device, and nothing about HTTP or the
//! server.
//!
//! - [`package`] reads a model package (`.opkg` tar or directory), checks the sha256 of every
//!   file before anything is parsed, and writes packages.
//! - [`backend`] runs ONNX graphs: tract (pure Rust, default) and ONNX Runtime (loaded from its
//!   shared library at run time) behind one [`backend::Engine`] trait.
//! - [`pool`] gives each model a fixed set of sessions fed by a bounded queue, so a burst of
//!   requests is refused quickly (the caller answers 429) instead of piling up.
//! - [`pipeline`] turns raw images, WAV audio and sensor windows into tensors and outputs into
//!   typed predictions, as declared in the manifest.
//! - [`indices`] finds which integer inputs index a table and how far, for generated inputs and
//!   for refusing out-of-range ids with a client error.
//! - [`model`] ties these together into a loaded, self-tested model within a memory budget.

pub mod backend;
pub mod bench;
pub mod drift;
pub mod error;
pub mod indices;
pub mod inspect;
pub mod model;
pub mod package;
pub mod pipeline;
pub mod pool;
pub mod record;
pub mod reference;
pub mod rewrite;
pub mod selftest;
pub mod shapes;
pub mod tensor;

#[cfg(test)]
mod loading_tests;
#[cfg(test)]
mod test_graphs;

pub use error::RuntimeError;
pub use model::{side_by_side, LoadOptions, LoadedModel};
pub use package::Package;
pub use tract_onnx::prelude::Tensor;
