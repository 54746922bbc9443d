//! Everything that can go wrong, with the file and offset it went wrong at.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::record::{Priority, RecordId};

/// Why an outbox operation failed.
///
/// `Clone` because one failed group fsync fails every append waiting on it: the I/O error is
/// shared behind an `Arc`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboxError {
    /// The file system refused an operation on a file of the outbox.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("write", "fsync", "rename", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The disk is full (ENOSPC). Records acknowledged before are kept; this append was not.
    #[error(
        "disk full during {op} of {}: the record was not stored, earlier acknowledged records are kept; \
         free space or lower the outbox cap",
        path.display()
    )]
    DiskFull {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A file where a segment belongs was not written by an outbox: nothing is opened or deleted.
    #[error(
        "{} is not an outbox segment (it starts with {found:02x?}, not \"OPOX\"); \
         is the outbox directory pointing at another program's files?",
        path.display()
    )]
    ForeignFile {
        /// The file.
        path: PathBuf,
        /// Its first bytes.
        found: [u8; 4],
    },
    /// A segment written by a newer outbox format than this build reads.
    #[error("{} has outbox format version {found}, this build reads version {supported}", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version byte in the file.
        found: u8,
        /// Version this build reads.
        supported: u8,
    },
    /// A segment header (always written whole and renamed into place) does not check: the disk
    /// damaged it. The outbox refuses to guess; move the file away to open the outbox without it.
    #[error("{} has a damaged segment header; move it out of the outbox directory to continue without it", path.display())]
    CorruptHeader {
        /// The file.
        path: PathBuf,
    },
    /// A record that checked at open no longer checks when read back.
    #[error("record {seq} at offset {offset} of {} no longer matches its checksum", path.display())]
    CorruptRecord {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the record's frame.
        offset: u64,
        /// The record's sequence number.
        seq: u64,
    },
    /// One record would not fit in the outbox even if every other record were dropped.
    #[error("a record of {len} bytes cannot fit an outbox capped at {cap} bytes")]
    RecordTooLarge {
        /// Payload length.
        len: u64,
        /// The configured cap (`OutboxConfig::max_total_bytes`).
        cap: u64,
    },
    /// A consumer name that is not 1–64 characters of `[A-Za-z0-9_-]`.
    #[error("invalid consumer name {0:?}: use 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'")]
    InvalidConsumerName(String),
    /// A consumer that was never added (or was removed).
    #[error("unknown consumer {0:?}; add it with add_consumer first")]
    UnknownConsumer(String),
    /// An ack for a record that was never appended (or not yet acknowledged to its writer).
    #[error("consumer {consumer:?} acked {id}, but the {} log ends before sequence {end}", id.priority)]
    AckBeyondEnd {
        /// The consumer.
        consumer: String,
        /// The id it acked.
        id: RecordId,
        /// First sequence number not yet stored.
        end: u64,
    },
    /// Another process (or another `Outbox` in this one) has the directory open.
    #[error("outbox directory {} is in use by another process (lock file held)", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// An fsync failed; the kernel may have dropped the dirty pages, so nothing more is trusted
    /// to this log until the outbox is reopened (which recovers from what is really on disk).
    #[error("the {priority} log stopped after a failed fsync of {}: {reason}; reopen the outbox", path.display())]
    Poisoned {
        /// The log that stopped.
        priority: Priority,
        /// The file whose fsync failed.
        path: PathBuf,
        /// The original error.
        reason: String,
    },
    /// The configuration cannot work.
    #[error("invalid outbox configuration: {0}")]
    Config(String),
    /// The async handle's writer thread has stopped (closed, or it panicked).
    #[error("the outbox writer thread has stopped")]
    Closed,
}

/// Result of outbox operations.
pub type Result<T, E = OutboxError> = std::result::Result<T, E>;

impl OutboxError {
    /// Wraps an I/O error, telling a full disk apart so callers can react to it by type.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> OutboxError {
        let path = path.into();
        if is_disk_full(&source) {
            OutboxError::DiskFull { op, path, source: Arc::new(source) }
        } else {
            OutboxError::Io { op, path, source: Arc::new(source) }
        }
    }

    /// Whether this is [`OutboxError::DiskFull`].
    pub fn is_disk_full(&self) -> bool {
        matches!(self, OutboxError::DiskFull { .. })
    }
}

/// ENOSPC, and EDQUOT which a quota raises for the same reason.
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// Shorthand for mapping `io::Result` into [`OutboxError`] with its file.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| OutboxError::io(op, path, e))
    }
}
