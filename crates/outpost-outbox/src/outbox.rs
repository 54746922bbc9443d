//! The synchronous core: three priority logs, the consumers' positions, the cap.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cap::{self, CounterFile, DropCounters};
use crate::config::{OutboxConfig, HEADER_RESERVE};
use crate::consumer::{ConsumerName, PositionStore, Positions};
use crate::error::{IoContext, OutboxError, Result};
use crate::frame::{frame_len, MAX_PAYLOAD_LEN};
use crate::fsutil;
use crate::log::{Cursor, SegmentLog};
use crate::record::{Priority, Record, RecordId};
use crate::recovery::{RecoveryEvent, RecoveryReport};

/// Least time between two saves of the drop counters.
const COUNTERS_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Size and extent of one priority log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PriorityStats {
    /// Oldest sequence number still kept (records below it were consumed or dropped).
    pub first_seq: u64,
    /// Sequence number the next record gets.
    pub next_seq: u64,
    /// Records kept.
    pub records: u64,
    /// Bytes of its segment files.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// fsyncs of appended records since the outbox was opened (one per group commit).
    pub syncs: u64,
}

/// A snapshot of the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Per priority, lowest first ([`Priority::index`]).
    pub per_priority: [PriorityStats; 3],
    /// Bytes of all segment files.
    pub total_bytes: u64,
    /// What the cap dropped so far.
    pub dropped: DropCounters,
}

/// A consumer's acked positions and, in memory only, how far it has read past them.
#[derive(Debug)]
struct ConsumerState {
    committed: Positions,
    cursors: [Cursor; 3],
}

impl ConsumerState {
    fn new(committed: Positions) -> ConsumerState {
        ConsumerState { committed, cursors: committed.map(Cursor::at) }
    }
}

/// A crash-safe store-and-forward outbox on disk (the synchronous core; see the crate docs).
///
/// Every method does file I/O on the calling thread: async code uses [`crate::AsyncOutbox`].
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    config: OutboxConfig,
    logs: [SegmentLog; 3],
    positions: PositionStore,
    consumers: BTreeMap<ConsumerName, ConsumerState>,
    counters: DropCounters,
    counter_file: CounterFile,
    counters_dirty: bool,
    counters_saved: Instant,
    recovery: RecoveryReport,
    /// Held (flock) for the outbox's life so a second process cannot interleave appends.
    _lock: File,
}

