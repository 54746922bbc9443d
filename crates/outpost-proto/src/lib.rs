//! Wire types shared by the outpost agent and server: tensor data types, the Open Inference
//! Protocol v2 messages, the model package manifest, typed predictions, and the fleet-management
//! messages (device channel, request signing, label selectors, operator API), and the text formats
//! of `/metrics`.
//!
//! This crate does no I/O: everything here is plain data with serde, so the agent, the server,
//! the simulator and the tests agree on one definition of every message.

pub mod dtype;
pub mod exposition;
pub mod fleet;
pub mod manifest;
pub mod names;
pub mod oip;
pub mod prediction;

pub use dtype::DType;
pub use manifest::Manifest;
pub use names::{ModelName, Version};

/// Version of the agent/server protocol spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;
/// Header carrying [`PROTOCOL_VERSION`] on every device request and every server answer.
pub const HEADER_PROTOCOL: &str = "x-outpost-protocol";
