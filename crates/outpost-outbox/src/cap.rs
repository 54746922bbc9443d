//! The size cap's drop policy and the counters of what it dropped.
//!
//! When an append would take the outbox past its cap, whole oldest segments of the lowest
//! priority that holds records are deleted until the record fits: dropping lowest priority
//! first, oldest first, in segment-sized steps (deleting a file is the only way to give space
//! back without rewriting the log). When everything kept outranks the record being appended,
//! that record is dropped on arrival instead: a new `Low` record never evicts `Normal` ones.
//! Everything dropped is counted and the counters are kept in a small file so they survive
//! restarts.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::fsutil;
use crate::record::Priority;

/// Which priority the cap drops from next, given which priorities hold records.
pub(crate) fn victim(has_records: [bool; 3]) -> Option<Priority> {
    Priority::ALL.into_iter().find(|p| has_records[p.index()])
}

/// What the cap dropped from one priority since the outbox was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Records dropped that at least one consumer had not acked (all records when there is
    /// no consumer).
    pub records: u64,
    /// Bytes of segment files deleted to make room, plus the frames of records dropped on
    /// arrival.
    pub bytes: u64,
}

/// What the cap dropped, per priority (indexed by [`Priority::index`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// Per priority, lowest first.
    pub per_priority: [Dropped; 3],
}

impl DropCounters {
    /// What was dropped from `priority`.
    pub fn get(&self, priority: Priority) -> Dropped {
        self.per_priority[priority.index()]
    }

    /// Records dropped from every priority.
    pub fn total_records(&self) -> u64 {
        self.per_priority.iter().map(|d| d.records).sum()
    }

    /// Bytes dropped from every priority.
    pub fn total_bytes(&self) -> u64 {
        self.per_priority.iter().map(|d| d.bytes).sum()
    }
}

const COUNTERS_MAGIC: [u8; 4] = *b"OPOD";
const COUNTERS_VERSION: u8 = 1;
const COUNTERS_LEN: usize = 8 + 16 * 3 + 4;

fn encode(c: &DropCounters) -> Vec<u8> {
    let mut out = Vec::with_capacity(COUNTERS_LEN);
    out.extend_from_slice(&COUNTERS_MAGIC);
    out.extend_from_slice(&[COUNTERS_VERSION, 0, 0, 0]);
    for d in &c.per_priority {
        out.extend_from_slice(&d.records.to_le_bytes());
        out.extend_from_slice(&d.bytes.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<DropCounters> {
    if bytes.len() != COUNTERS_LEN || bytes[0..4] != COUNTERS_MAGIC || bytes[4] != COUNTERS_VERSION {
        return None;
    }
    let (body, crc) = bytes.split_at(COUNTERS_LEN - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return None;
    }
    let mut c = DropCounters::default();
    for (i, d) in c.per_priority.iter_mut().enumerate() {
        let at = 8 + 16 * i;
        d.records = u64::from_le_bytes(body[at..at + 8].try_into().ok()?);
        d.bytes = u64::from_le_bytes(body[at + 8..at + 16].try_into().ok()?);
    }
    Some(c)
}

/// The counters file of an outbox directory.
#[derive(Debug)]
pub(crate) struct CounterFile {
    path: PathBuf,
}

impl CounterFile {
    pub(crate) fn new(root: &Path) -> CounterFile {
        CounterFile { path: root.join("dropped.cnt") }
    }

    /// The stored counters; zero when the file is missing, or damaged (said in the log: the
    /// counters are a report, the records they count are gone either way).
    pub(crate) fn load(&self) -> Result<DropCounters> {
        match fs::read(&self.path) {
            Ok(bytes) => Ok(decode(&bytes).unwrap_or_else(|| {
                tracing::warn!("outbox: {} is damaged; drop counters restart at zero", self.path.display());
                DropCounters::default()
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DropCounters::default()),
            Err(e) => Err(e).ctx("read", &self.path),
        }
    }

    pub(crate) fn save(&self, c: &DropCounters) -> Result<()> {
        fsutil::atomic_write(&self.path, &encode(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_priority_holding_records_is_dropped_first() {
        assert_eq!(victim([true, true, true]), Some(Priority::Low));
        assert_eq!(victim([false, true, true]), Some(Priority::Normal));
        assert_eq!(victim([false, false, true]), Some(Priority::High));
        assert_eq!(victim([false, false, false]), None);
    }

    #[test]
    fn counters_survive_a_reload_and_a_damaged_file_reads_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let file = CounterFile::new(dir.path());
        assert_eq!(file.load().unwrap(), DropCounters::default());
        let mut c = DropCounters::default();
        c.per_priority[0] = Dropped { records: 10, bytes: 2000 };
        c.per_priority[2] = Dropped { records: 1, bytes: 99 };
        file.save(&c).unwrap();
        assert_eq!(file.load().unwrap(), c);
        assert_eq!((c.total_records(), c.total_bytes()), (11, 2099));
        fs::write(dir.path().join("dropped.cnt"), b"junk").unwrap();
        assert_eq!(file.load().unwrap(), DropCounters::default());
    }
}
