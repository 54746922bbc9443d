//! The outbox's integration tests that start no process, in one test binary (one link
//! instead of one per file):
//!
//! - `consumers`: named consumers, priority order, committed positions, at-least-once,
//!   segment deletion;
//! - `recovery`: opening after crashes and damage (torn tails, damaged records, foreign files);
//! - `cap`: the size cap and its drop policy;
//! - `cap_property`: a property test of the drop policy under appends, acks and restarts;
//! - `async_outbox`: the async handle, group commit under concurrency, close.
//!
//! The parts live in `tests/outbox/`; a crate root's `mod` looks beside itself (in `tests/`),
//! hence the `#[path]`s. `common` (`tests/common/mod.rs`) holds the helpers. Run one part with
//! a filter, e.g. `cargo test -p outpost-outbox --test outbox recovery::`.
//!
//! Tests that spawn processes belong in `tests/processes.rs`, not here: see there why.

mod common;

#[path = "outbox/async_outbox.rs"]
mod async_outbox;
#[path = "outbox/cap.rs"]
mod cap;
#[path = "outbox/cap_property.rs"]
mod cap_property;
#[path = "outbox/consumers.rs"]
mod consumers;
#[path = "outbox/recovery.rs"]
mod recovery;
