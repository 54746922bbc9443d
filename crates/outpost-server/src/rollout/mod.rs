//! The rollout engine: a model version moving over label-selected devices in waves, each wave
//! gated on how the version behaves on live data, with automatic pause or rollback.
//!
//! [`engine`] is the pure state machine over [`records`], [`gates`] the arithmetic on what
//! devices report, [`sums`] the gates' running sums, [`waves`] sizing and ordering; [`driver`]
//! is the background task that holds rollouts by lease, feeds the engine from the database
//! each tick (through `cache`, which reads only what changed) and stores its steps.

pub mod actions;
mod cache;
pub mod driver;
pub mod engine;
pub mod gates;
pub mod records;
pub mod sums;
pub mod view;
pub mod waves;

#[cfg(test)]
mod engine_tests;