impl Outbox {
    /// Opens the outbox in `dir` (created if missing), recovering from whatever a crash left.
    pub fn open(dir: impl AsRef<Path>, config: OutboxConfig) -> Result<Outbox> {
        config.validate()?;
        let dir = dir.as_ref().to_owned();
        fsutil::ensure_dir(&dir)?;
        let lock_path = dir.join("LOCK");
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).ctx("open", &lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(OutboxError::Locked { path: lock_path }),
            Err(TryLockError::Error(e)) => return Err(OutboxError::io("lock", lock_path, e)),
        }
        let mut recovery = RecoveryReport::default();
        let durable = config.fsync.is_durable();
        let mut open_log = |p| SegmentLog::open(&dir, p, config.segment_bytes, durable, &mut recovery);
        let logs = [open_log(Priority::Low)?, open_log(Priority::Normal)?, open_log(Priority::High)?];
        let positions = PositionStore::open(&dir)?;
        let counter_file = CounterFile::new(&dir);
        let mut outbox = Outbox {
            counters: counter_file.load()?,
            dir,
            config,
            logs,
            positions,
            consumers: BTreeMap::new(),
            counter_file,
            counters_dirty: false,
            counters_saved: Instant::now(),
            recovery,
            _lock: lock,
        };
        outbox.load_consumers()?;
        Ok(outbox)
    }

    fn load_consumers(&mut self) -> Result<()> {
        let loaded = self.positions.load()?;
        for path in loaded.removed_temp {
            self.recovery.push(RecoveryEvent::RemovedTempFile { path });
        }
        for (name, committed) in loaded.good {
            self.consumers.insert(name, ConsumerState::new(committed));
        }
        for (name, path) in loaded.damaged {
            let committed = self.first_seqs();
            self.positions.save(&name, &committed)?;
            self.recovery.push(RecoveryEvent::ConsumerReset { consumer: name.to_string(), path });
            self.consumers.insert(name, ConsumerState::new(committed));
        }
        for p in Priority::ALL {
            let acked_max = self.consumers.values().map(|c| c.committed[p.index()]).max().unwrap_or(0);
            self.logs[p.index()].skip_to(acked_max, &mut self.recovery)?;
            self.delete_consumed(p)?;
        }
        Ok(())
    }

    /// The directory the outbox lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    /// What opening found and repaired.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Appends one record; when this returns `Ok` the record is durable (written, under `Never`).
    ///
    /// Never fails because the cap is reached: older, lower-priority records are dropped and
    /// counted instead, unless this record alone cannot fit ([`OutboxError::RecordTooLarge`]).
    pub fn append(&mut self, priority: Priority, payload: &[u8]) -> Result<RecordId> {
        let id = self.stage(priority, payload)?;
        self.logs[priority.index()].commit()?;
        Ok(id)
    }

    /// Appends records with one fsync per priority touched; ids in input order.
    ///
    /// On error no record of the failing priority is stored; records of other priorities may
    /// be, so a retry of the whole batch can duplicate them (delivery is at-least-once anyway).
    pub fn append_batch(&mut self, records: &[(Priority, &[u8])]) -> Result<Vec<RecordId>> {
        let mut ids = Vec::with_capacity(records.len());
        for (priority, payload) in records {
            match self.stage(*priority, payload) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    self.discard_staged();
                    return Err(e);
                }
            }
        }
        for r in self.commit_staged() {
            r?;
        }
        Ok(ids)
    }

    /// Adds a record to the current group without writing it; [`Outbox::commit_staged`] makes
    /// the group durable. The async writer builds its group commits from these two.
    pub(crate) fn stage(&mut self, priority: Priority, payload: &[u8]) -> Result<RecordId> {
        let len = payload.len() as u64;
        if len > MAX_PAYLOAD_LEN || frame_len(len) + HEADER_RESERVE > self.config.max_total_bytes {
            return Err(OutboxError::RecordTooLarge { len, cap: self.config.max_total_bytes });
        }
        if !self.make_room(priority, len)? {
            return Ok(self.drop_on_arrival(priority, len));
        }
        let segments = self.logs[priority.index()].segment_count();
        let seq = self.logs[priority.index()].stage(payload)?;
        if self.logs[priority.index()].segment_count() > segments {
            // The rotation sealed a segment that every consumer may already have acked. The
            // record is staged: a failed deletion must not fail its append (the next ack or
            // open retries it).
            if let Err(e) = self.delete_consumed(priority) {
                tracing::warn!("outbox: could not delete a consumed {priority} segment: {e}");
            }
        }
        Ok(RecordId { priority, seq })
    }

    /// Commits the staged group of every priority; one result per priority.
    pub(crate) fn commit_staged(&mut self) -> [Result<()>; 3] {
        let [low, normal, high] = &mut self.logs;
        [low.commit(), normal.commit(), high.commit()]
    }

    /// See `SegmentLog::epoch`: lets the writer tell a staged record was thrown away.
    pub(crate) fn epoch(&self, priority: Priority) -> u64 {
        self.logs[priority.index()].epoch()
    }

    pub(crate) fn discarded_by(&self, priority: Priority) -> OutboxError {
        self.logs[priority.index()].discarded_by()
    }

    /// Makes the next write of `priority`'s log fail with ENOSPC. Test-only fault injection.
    #[cfg(test)]
    pub(crate) fn fail_next_write(&mut self, priority: Priority) {
        self.logs[priority.index()].fail_next_write = true;
    }

    fn discard_staged(&mut self) {
        for log in &mut self.logs {
            log.discard_staged();
        }
    }

    /// Drops whole oldest segments, lowest priority first, until `len` more bytes of
    /// `priority` fit the cap. `false` when everything kept has a higher priority than the new
    /// record: then the new record is the lowest-priority data and the one to drop.
    fn make_room(&mut self, priority: Priority, len: u64) -> Result<bool> {
        let cap = self.config.max_total_bytes;
        let mut dropped_any = false;
        let mut fits = true;
        loop {
            let total: u64 = self.logs.iter().map(SegmentLog::total_bytes).sum();
            if total + self.logs[priority.index()].growth_for(len) <= cap {
                break;
            }
            let Some(victim) = cap::victim(self.logs.each_ref().map(SegmentLog::has_records)) else {
                return Err(OutboxError::RecordTooLarge { len, cap });
            };
            if victim > priority {
                fits = false;
                break;
            }
            let Some(seg) = self.logs[victim.index()].drop_oldest()? else { break };
            let unacked_from = self.min_committed(victim).unwrap_or(0).max(seg.first_seq);
            let records = seg.end_seq.saturating_sub(unacked_from);
            let d = &mut self.counters.per_priority[victim.index()];
            d.records += records;
            d.bytes += seg.bytes;
            dropped_any = true;
            tracing::warn!(
                "outbox cap of {cap} bytes reached: dropped {victim} records {}..{} ({records} not yet acked, {} bytes)",
                seg.first_seq,
                seg.end_seq,
                seg.bytes
            );
        }
        if dropped_any {
            self.save_counters();
        }
        Ok(fits)
    }

    /// Counts a record the cap drops instead of storing, and gives it an id no record will
    /// reuse (consumers see the jump, as for any dropped record).
    fn drop_on_arrival(&mut self, priority: Priority, len: u64) -> RecordId {
        let seq = self.logs[priority.index()].skip_one();
        let d = &mut self.counters.per_priority[priority.index()];
        d.records += 1;
        d.bytes += frame_len(len);
        tracing::warn!(
            "outbox cap of {} bytes reached and every record kept outranks it: dropped {priority} record {seq} on arrival",
            self.config.max_total_bytes
        );
        self.save_counters();
        RecordId { priority, seq }
    }

    /// Saves the counters at most once a second (a flood of drops on arrival would otherwise
    /// cost two fsyncs each); the rest are saved on drop of the outbox. A crash can lose up to
    /// a second of counts, which were logged as they happened.
    fn save_counters(&mut self) {
        self.counters_dirty = true;
        if self.counters_saved.elapsed() >= COUNTERS_SAVE_INTERVAL {
            self.flush_counters();
        }
    }

    fn flush_counters(&mut self) {
        if !self.counters_dirty {
            return;
        }
        // The drop itself happened and the in-memory counters have it; failing the append
        // because the report could not be saved would be the worse outcome.
        match self.counter_file.save(&self.counters) {
            Ok(()) => self.counters_dirty = false,
            Err(e) => tracing::warn!("outbox: could not save drop counters: {e}"),
        }
        self.counters_saved = Instant::now();
    }

    /// Adds a consumer that starts at the oldest record kept; `false` if it already existed.
    pub fn add_consumer(&mut self, name: &ConsumerName) -> Result<bool> {
        if self.consumers.contains_key(name) {
            return Ok(false);
        }
        let committed = self.first_seqs();
        self.positions.save(name, &committed)?;
        self.consumers.insert(name.clone(), ConsumerState::new(committed));
        Ok(true)
    }

    /// Removes a consumer and its position; records only it still needed are deleted.
    pub fn remove_consumer(&mut self, name: &ConsumerName) -> Result<bool> {
        if !self.consumers.contains_key(name) {
            return Ok(false);
        }
        self.positions.remove(name)?;
        self.consumers.remove(name);
        for p in Priority::ALL {
            self.delete_consumed(p)?;
        }
        Ok(true)
    }

    /// The consumers, by name.
    pub fn consumers(&self) -> Vec<ConsumerName> {
        self.consumers.keys().cloned().collect()
    }

    /// The first sequence number of `priority` that `consumer` has not acked.
    pub fn committed(&self, consumer: &ConsumerName, priority: Priority) -> Result<u64> {
        Ok(self.consumer(consumer)?.committed[priority.index()])
    }

    /// The next records for `consumer` after those it has read, `High` first, then `Normal`,
    /// then `Low`; in order within a priority. At most `max_records`, and at most `max_bytes` of
    /// payload unless the first record alone is larger. Only confirmed records are returned. A
    /// jump in sequence numbers means the cap dropped records in between ([`Outbox::dropped`]).
    pub fn poll(&mut self, consumer: &ConsumerName, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let state =
            self.consumers.get_mut(consumer).ok_or_else(|| OutboxError::UnknownConsumer(consumer.to_string()))?;
        let mut out = Vec::new();
        let mut used = 0usize;
        for p in Priority::ALL.into_iter().rev() {
            let budget = if out.is_empty() { max_bytes } else { max_bytes.saturating_sub(used) };
            let before = out.len();
            self.logs[p.index()].read(&mut state.cursors[p.index()], max_records, budget, &mut out)?;
            used += out[before..].iter().map(|r| r.payload.len()).sum::<usize>();
            // Stopped by a limit with records of this priority left: a lower priority must not
            // slip into the room that is left.
            if out.len() >= max_records || state.cursors[p.index()].seq() < self.logs[p.index()].confirmed_end() {
                break;
            }
        }
        Ok(out)
    }

    /// [`Outbox::poll`] of one priority only: for a consumer that may send one priority and
    /// not another right now (a bandwidth budget), so that a blocked priority does not hide
    /// the others.
    pub fn poll_priority(
        &mut self,
        consumer: &ConsumerName,
        priority: Priority,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>> {
        let state =
            self.consumers.get_mut(consumer).ok_or_else(|| OutboxError::UnknownConsumer(consumer.to_string()))?;
        let mut out = Vec::new();
        self.logs[priority.index()].read(&mut state.cursors[priority.index()], max_records, max_bytes, &mut out)?;
        Ok(out)
    }

    /// Commits `consumer`'s position past `id` (and every earlier record of its priority).
    pub fn ack(&mut self, consumer: &ConsumerName, id: RecordId) -> Result<()> {
        self.ack_all(consumer, [id])
    }

    /// Commits past the highest id of each priority in `ids`, with one position write (two
    /// fsyncs: ack batches, not single records, on a busy outbox).
    pub fn ack_all(&mut self, consumer: &ConsumerName, ids: impl IntoIterator<Item = RecordId>) -> Result<()> {
        let state = self.consumers.get(consumer).ok_or_else(|| OutboxError::UnknownConsumer(consumer.to_string()))?;
        let mut committed = state.committed;
        for id in ids {
            let end = self.logs[id.priority.index()].confirmed_end();
            if id.seq >= end {
                return Err(OutboxError::AckBeyondEnd { consumer: consumer.to_string(), id, end });
            }
            let c = &mut committed[id.priority.index()];
            *c = (*c).max(id.seq + 1);
        }
        if committed == state.committed {
            return Ok(());
        }
        let before = state.committed;
        self.positions.save(consumer, &committed)?;
        let state =
            self.consumers.get_mut(consumer).ok_or_else(|| OutboxError::UnknownConsumer(consumer.to_string()))?;
        state.committed = committed;
        for p in Priority::ALL {
            let i = p.index();
            if state.cursors[i].seq() < committed[i] {
                state.cursors[i] = Cursor::at(committed[i]);
            }
        }
        for p in Priority::ALL {
            if committed[p.index()] != before[p.index()] {
                self.delete_consumed(p)?;
            }
        }
        Ok(())
    }

    /// Per priority ([`Priority::index`]), the records `consumer` has not acked yet: confirmed
    /// ones past its committed position that the cap did not drop.
    pub fn pending(&self, consumer: &ConsumerName) -> Result<[u64; 3]> {
        let state = self.consumer(consumer)?;
        Ok(Priority::ALL.map(|p| {
            let log = &self.logs[p.index()];
            log.confirmed_end().saturating_sub(state.committed[p.index()].max(log.first_seq()))
        }))
    }

    /// Sends `consumer` back to its committed positions: unacked records are delivered again.
    pub fn rewind(&mut self, consumer: &ConsumerName) -> Result<()> {
        let state =
            self.consumers.get_mut(consumer).ok_or_else(|| OutboxError::UnknownConsumer(consumer.to_string()))?;
        state.cursors = state.committed.map(Cursor::at);
        Ok(())
    }

    /// Sizes, sequence ranges and drop counters.
    pub fn stats(&self) -> OutboxStats {
        let per_priority = self.logs.each_ref().map(|log| PriorityStats {
            first_seq: log.first_seq(),
            next_seq: log.next_seq(),
            records: log.records(),
            bytes: log.total_bytes(),
            segments: log.segment_count(),
            syncs: log.syncs(),
        });
        OutboxStats { total_bytes: per_priority.iter().map(|s| s.bytes).sum(), per_priority, dropped: self.counters }
    }

    /// What the cap dropped since the outbox was created.
    pub fn dropped(&self) -> DropCounters {
        self.counters
    }

    fn consumer(&self, name: &ConsumerName) -> Result<&ConsumerState> {
        self.consumers.get(name).ok_or_else(|| OutboxError::UnknownConsumer(name.to_string()))
    }

    fn first_seqs(&self) -> Positions {
        self.logs.each_ref().map(SegmentLog::first_seq)
    }

    fn min_committed(&self, p: Priority) -> Option<u64> {
        self.consumers.values().map(|c| c.committed[p.index()]).min()
    }

    /// Deletes segments every consumer has acked. With no consumer nothing is deleted: records
    /// wait for a consumer to be added (or for the cap).
    fn delete_consumed(&mut self, p: Priority) -> Result<()> {
        if let Some(upto) = self.min_committed(p) {
            self.logs[p.index()].delete_below(upto)?;
        }
        Ok(())
    }

    /// (file, length at its last fsync) of every segment: what a power cut keeps. Test-only.
    #[cfg(test)]
    pub(crate) fn durable_lengths(&self) -> Vec<(PathBuf, u64)> {
        self.logs.iter().flat_map(SegmentLog::durable_lengths).collect()
    }
}

impl Drop for Outbox {
    /// Saves what is only in memory: pending drop counts, and ids given to records dropped on
    /// arrival (so a clean restart does not give them again; after a crash it may, harmlessly,
    /// since no consumer saw them).
    fn drop(&mut self) {
        self.flush_counters();
        for log in &mut self.logs {
            if let Err(e) = log.persist_skipped() {
                tracing::warn!("outbox: could not record skipped ids: {e}");
            }
        }
    }
}
