//! Helpers shared by the integration tests.

use std::fs;
use std::path::{Path, PathBuf};

use outpost_outbox::{ConsumerName, FsyncPolicy, Outbox, OutboxConfig, Priority, Record};

pub fn config(segment_bytes: u64, max_total_bytes: u64) -> OutboxConfig {
    OutboxConfig { fsync: FsyncPolicy::Always, segment_bytes, max_total_bytes }
}

pub fn name(n: &str) -> ConsumerName {
    ConsumerName::new(n).unwrap()
}

/// The payload the tests append as record number `i`.
pub fn payload(i: u64) -> Vec<u8> {
    format!("record {i:06} {}", "x".repeat((i % 40) as usize)).into_bytes()
}

/// Every record `consumer` has not acked, from its committed position.
pub fn read_all(outbox: &mut Outbox, consumer: &ConsumerName) -> Vec<Record> {
    outbox.rewind(consumer).unwrap();
    let all = outbox.poll(consumer, usize::MAX, usize::MAX).unwrap();
    outbox.rewind(consumer).unwrap();
    all
}

/// Sequence numbers of `priority` among `records`.
pub fn seqs(records: &[Record], priority: Priority) -> Vec<u64> {
    records.iter().filter(|r| r.id.priority == priority).map(|r| r.id.seq).collect()
}

/// Segment files of a priority, oldest first.
pub fn segments(dir: &Path, priority: Priority) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join(priority.dir_name()))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}
