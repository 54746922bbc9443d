//! outpost-server: the control plane.
//!
//! Operators use the REST API under `/v1` with bearer tokens; devices use the signed device
//! channel (`/v1/enroll`, `/v1/device/...`). [`Server`] ties the pieces together: storage
//! ([`db`]), authentication ([`auth`]), desired-state computation ([`desired`]) and long-poll
//! wake-ups ([`hub`]), the group-commit report writer ([`reports`]) with its per-device rate
//! limit ([`ratelimit`]), replay protection shared through the database ([`replay`]), the
//! artifact store for model packages ([`artifacts`]) and the routes ([`routes`]).

pub mod artifacts;
pub mod auth;
pub mod budget;
pub mod config;
pub mod db;
pub mod desired;
pub mod drift;
pub mod error;
pub mod extract;
pub mod hub;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod replay;
pub mod reports;
pub mod rollout;
pub mod routes;
pub mod serve;
mod server;
pub mod state;
pub mod tuf;

pub use config::ServerConfig;
pub use error::ApiError;
pub use server::{redact_url, Server, ServerError, ShutdownHandle};
