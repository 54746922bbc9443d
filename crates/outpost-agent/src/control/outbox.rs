//! The control outbox: state reports and command acknowledgements that could not be sent yet.
//!
//! A device may be offline for days; what it measured meanwhile still matters (it is how the
//! server sees what happened during the outage), and a command's result must reach the server
//! exactly once as far as the device can tell. So unsent items are kept in memory and in a JSON
//! lines file under the data directory: new items are appended and fsynced, and the file is
//! rewritten atomically when sent items are removed or enough dropped ones accumulate. A torn
//! last line (crash mid-append) is skipped when loading. Reports are bounded: past the limit the
//! oldest are dropped and counted, because the newest say most about the device's state now.

use super::identity::write_atomic;
use outpost_proto::fleet::device::{CommandAck, StateReport};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// File under the data directory holding the outbox.
pub const OUTBOX_FILE: &str = "outbox.jsonl";
/// Reports kept by default.
pub const DEFAULT_MAX_REPORTS: usize = 10_000;
/// Acknowledgements kept at most (commands are rare; this only bounds a pathological server).
pub const MAX_ACKS: usize = 1_000;

/// A command acknowledgement waiting to be sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingAck {
    /// Command id.
    pub id: i64,
    /// The acknowledgement.
    pub ack: CommandAck,
}

/// One line of the outbox file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Item {
    Report(Box<StateReport>),
    Ack(PendingAck),
}

/// Why the outbox could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("outbox {}: cannot {action}: {source}", path.display())]
pub struct OutboxError {
    /// The outbox file.
    pub path: PathBuf,
    /// What was being done.
    pub action: &'static str,
    /// Cause.
    pub source: std::io::Error,
}

/// Unsent reports and acknowledgements, persisted under the data directory.
#[derive(Debug)]
pub struct Outbox {
    path: PathBuf,
    max_reports: usize,
    reports: VecDeque<StateReport>,
    acks: VecDeque<PendingAck>,
    dropped: u64,
    /// Lines in the file that no longer belong to the in-memory queues.
    stale_lines: usize,
}

impl Outbox {
    /// Opens (or starts) the outbox in `data_dir`, keeping at most `max_reports` reports.
    pub fn open(data_dir: &Path, max_reports: usize) -> Result<Outbox, OutboxError> {
        let path = data_dir.join(OUTBOX_FILE);
        let mut outbox = Outbox {
            path: path.clone(),
            max_reports: max_reports.max(1),
            reports: VecDeque::new(),
            acks: VecDeque::new(),
            dropped: 0,
            stale_lines: 0,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(outbox),
            Err(source) => return Err(OutboxError { path, action: "read", source }),
        };
        let mut lines = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            lines += 1;
            match serde_json::from_str::<Item>(line) {
                Ok(Item::Report(r)) => outbox.reports.push_back(*r),
                Ok(Item::Ack(a)) => outbox.acks.push_back(a),
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "skipping an unreadable outbox line"),
            }
        }
        outbox.trim();
        outbox.stale_lines = lines - outbox.reports.len() - outbox.acks.len();
        if outbox.stale_lines > 0 {
            outbox.compact()?;
        }
        Ok(outbox)
    }

    /// Queued reports.
    pub fn report_count(&self) -> usize {
        self.reports.len()
    }

    /// Queued acknowledgements.
    pub fn ack_count(&self) -> usize {
        self.acks.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty() && self.acks.is_empty()
    }

    /// Reports dropped (oldest first) because the outbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Highest report sequence number queued, so a restarted agent continues after it.
    pub fn max_seq(&self) -> Option<u64> {
        self.reports.iter().map(|r| r.seq).max()
    }

    /// Queues a report.
    pub fn push_report(&mut self, report: StateReport) -> Result<(), OutboxError> {
        self.append(&Item::Report(Box::new(report.clone())))?;
        self.reports.push_back(report);
        if self.trim() > 0 {
            self.stale_lines += 1;
            if self.stale_lines > self.max_reports / 10 {
                self.compact()?;
            }
        }
        Ok(())
    }

    /// Queues a command acknowledgement.
    pub fn push_ack(&mut self, id: i64, ack: CommandAck) -> Result<(), OutboxError> {
        let pending = PendingAck { id, ack };
        self.append(&Item::Ack(pending.clone()))?;
        self.acks.push_back(pending);
        Ok(())
    }

    /// Up to `n` of the oldest reports.
    pub fn peek_reports(&self, n: usize) -> Vec<StateReport> {
        self.reports.iter().take(n).cloned().collect()
    }

    /// The oldest acknowledgement.
    pub fn peek_ack(&self) -> Option<PendingAck> {
        self.acks.front().cloned()
    }

    /// Ids of the commands whose acknowledgement is queued.
    pub fn acked_ids(&self) -> Vec<i64> {
        self.acks.iter().map(|a| a.id).collect()
    }

    /// Removes the `n` oldest reports after they were delivered.
    pub fn remove_reports(&mut self, n: usize) -> Result<(), OutboxError> {
        let n = n.min(self.reports.len());
        self.reports.drain(..n);
        self.compact()
    }

    /// Removes the oldest acknowledgement after it was delivered.
    pub fn remove_ack(&mut self) -> Result<(), OutboxError> {
        self.acks.pop_front();
        self.compact()
    }

    /// Drops the oldest reports beyond the limit; returns how many.
    fn trim(&mut self) -> usize {
        let mut dropped = 0;
        while self.reports.len() > self.max_reports {
            self.reports.pop_front();
            dropped += 1;
        }
        while self.acks.len() > MAX_ACKS {
            self.acks.pop_front();
            dropped += 1;
        }
        if dropped > 0 {
            self.dropped += dropped as u64;
            tracing::warn!(dropped = self.dropped, "outbox full: dropped the oldest queued reports");
        }
        dropped
    }

    fn append(&self, item: &Item) -> Result<(), OutboxError> {
        let err = |action, source| OutboxError { path: self.path.clone(), action, source };
        let mut line = serde_json::to_vec(item).map_err(|e| err("encode", std::io::Error::other(e)))?;
        line.push(b'\n');
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err("create its directory", e))?;
        }
        let mut file =
            OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path).map_err(|e| err("open", e))?;
        file.write_all(&line).map_err(|e| err("append", e))?;
        file.sync_data().map_err(|e| err("fsync", e))
    }

    /// Rewrites the file with exactly what is queued.
    fn compact(&mut self) -> Result<(), OutboxError> {
        let mut text = Vec::new();
        let items = self
            .reports
            .iter()
            .cloned()
            .map(|r| Item::Report(Box::new(r)))
            .chain(self.acks.iter().cloned().map(Item::Ack));
        for item in items {
            if let Ok(line) = serde_json::to_vec(&item) {
                text.extend_from_slice(&line);
                text.push(b'\n');
            }
        }
        write_atomic(&self.path, &text, 0o600).map_err(|source| OutboxError {
            path: self.path.clone(),
            action: "rewrite",
            source,
        })?;
        self.stale_lines = 0;
        Ok(())
    }
}
