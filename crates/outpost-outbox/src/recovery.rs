//! What opening an outbox found and repaired, for the caller to log or count.

use std::fmt;
use std::path::PathBuf;

use crate::record::Priority;

/// One thing recovery found wrong and what it did about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryEvent {
    /// The newest segment of a priority ended in a torn or unchecked write (the normal trace of
    /// a crash before an fsync); the file was cut back to its last whole record.
    TruncatedTail {
        /// The priority log.
        priority: Priority,
        /// The segment file.
        segment: PathBuf,
        /// Where the first bad frame began (the file's new length).
        offset: u64,
        /// Bytes cut off.
        bytes: u64,
    },
    /// A record in an older, sealed segment did not check: the disk damaged it. Records before
    /// it are kept; it and the rest of that segment are lost, and counted.
    CorruptRecord {
        /// The priority log.
        priority: Priority,
        /// The segment file.
        segment: PathBuf,
        /// Where the damaged frame began (the file's new length).
        offset: u64,
        /// Bytes cut off.
        bytes: u64,
        /// Records lost: from the damaged one to the start of the next segment.
        records: u64,
    },
    /// Sequence numbers `from..to` of a priority are in no segment (records written under
    /// `FsyncPolicy::Never` and lost in a crash, though a consumer had already acked them).
    MissingRecords {
        /// The priority log.
        priority: Priority,
        /// First missing sequence number.
        from: u64,
        /// One past the last missing one.
        to: u64,
    },
    /// A consumer's position file did not check; the consumer starts again from the oldest
    /// record kept (more redelivery, never a loss).
    ConsumerReset {
        /// The consumer.
        consumer: String,
        /// Its position file.
        path: PathBuf,
    },
    /// A temp file of an interrupted segment creation or position write was removed.
    RemovedTempFile {
        /// The file.
        path: PathBuf,
    },
}

/// Everything [`crate::Outbox::open`] repaired; empty after a clean shutdown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// What was found, in the order found.
    pub events: Vec<RecoveryEvent>,
}

impl RecoveryReport {
    /// Whether nothing needed repair (temp files left by a crash do not count).
    pub fn is_clean(&self) -> bool {
        self.events.iter().all(|e| matches!(e, RecoveryEvent::RemovedTempFile { .. }))
    }

    /// Bytes cut from segment files, torn tails and damaged records together.
    pub fn truncated_bytes(&self) -> u64 {
        self.events
            .iter()
            .map(|e| match e {
                RecoveryEvent::TruncatedTail { bytes, .. } | RecoveryEvent::CorruptRecord { bytes, .. } => *bytes,
                _ => 0,
            })
            .sum()
    }

    /// Records known lost: in damaged segments and in gaps between segments. (A torn tail's
    /// records were never acknowledged under `Always`/`GroupCommit` and are not counted.)
    pub fn lost_records(&self) -> u64 {
        self.events
            .iter()
            .map(|e| match e {
                RecoveryEvent::CorruptRecord { records, .. } => *records,
                RecoveryEvent::MissingRecords { from, to, .. } => to - from,
                _ => 0,
            })
            .sum()
    }

    pub(crate) fn push(&mut self, event: RecoveryEvent) {
        match &event {
            RecoveryEvent::RemovedTempFile { .. } => tracing::debug!("outbox recovery: {event}"),
            RecoveryEvent::TruncatedTail { .. } => tracing::info!("outbox recovery: {event}"),
            _ => tracing::warn!("outbox recovery: {event}"),
        }
        self.events.push(event);
    }
}

impl fmt::Display for RecoveryEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryEvent::TruncatedTail { priority, segment, offset, bytes } => {
                write!(f, "{priority}: cut a torn tail of {bytes} bytes at offset {offset} of {}", segment.display())
            }
            RecoveryEvent::CorruptRecord { priority, segment, offset, bytes, records } => write!(
                f,
                "{priority}: damaged record at offset {offset} of {}: {records} records ({bytes} bytes) lost",
                segment.display()
            ),
            RecoveryEvent::MissingRecords { priority, from, to } => {
                write!(f, "{priority}: records {from}..{to} are missing ({} records)", to - from)
            }
            RecoveryEvent::ConsumerReset { consumer, path } => write!(
                f,
                "consumer {consumer:?}: position file {} is damaged; restarting from the oldest record",
                path.display()
            ),
            RecoveryEvent::RemovedTempFile { path } => write!(f, "removed temp file {}", path.display()),
        }
    }
}
