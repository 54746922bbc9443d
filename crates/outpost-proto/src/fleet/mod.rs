//! Fleet management wire types: the device channel (enrollment, reports, desired state,
//! commands), request signing, label selectors and the operator REST API messages.

pub mod api;
pub mod device;
pub mod drift;
pub mod quality;
pub mod results;
pub mod rollout;
pub mod selector;
pub mod signing;

pub use selector::{Labels, Selector};
