//! The control outbox: state reports and command acknowledgements waiting for the server.
//!
//! A device may be offline for days; what it measured meanwhile still matters (it is how the
//! server sees what happened during the outage), and a command's result must reach the server
//! exactly once as far as the device can tell. Both wait in an [`outpost_outbox`] segment log
//! under `<data_dir>/outbox/control`: appends are group-committed on the outbox's own writer
//! thread (no async thread waits on a disk), a delivered batch costs one position write instead
//! of rewriting the whole queue, and a torn tail after a crash is cut off at the last complete
//! record. Acknowledgements are `High` priority (sent first, dropped last), reports `Normal`.
//! Past the size cap the oldest reports are dropped and counted, because the newest say most
//! about the device's state now.
//!
//! Earlier agents kept a JSON-lines file (`outbox.jsonl`); [`ControlOutbox::open`] moves what it
//! holds into the log once and then deletes it. A crash between the two sends those items
//! twice, which the server tolerates (reports carry their sequence number, acks are idempotent).

use outpost_outbox::{AsyncOutbox, ConsumerName, OutboxConfig, OutboxError as LogError, Priority, RecordId};
use outpost_proto::fleet::device::{CommandAck, StateReport};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Directory under the data directory holding the outbox.
pub const OUTBOX_DIR: &str = "outbox/control";
/// The file earlier agents kept their outbox in.
pub const LEGACY_FILE: &str = "outbox.jsonl";
/// Bytes of queued reports and acknowledgements kept by default (about 10,000 reports).
pub const DEFAULT_MAX_BYTES: u64 = 32 << 20;
/// Segment size: the cap drops whole segments, so this is the step in which reports are dropped.
const SEGMENT_BYTES: u64 = 1 << 20;
/// The one consumer: the server.
const CONSUMER: &str = "server";

/// A command acknowledgement waiting to be sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingAck {
    /// Command id.
    pub id: i64,
    /// The acknowledgement.
    pub ack: CommandAck,
}

/// One item of the legacy JSON-lines file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LegacyItem {
    Report(Box<StateReport>),
    Ack(PendingAck),
}

