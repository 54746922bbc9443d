//! How an outbox is set up: fsync policy, segment size, size cap.

use crate::error::{OutboxError, Result};
use crate::frame::SEGMENT_HEADER_LEN;

/// When appended records reach the disk, and so what an `Ok` from an append promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync before an append returns. Through [`crate::AsyncOutbox`] appends that arrive
    /// while one fsync runs share the next one; the promise is the same: `Ok` means durable.
    Always,
    /// Appends wait for the next group fsync, which covers every append since the previous
    /// one; group fsyncs start at most every `interval_ms`. `Ok` means durable. Sharing needs
    /// concurrent appends ([`crate::AsyncOutbox`]) or a batch ([`crate::Outbox::append_batch`]);
    /// a lone [`crate::Outbox::append`] is a group of one.
    GroupCommit {
        /// Least time between the starts of two group fsyncs; 0 starts the next as soon as the
        /// previous ends. Bounds the added latency of an append under load.
        interval_ms: u64,
    },
    /// Never fsync records; the OS writes them back when it likes. `Ok` means *written* (a
    /// process crash keeps the record, a power cut may not), not durable.
    Never,
}

impl FsyncPolicy {
    /// Whether records are fsynced before their append is confirmed.
    pub fn is_durable(self) -> bool {
        !matches!(self, FsyncPolicy::Never)
    }
}

impl Default for FsyncPolicy {
    /// `GroupCommit { interval_ms: 0 }`: durable appends; the next group fsync starts as soon
    /// as the previous one ends, and every append that arrived meanwhile shares it.
    ///
    /// Why 0: appends wait for an fsync anyway, so concurrent appends already pile up during
    /// one (about 1–3 ms here). In most runs of `bench/outbox.sh` on a shared 2-core machine,
    /// 2 ms made 16 concurrent appenders about 2x slower and did not clearly help at 1,024; an
    /// interval does not help a trickle either (appends farther apart than the interval each
    /// get their own fsync). Raise it to trade latency for fewer fsyncs (flash wear) in bursts.
    fn default() -> Self {
        FsyncPolicy::GroupCommit { interval_ms: 0 }
    }
}

/// Configuration of an [`crate::Outbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxConfig {
    /// When records reach the disk. Default: [`FsyncPolicy::default`].
    pub fsync: FsyncPolicy,
    /// A segment is sealed and a new one started when the next record would take it past this
    /// many bytes; also the step in which space is given back. Default: 8 MiB.
    pub segment_bytes: u64,
    /// Total bytes of all segments; past it the drop policy deletes the oldest segments of the
    /// lowest priority. Default: 256 MiB.
    pub max_total_bytes: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig { fsync: FsyncPolicy::default(), segment_bytes: 8 << 20, max_total_bytes: 256 << 20 }
    }
}

/// Room the cap always keeps for segment headers: one active segment per priority plus one
/// being started by a rotation.
pub(crate) const HEADER_RESERVE: u64 = SEGMENT_HEADER_LEN * 4;

impl OutboxConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.segment_bytes < 64 {
            return Err(OutboxError::Config(format!("segment_bytes {} is below 64", self.segment_bytes)));
        }
        if self.max_total_bytes < HEADER_RESERVE + 64 {
            return Err(OutboxError::Config(format!(
                "max_total_bytes {} leaves no room for records (at least {} bytes)",
                self.max_total_bytes,
                HEADER_RESERVE + 64
            )));
        }
        Ok(())
    }
}
