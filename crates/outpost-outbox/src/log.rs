//! The segment log of one priority: rotation, recovery, reading from a position, deletion.
//!
//! The newest (active) segment is never deleted, only sealed by a rotation first: its header
//! carries the next sequence number, so ids keep growing even when every record was consumed.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{is_disk_full, IoContext, OutboxError, Result};
use crate::frame::frame_len;
use crate::fsutil;
use crate::record::{Priority, Record, RecordId};
use crate::recovery::{RecoveryEvent, RecoveryReport};
use crate::segment::{self, Segment};

/// A reader's place in a log: the next sequence number to read, and where it is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    seq: u64,
    /// (segment base, byte offset) of `seq`, when known; saves a scan from the segment start.
    hint: Option<(u64, u64)>,
}

impl Cursor {
    pub(crate) fn at(seq: u64) -> Cursor {
        Cursor { seq, hint: None }
    }

    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }
}

/// A segment removed by the drop policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DroppedSegment {
    pub first_seq: u64,
    pub end_seq: u64,
    pub bytes: u64,
}

/// Smallest size [`segment_limit`] shrinks a segment to: a file per few records would cost more
/// in directory syncs than it frees.
pub(crate) const MIN_SEGMENT_BYTES: u64 = 64 << 10;

/// The size a new segment may grow to: the configured size, but at most an eighth of what this
/// log could hold on its disk (the space still `available` plus the `own` bytes it holds).
///
/// Only sealed segments are deleted once consumed; an active segment that held most of a small
/// disk would stay however much was acked, and a log that filled its disk could never free it.
/// Sized this way, at least seven eighths of a full log are in sealed segments.
pub(crate) fn segment_limit(configured: u64, available: Option<u64>, own: u64) -> u64 {
    match available {
        Some(free) => configured.min((free.saturating_add(own) / 8).max(MIN_SEGMENT_BYTES)),
        None => configured,
    }
}

/// The segments of one priority, oldest first; never empty.
#[derive(Debug)]
pub(crate) struct SegmentLog {
    priority: Priority,
    dir: PathBuf,
    segments: VecDeque<Segment>,
    segment_bytes: u64,
    /// The size at which the active segment is sealed: `segment_bytes`, or less on a small
    /// disk (see [`segment_limit`]).
    active_limit: u64,
    /// fsync appends (every policy but `Never`).
    sync: bool,
    poisoned: Option<OutboxError>,
    /// Group fsyncs done since open.
    syncs: u64,
    /// Bumped whenever staged records are thrown away: a waiter staged in an older epoch
    /// knows its record is gone even if the group's final commit succeeds (with other records
    /// that may now carry the same ids).
    epoch: u64,
    /// Why records were last thrown away.
    discarded_by: Option<OutboxError>,
    /// Ids handed to records the cap dropped on arrival. They are not written anywhere: the
    /// next record written starts a segment after them (one segment per run of drops).
    skipped: u64,
    /// Test-only fault injection: the next commit's write fails with ENOSPC.
    #[cfg(test)]
    pub(crate) fail_next_write: bool,
}