/// Why the outbox could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The segment log failed (disk full, damage it could not repair, closed).
    #[error("control outbox: {0}")]
    Log(#[from] LogError),
    /// An item could not be encoded.
    #[error("control outbox: cannot encode an item: {0}")]
    Encode(#[from] serde_json::Error),
    /// The legacy file could not be read or removed.
    #[error("control outbox: legacy file {}: {source}", path.display())]
    Legacy {
        /// The legacy file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// One queued item, as read back for delivery.
#[derive(Debug, Clone)]
pub enum Queued {
    /// A state report.
    Report(RecordId, Box<StateReport>),
    /// A command acknowledgement.
    Ack(RecordId, PendingAck),
    /// A record this agent cannot read (written by a newer one): delivered as done, skipped.
    Unreadable(RecordId),
}

impl Queued {
    /// The record's id in the log.
    pub fn id(&self) -> RecordId {
        match self {
            Queued::Report(id, _) | Queued::Ack(id, _) | Queued::Unreadable(id) => *id,
        }
    }
}

/// What was queued when the outbox was opened.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Backlog {
    /// Highest report sequence number queued, so a restarted agent continues after it.
    pub max_seq: Option<u64>,
    /// Commands whose acknowledgement is queued: they ran and must not run again.
    pub acked_ids: HashSet<i64>,
}

/// How much is queued, and what the cap dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Reports not yet delivered.
    pub reports: u64,
    /// Acknowledgements not yet delivered.
    pub acks: u64,
    /// Reports and acknowledgements the size cap dropped since the outbox was created.
    pub dropped: u64,
}

/// Unsent reports and acknowledgements on disk; cheap to clone.
#[derive(Debug, Clone)]
pub struct ControlOutbox {
    log: AsyncOutbox,
    server: ConsumerName,
}

fn decode(id: RecordId, payload: &[u8]) -> Queued {
    let parsed = match id.priority {
        Priority::High => serde_json::from_slice(payload).map(|a| Queued::Ack(id, a)),
        _ => serde_json::from_slice(payload).map(|r| Queued::Report(id, Box::new(r))),
    };
    parsed.unwrap_or_else(|e| {
        tracing::warn!(%id, error = %e, "skipping a control outbox record this agent cannot read");
        Queued::Unreadable(id)
    })
}

impl ControlOutbox {
    /// Opens (or starts) the outbox in `data_dir` with a cap of `max_bytes`, moves a legacy
    /// file's items into it, and returns what is queued.
    pub async fn open(data_dir: &Path, max_bytes: u64) -> Result<(ControlOutbox, Backlog), OutboxError> {
        let config = OutboxConfig {
            segment_bytes: SEGMENT_BYTES.min(max_bytes / 4).max(64),
            max_total_bytes: max_bytes,
            ..OutboxConfig::default()
        };
        let log = crate::export::open_outbox(data_dir.join(OUTBOX_DIR), config).await?;
        let recovery = log.recovery();
        if !recovery.is_clean() {
            tracing::warn!(
                truncated_bytes = recovery.truncated_bytes(),
                lost_records = recovery.lost_records(),
                "control outbox repaired after a crash"
            );
        }
        let server = ConsumerName::new(CONSUMER)?;
        log.add_consumer(&server).await?;
        let outbox = ControlOutbox { log, server };
        outbox.import_legacy(data_dir).await?;
        let backlog = outbox.scan().await?;
        Ok((outbox, backlog))
    }

    /// Moves the items of an earlier agent's JSON-lines file into the log, then deletes it.
    async fn import_legacy(&self, data_dir: &Path) -> Result<(), OutboxError> {
        let path = data_dir.join(LEGACY_FILE);
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(OutboxError::Legacy { path, source }),
        };
        let mut moved = 0usize;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<LegacyItem>(line) {
                Ok(LegacyItem::Report(r)) => self.push_report(&r).await?,
                Ok(LegacyItem::Ack(a)) => self.push_ack(a.id, a.ack).await?,
                // A torn last line (a crash mid-append) was never a complete item.
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "skipping an unreadable legacy outbox line");
                    continue;
                }
            }
            moved += 1;
        }
        tokio::fs::remove_file(&path).await.map_err(|source| OutboxError::Legacy { path: path.clone(), source })?;
        tracing::info!(items = moved, "moved the legacy outbox file into the control outbox");
        Ok(())
    }

    /// Reads every queued item once (at open) for the sequence numbers and command ids, then
    /// sends the reader back to the start.
    async fn scan(&self) -> Result<Backlog, OutboxError> {
        let mut backlog = Backlog::default();
        loop {
            let records = self.log.poll(&self.server, 1024, 4 << 20).await?;
            if records.is_empty() {
                break;
            }
            for r in records {
                match decode(r.id, &r.payload) {
                    Queued::Report(_, report) => backlog.max_seq = backlog.max_seq.max(Some(report.seq)),
                    Queued::Ack(_, a) => {
                        backlog.acked_ids.insert(a.id);
                    }
                    Queued::Unreadable(_) => {}
                }
            }
        }
        self.log.rewind(&self.server).await?;
        Ok(backlog)
    }

    /// Queues a report; returns once it is on disk.
    pub async fn push_report(&self, report: &StateReport) -> Result<(), OutboxError> {
        self.log.append(Priority::Normal, serde_json::to_vec(report)?).await?;
        Ok(())
    }

    /// Queues a command acknowledgement; returns once it is on disk.
    pub async fn push_ack(&self, id: i64, ack: CommandAck) -> Result<(), OutboxError> {
        self.log.append(Priority::High, serde_json::to_vec(&PendingAck { id, ack })?).await?;
        Ok(())
    }

    /// The oldest undelivered items after those already handed out, acknowledgements first;
    /// at most `n`. Items handed out but not [`delivered`](ControlOutbox::delivered) come back
    /// after [`ControlOutbox::retry_later`] or a restart.
    pub async fn next_batch(&self, n: usize) -> Result<Vec<Queued>, OutboxError> {
        let records = self.log.poll(&self.server, n, 4 << 20).await?;
        Ok(records.into_iter().map(|r| decode(r.id, &r.payload)).collect())
    }

    /// Marks items as delivered (or given up on): they are never handed out again.
    pub async fn delivered(&self, ids: Vec<RecordId>) -> Result<(), OutboxError> {
        if !ids.is_empty() {
            self.log.ack_all(&self.server, ids).await?;
        }
        Ok(())
    }

    /// Hands the undelivered items out again from the oldest (a send failed).
    pub async fn retry_later(&self) -> Result<(), OutboxError> {
        Ok(self.log.rewind(&self.server).await?)
    }

    /// What is queued and what the cap dropped.
    pub async fn counts(&self) -> Result<Counts, OutboxError> {
        let pending = self.log.pending(&self.server).await?;
        let stats = self.log.stats().await?;
        Ok(Counts {
            reports: pending[Priority::Normal.index()],
            acks: pending[Priority::High.index()],
            dropped: stats.dropped.total_records(),
        })
    }

    /// Finishes pending writes and releases the directory (another process may open it).
    pub async fn close(self) -> Result<(), OutboxError> {
        Ok(self.log.close().await?)
    }
}
