//! The outbox's integration tests that spawn processes, in a test binary of their own:
//!
//! - `kill9`: SIGKILL of a child process (this binary run again) never loses an acknowledged
//!   append;
//! - `full_disk`: a real full disk, a small tmpfs mounted with `mount` and `umount`.
//!
//! Why not in `tests/outbox.rs`: a spawn forks this process, and until the child's exec the
//! child holds a copy of every open file, the `LOCK` of any outbox another test has open
//! included. The outbox lock is a `flock` on that file, so a test that drops an outbox and
//! opens it again in that window gets `Locked`. `cap_property` reopens often and failed that
//! way about one run in ten while these tests shared its binary. The tests here reopen rarely.
//!
//! The parts live in `tests/processes/`, hence the `#[path]`s.

#[allow(dead_code)] // These tests use only some of the helpers.
mod common;

#[path = "processes/full_disk.rs"]
mod full_disk;
#[path = "processes/kill9.rs"]
mod kill9;