impl SegmentLog {
    /// Opens (or creates) the log under `root`, repairing what a crash left.
    pub(crate) fn open(
        root: &Path,
        priority: Priority,
        segment_bytes: u64,
        sync: bool,
        report: &mut RecoveryReport,
    ) -> Result<SegmentLog> {
        let dir = root.join(priority.dir_name());
        fsutil::ensure_dir(&dir)?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(&dir).ctx("list", &dir)? {
            let path = entry.ctx("list", &dir)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".seg.tmp") {
                fs::remove_file(&path).ctx("remove temp file", &path)?;
                report.push(RecoveryEvent::RemovedTempFile { path });
            } else if let Some(base) = segment::parse_file_name(name) {
                bases.push(base);
            } else {
                tracing::warn!("outbox: ignoring {} (not a segment name)", path.display());
            }
        }
        bases.sort_unstable();
        let mut segments = VecDeque::with_capacity(bases.len().max(1));
        let mut prev_damaged = false;
        for (i, &base) in bases.iter().enumerate() {
            let path = dir.join(segment::file_name(base));
            let (mut seg, bad) = Segment::open(&path, priority)?;
            let next_base = bases.get(i + 1).copied();
            if let Some(next_base) = next_base {
                if seg.next_seq() > next_base {
                    return Err(OutboxError::CorruptHeader { path: dir.join(segment::file_name(next_base)) });
                }
            }
            if let Some(bad) = bad {
                seg.truncate_to_checked()?;
                report.push(match next_base {
                    None => {
                        RecoveryEvent::TruncatedTail { priority, segment: path, offset: bad.offset, bytes: bad.bytes }
                    }
                    Some(next_base) => RecoveryEvent::CorruptRecord {
                        priority,
                        segment: path,
                        offset: bad.offset,
                        bytes: bad.bytes,
                        records: next_base - seg.next_seq(),
                    },
                });
            } else if sync {
                // Records a killed process wrote but never fsynced pass the scan; they become
                // visible now, so they must be durable first.
                seg.sync().ctx("fsync", &path)?;
            }
            // A gap before this segment is a loss unless it was skipped on purpose, or the
            // damaged segment before it was just reported with its lost records.
            let prev_end = segments.back().map(Segment::next_seq);
            if let Some(prev_end) = prev_end.filter(|&e| e < seg.base_seq() && !seg.follows_gap() && !prev_damaged) {
                report.push(RecoveryEvent::MissingRecords { priority, from: prev_end, to: seg.base_seq() });
            }
            prev_damaged = bad.is_some();
            segments.push_back(seg);
        }
        if segments.is_empty() {
            segments.push_back(Segment::create(&dir, priority, 0, false)?);
        }
        let own: u64 = segments.iter().map(Segment::size).sum();
        Ok(SegmentLog {
            priority,
            active_limit: segment_limit(segment_bytes, fsutil::disk_space(&dir).map(|d| d.0), own),
            dir,
            segments,
            segment_bytes,
            sync,
            poisoned: None,
            syncs: 0,
            epoch: 0,
            discarded_by: None,
            skipped: 0,
            #[cfg(test)]
            fail_next_write: false,
        })
    }

    fn active(&self) -> &Segment {
        // `segments` is never empty: open creates one and deletion keeps the last.
        &self.segments[self.segments.len() - 1]
    }

    fn active_mut(&mut self) -> &mut Segment {
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    pub(crate) fn first_seq(&self) -> u64 {
        self.segments[0].base_seq()
    }

    /// Sequence number the next appended record gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.active().next_seq() + self.skipped
    }

    /// Gives the next id to a record the cap drops on arrival.
    pub(crate) fn skip_one(&mut self) -> u64 {
        let seq = self.next_seq();
        self.skipped += 1;
        seq
    }

    /// One past the last record readers may see.
    pub(crate) fn confirmed_end(&self) -> u64 {
        self.active().confirmed_end()
    }

    /// Bytes of all segments, pending frames included.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.segments.iter().map(Segment::size).sum()
    }

    /// Records kept (pending ones included).
    pub(crate) fn records(&self) -> u64 {
        self.segments.iter().map(Segment::records).sum()
    }

    pub(crate) fn syncs(&self) -> u64 {
        self.syncs
    }

    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Bytes appending a payload of `len` would add, a new segment's header included.
    pub(crate) fn growth_for(&self, len: u64) -> u64 {
        let frame = frame_len(len);
        if self.skipped > 0 || self.would_rotate(frame) {
            frame + crate::frame::SEGMENT_HEADER_LEN
        } else {
            frame
        }
    }

    fn would_rotate(&self, frame: u64) -> bool {
        let active = self.active();
        active.records() > 0 && active.size() + frame > self.active_limit
    }

    fn check_usable(&self) -> Result<()> {
        match &self.poisoned {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Adds a record to the group being built (not written, not confirmed yet).
    pub(crate) fn stage(&mut self, payload: &[u8]) -> Result<u64> {
        self.check_usable()?;
        if self.skipped > 0 || self.would_rotate(frame_len(payload.len() as u64)) {
            self.rotate()?;
        }
        Ok(self.active_mut().stage(payload))
    }

    /// Writes the group, fsyncs it (unless `Never`), and makes it visible to readers.
    ///
    /// On failure the group is rolled back so the file again ends at the last confirmed record:
    /// a full disk leaves the log usable; a failed fsync of anything else poisons it, because
    /// after a failed fsync Linux may have dropped the dirty pages and a retry would "succeed".
    pub(crate) fn commit(&mut self) -> Result<()> {
        self.check_usable()?;
        if !self.active().has_unconfirmed() {
            return Ok(());
        }
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_write) {
            let path = self.active().path().to_owned();
            let e = OutboxError::io("write", path, std::io::Error::from(std::io::ErrorKind::StorageFull));
            return Err(self.roll_back(e));
        }
        if let Err(e) = self.active_mut().write_pending() {
            return Err(self.roll_back(e));
        }
        if self.sync {
            if let Err(e) = self.active_mut().sync() {
                let path = self.active().path().to_owned();
                if is_disk_full(&e) {
                    return Err(self.roll_back(OutboxError::io("fsync", path, e)));
                }
                let err = OutboxError::Poisoned { priority: self.priority, path: path.clone(), reason: e.to_string() };
                self.poisoned = Some(err);
                return Err(OutboxError::io("fsync", path, e));
            }
            self.syncs += 1;
        }
        self.active_mut().confirm();
        Ok(())
    }

    /// Drops the unconfirmed group; poisons the log when even that fails.
    fn roll_back(&mut self, cause: OutboxError) -> OutboxError {
        self.epoch += 1;
        self.discarded_by = Some(cause.clone());
        if let Err(e) = self.active_mut().roll_back() {
            let path = self.active().path().to_owned();
            self.poisoned = Some(OutboxError::Poisoned {
                priority: self.priority,
                path,
                reason: format!("could not cut a failed write back ({e}) after: {cause}"),
            });
        }
        cause
    }

    /// Forgets the staged group without writing it (another log's commit failed).
    pub(crate) fn discard_staged(&mut self) {
        if self.active().has_pending() {
            self.epoch += 1;
        }
        let _ = self.active_mut().roll_back();
    }

    /// Changes whenever staged records are thrown away.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The error that last threw staged records away.
    pub(crate) fn discarded_by(&self) -> OutboxError {
        // Only `roll_back` moves the epoch while the writer waits, and it always sets a cause.
        self.discarded_by.clone().unwrap_or(OutboxError::Closed)
    }

    /// Seals the active segment (commits it) and starts a new one at the next id (after any
    /// skipped ids). An active segment left without records is deleted: the new one carries
    /// the next id.
    fn rotate(&mut self) -> Result<()> {
        self.commit()?;
        let base = self.next_seq();
        self.active_limit =
            segment_limit(self.segment_bytes, fsutil::disk_space(&self.dir).map(|d| d.0), self.total_bytes());
        let seg = Segment::create(&self.dir, self.priority, base, self.skipped > 0)?;
        self.skipped = 0;
        self.segments.push_back(seg);
        let sealed = self.segments.len() - 2;
        if self.segments[sealed].records() == 0 {
            self.segments[sealed].remove_file()?;
            self.segments.remove(sealed);
            fsutil::fsync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Starts a segment after the ids given to records dropped on arrival, if any, so they
    /// survive a restart.
    pub(crate) fn persist_skipped(&mut self) -> Result<()> {
        if self.skipped > 0 && self.poisoned.is_none() {
            self.rotate()?;
        }
        Ok(())
    }

    /// Moves the next sequence number up to `seq` (a consumer acked records a crash lost under
    /// `Never`): new ids must not collide with ids a consumer already saw.
    pub(crate) fn skip_to(&mut self, seq: u64, report: &mut RecoveryReport) -> Result<()> {
        let from = self.next_seq();
        if seq <= from {
            return Ok(());
        }
        self.skipped += seq - from;
        self.rotate()?;
        report.push(RecoveryEvent::MissingRecords { priority: self.priority, from, to: seq });
        Ok(())
    }

    /// Deletes sealed segments whose every record is below `upto`; returns how many.
    pub(crate) fn delete_below(&mut self, upto: u64) -> Result<usize> {
        let mut deleted = 0;
        while self.segments.len() > 1 && self.segments[0].next_seq() <= upto {
            self.segments[0].remove_file()?;
            self.segments.pop_front();
            deleted += 1;
        }
        if deleted > 0 {
            fsutil::fsync_dir(&self.dir)?;
        }
        Ok(deleted)
    }

    /// Whether the drop policy can free anything here.
    pub(crate) fn has_records(&self) -> bool {
        self.segments.iter().any(|s| s.records() > 0)
    }

    /// Deletes the oldest segment holding records (sealing the active one first if it is the
    /// only one); `None` when the log holds no record.
    pub(crate) fn drop_oldest(&mut self) -> Result<Option<DroppedSegment>> {
        while self.segments.len() > 1 && self.segments[0].records() == 0 {
            self.segments[0].remove_file()?;
            self.segments.pop_front();
        }
        if self.segments.len() == 1 {
            if self.active().records() == 0 {
                return Ok(None);
            }
            self.rotate()?;
        }
        let front = &self.segments[0];
        let dropped = DroppedSegment { first_seq: front.base_seq(), end_seq: front.next_seq(), bytes: front.size() };
        front.remove_file()?;
        self.segments.pop_front();
        fsutil::fsync_dir(&self.dir)?;
        Ok(Some(dropped))
    }

    /// Appends confirmed records from `cursor` to `out` until a limit is reached; moves the
    /// cursor past them. A cursor below the first kept record (dropped or deleted) jumps ahead.
    pub(crate) fn read(
        &self,
        cursor: &mut Cursor,
        max_records: usize,
        max_bytes: usize,
        out: &mut Vec<Record>,
    ) -> Result<()> {
        let mut bytes = 0usize;
        let start = self.segments.partition_point(|s| s.base_seq() <= cursor.seq).saturating_sub(1);
        for seg in self.segments.iter().skip(start) {
            if out.len() >= max_records {
                return Ok(());
            }
            if cursor.seq < seg.base_seq() {
                *cursor = Cursor::at(seg.base_seq());
            }
            if cursor.seq >= seg.confirmed_end() {
                continue;
            }
            let mut scan = match cursor.hint {
                Some((base, offset)) if base == seg.base_seq() => seg.scan_from(offset, cursor.seq),
                _ => self.locate(seg, cursor.seq)?,
            };
            loop {
                let offset = scan.pos();
                let item = scan.next().ctx("read", seg.path())?;
                let Some(item) = item else { break };
                let (seq, payload) = item.map_err(|_| OutboxError::CorruptRecord {
                    path: seg.path().to_owned(),
                    offset,
                    seq: cursor.seq,
                })?;
                // Always hand out at least one record, even one larger than `max_bytes`.
                if !out.is_empty() && bytes + payload.len() > max_bytes {
                    return Ok(());
                }
                bytes += payload.len();
                out.push(Record { id: RecordId { priority: self.priority, seq }, payload: payload.to_vec() });
                *cursor = Cursor { seq: seq + 1, hint: Some((seg.base_seq(), scan.pos())) };
                if out.len() >= max_records {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// A scan of `seg` positioned at record `seq`, found by reading from the segment start.
    fn locate<'a>(&self, seg: &'a Segment, seq: u64) -> Result<crate::segment::FrameScan<'a>> {
        let mut scan = seg.scan();
        while scan.seq() < seq {
            let offset = scan.pos();
            match scan.next().ctx("read", seg.path())? {
                Some(Ok(_)) => {}
                Some(Err(_)) => {
                    return Err(OutboxError::CorruptRecord { path: seg.path().to_owned(), offset, seq: scan.seq() })
                }
                None => break,
            }
        }
        Ok(scan)
    }

    /// (file, length at its last fsync) of every segment: what survives a power cut.
    /// Test-only crash model.
    #[cfg(test)]
    pub(crate) fn durable_lengths(&self) -> Vec<(PathBuf, u64)> {
        self.segments.iter().map(|s| (s.path().to_owned(), s.synced_len())).collect()
    }
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
