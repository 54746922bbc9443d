//! Shared test support: databases (tests/common/db.rs), a running server and signed requests.
#![allow(dead_code)]

pub mod db;
pub mod package;
pub mod server;
pub mod signed;
