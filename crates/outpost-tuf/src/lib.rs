//! The Update Framework for outpost.
//!
//! Devices trust a model package only when signed metadata says so: [`client`] runs the TUF
//! specification's client workflow through sigstore-tuf (chosen because it follows that
//! workflow closely: update order, rollback and freeze checks, fast-forward recovery, the
//! delegation search with terminating roles and path patterns, consistent-snapshot URLs, and
//! keeping the exact bytes it verified), with pure-Rust ed25519 and SHA-2 ([`crypto`]), trusted
//! metadata under the specification's file names ([`store`]) and bounded HTTP reads
//! ([`remote`]). [`writer`] signs repositories the client (and python-tuf) read.

pub mod client;
pub mod crypto;
pub mod delegation;
pub mod operator;
pub mod remote;
pub mod store;
pub mod verify;
pub mod writer;

pub use client::{TufClient, TufError};
pub use remote::{DirRemote, HttpRemote};
pub use store::DirStore;
