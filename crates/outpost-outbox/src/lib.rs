//! The device's crash-safe outbox: results and events wait here, on disk, until every
//! forwarder (HTTP to the server, MQTT, ...) has acknowledged them.
//!
//! This crate owns the files and their guarantees and nothing else: it knows neither inference
//! nor HTTP. The agent appends records (opaque bytes) with a [`Priority`]; each forwarder is a
//! named consumer that polls records, sends them its own way, and acks them. [`Outbox`] is the
//! synchronous core; [`AsyncOutbox`] runs it on a dedicated writer thread for tokio code, so no
//! runtime thread ever blocks on a write or an fsync, and turns concurrent appends into group
//! commits.
//!
//! # On disk
//!
//! ```text
//! <dir>/LOCK                         held (flock) while open: one process at a time
//! <dir>/{low,normal,high}/<base>.seg one append-only segment log per priority
//! <dir>/consumers/<name>.pos         each consumer's committed positions
//! <dir>/dropped.cnt                  what the size cap dropped, per priority
//! ```
//!
//! A **segment** is named after the sequence number of its first record (20 digits, so names
//! sort) and starts with a 20-byte header: magic `OPOX`, format version `1`, the priority byte,
//! a flags byte (bit 0: the ids just before this segment were skipped on purpose, see below),
//! a reserved zero byte, the base sequence number (u64 LE) and a CRC-32 of the preceding 16
//! bytes. A file with another magic is refused with [`OutboxError::ForeignFile`], a newer
//! version with [`OutboxError::UnsupportedVersion`]; nothing in such a directory is touched.
//! Segments are created whole (header written to a temp name, fsynced, renamed, directory
//! fsynced), so a segment with a bad header is damage, never a crash trace.
//!
//! A **record** follows as a frame: payload length (u32 LE), CRC-32 (u32 LE), payload. The
//! CRC covers the record's sequence number, its length and its payload; the sequence number is
//! not stored but implied by position (base + index), so a frame is valid only where it was
//! written and zeroed or stale blocks never pass for records. Overhead: 8 bytes per record.
//!
//! A segment is sealed (fsynced) and a new one started when the next frame would take it past
//! [`OutboxConfig::segment_bytes`]; a record larger than that gets a segment of its own. On a
//! disk too small for that size a new segment is sealed at an eighth of what the log could hold
//! there (free space plus its own bytes; at least 64 KiB): only sealed segments are deleted
//! once consumed, so an outbox that filled its disk still frees most of it by acking.
//!
//! # Ids and order
//!
//! Every record gets a [`RecordId`]: its priority and a sequence number that grows by one per
//! record of that priority. Records of one priority are stored and delivered in append order;
//! priorities are independent logs. Ids are never reused for a record a consumer could have
//! seen, even after all segments were deleted (the newest segment is always kept: its header
//! carries the next number), so receivers can deduplicate by keeping the highest id per
//! priority. (Under `Never` a power cut can lose records a consumer read but did not ack, and
//! their ids are then given again; ids a consumer acked are skipped on open.)
//!
//! # Fsync policy ([`FsyncPolicy`])
//!
//! - `Always`: an append returns after its record is fsynced.
//! - `GroupCommit { interval_ms }` (default, 0 ms): an append returns after the next group
//!   fsync, which covers every append since the previous one; group fsyncs start at most every
//!   `interval_ms` (0: as soon as the previous one ends). Sharing happens through [`AsyncOutbox`] (concurrent appends) or
//!   [`Outbox::append_batch`]; a lone [`Outbox::append`] is a group of one.
//! - `Never`: records are handed to the OS and never fsynced. `Ok` means *written*: a crash of
//!   the process keeps them, a power cut may not.
//!
//! Under `Always` and `GroupCommit` an append that returned `Ok` survives kill -9 and power
//! loss. Consumers only ever see confirmed records (durable ones; written ones under `Never`),
//! so nothing can be forwarded and then vanish in a crash.
//!
//! # Consumers
//!
//! A consumer ([`ConsumerName`], added with [`Outbox::add_consumer`]) starts at the oldest
//! record kept. [`Outbox::poll`] returns the records after those it has read (`High` first,
//! then `Normal`, then `Low`); [`Outbox::ack`] commits its position past a record id, and that
//! position is written crash-safely (temp file, fsync, rename, fsync directory). After a restart
//! (or [`Outbox::rewind`]) a consumer resumes at its committed position, so records read but not
//! acked are delivered again: at-least-once. A segment is deleted once every consumer has
//! acked past all of its records; with no consumer, records stay until the cap drops them.
//! An ack costs two fsyncs (file and directory), so forwarders ack batches.
//!
//! # Size cap and drop policy
//!
//! When an append would take the segments past [`OutboxConfig::max_total_bytes`], whole oldest
//! segments of the lowest priority that holds records are deleted until it fits: `Low` before
//! `Normal` before `High`, oldest first. If everything kept outranks the new record, the new
//! record is the lowest-priority data and is the one dropped, on arrival: its append still
//! returns `Ok` with an id that no later record gets (consumers see a jump in ids, as for any
//! dropped record; only a crash before the next write or close can let that id be given again,
//! which is harmless since no consumer saw it), and no higher-priority record is evicted for it. Appends never fail
//! because of the cap, unless one record alone cannot fit ([`OutboxError::RecordTooLarge`]).
//! Dropped records (those some consumer had not acked) and bytes are counted per priority
//! ([`DropCounters`], from [`Outbox::dropped`]), logged as they happen, and kept in
//! `dropped.cnt` (saved at most once a second and on close, so a crash can lose the last
//! second of counts, never the log lines). A full disk (ENOSPC) is reported as
//! [`OutboxError::DiskFull`]: the failed write is cut back off the file and every record
//! acknowledged before stays. Any other failed fsync stops that priority's log
//! ([`OutboxError::Poisoned`]) until reopened, since the kernel may already have dropped the
//! unwritten pages.
//!
//! # Recovery
//!
//! Opening scans every segment and checks every frame. In the newest segment of a priority, a
//! short or failing frame is the torn tail of a crash: the file is cut back to the last whole
//! record ([`RecoveryEvent::TruncatedTail`], with bytes). In an older segment it is damage: the
//! records before it are kept, the rest of that segment is cut and the records lost are counted
//! from the next segment's base ([`RecoveryEvent::CorruptRecord`]); later segments are kept.
//! Ids missing between two segments that were not skipped on purpose are reported as
//! [`RecoveryEvent::MissingRecords`]. Under `Always`/`GroupCommit` every segment kept is
//! fsynced before its records become visible (a killed process may have written records it
//! never fsynced). Everything is returned in a [`RecoveryReport`] ([`Outbox::recovery`]) and
//! logged via `tracing`.

mod cap;
mod config;
mod consumer;
mod error;
mod frame;
mod fsutil;
mod log;
mod outbox;
mod record;
mod recovery;
mod segment;
mod writer;

#[cfg(test)]
mod crash_model;

pub use cap::{DropCounters, Dropped};
pub use config::{FsyncPolicy, OutboxConfig};
pub use consumer::ConsumerName;
pub use error::{OutboxError, Result};
pub use fsutil::disk_space;
pub use outbox::{Outbox, OutboxStats, PriorityStats};
pub use record::{Priority, Record, RecordId};
pub use recovery::{RecoveryEvent, RecoveryReport};
pub use writer::AsyncOutbox;
