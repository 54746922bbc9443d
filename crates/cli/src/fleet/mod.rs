//! Operator commands that talk to the control-plane server's REST API.

pub mod alert;
pub mod client;
pub mod device;
pub mod models;
pub mod rollout;
pub mod token;
