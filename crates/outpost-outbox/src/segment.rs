//! One segment file: its header, its records, what is written and what is confirmed.
//!
//! A segment tracks three prefixes of itself: the frames still in memory (`pending`, a group
//! being built), the bytes handed to the OS (`len`), and the bytes confirmed to appenders
//! (`confirmed_len`: durable under `Always`/`GroupCommit`, written under `Never`). Readers only
//! ever see the confirmed prefix, and a failed write rolls the file back to it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, OutboxError, Result};
use crate::frame::{self, FrameFault, HeaderFault, SegmentHeader, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::fsutil;
use crate::record::Priority;

/// File name of the segment whose first record is `base_seq`: zero-padded so names sort by seq.
pub(crate) fn file_name(base_seq: u64) -> String {
    format!("{base_seq:020}.seg")
}

/// The base sequence a segment file name encodes, if it is a segment name.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// An open segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    path: PathBuf,
    file: File,
    base_seq: u64,
    follows_gap: bool,
    /// Bytes in the file (header included).
    len: u64,
    /// Records in the file.
    count: u64,
    confirmed_len: u64,
    confirmed_count: u64,
    /// Length at the last fsync: what a power cut keeps (the crash-model test cuts files to it).
    synced_len: u64,
    /// Encoded frames of the group being built, not yet written.
    pending: Vec<u8>,
    pending_count: u64,
}

/// Where a scan of a segment stopped short of the file's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadTail {
    /// Offset of the first frame that did not check.
    pub offset: u64,
    /// Bytes from there to the end of the file.
    pub bytes: u64,
    /// What was wrong with it.
    pub fault: FrameFault,
}

impl Segment {
    /// Creates an empty segment durably: header written to a temp name, fsynced, renamed.
    ///
    /// Always synced, whatever the fsync policy: creation is rare, and a segment file that
    /// exists is then guaranteed to have a whole header, so a bad header always means damage.
    pub(crate) fn create(dir: &Path, priority: Priority, base_seq: u64, follows_gap: bool) -> Result<Segment> {
        let path = dir.join(file_name(base_seq));
        let tmp = path.with_extension("seg.tmp");
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).ctx("create", &tmp)?;
        let header = SegmentHeader { priority, base_seq, follows_gap }.encode();
        file.write_all(&header).ctx("write header", &tmp)?;
        file.sync_all().ctx("fsync", &tmp)?;
        fs::rename(&tmp, &path).ctx("rename into place", &path)?;
        fsutil::fsync_dir(dir)?;
        Ok(Segment {
            path,
            file,
            base_seq,
            follows_gap,
            len: SEGMENT_HEADER_LEN,
            count: 0,
            confirmed_len: SEGMENT_HEADER_LEN,
            confirmed_count: 0,
            synced_len: SEGMENT_HEADER_LEN,
            pending: Vec::new(),
            pending_count: 0,
        })
    }

    /// Opens an existing segment and checks every record; a bad tail is reported, not yet cut.
    pub(crate) fn open(path: &Path, priority: Priority) -> Result<(Segment, Option<BadTail>)> {
        let file = OpenOptions::new().read(true).write(true).open(path).ctx("open", path)?;
        let file_len = file.metadata().ctx("stat", path)?.len();
        let mut head = vec![0u8; SEGMENT_HEADER_LEN.min(file_len) as usize];
        file.read_exact_at(&mut head, 0).ctx("read header", path)?;
        let header = SegmentHeader::decode(&head).map_err(|fault| match fault {
            HeaderFault::Foreign(found) => OutboxError::ForeignFile { path: path.to_owned(), found },
            HeaderFault::Version(found) => {
                OutboxError::UnsupportedVersion { path: path.to_owned(), found, supported: frame::FORMAT_VERSION }
            }
            HeaderFault::Short | HeaderFault::Corrupt => OutboxError::CorruptHeader { path: path.to_owned() },
        })?;
        let named = path.file_name().and_then(|n| n.to_str()).and_then(parse_file_name);
        if header.priority != priority || named != Some(header.base_seq) {
            // A segment copied into the wrong directory or renamed: its ids would be wrong.
            return Err(OutboxError::CorruptHeader { path: path.to_owned() });
        }
        let mut scan = FrameScan::new(&file, SEGMENT_HEADER_LEN, file_len, header.base_seq);
        let mut bad = None;
        loop {
            match scan.next().ctx("read", path)? {
                None => break,
                Some(Ok(_)) => {}
                Some(Err(fault)) => {
                    bad = Some(BadTail { offset: scan.pos(), bytes: file_len - scan.pos(), fault });
                    break;
                }
            }
        }
        let (len, count) = (scan.pos(), scan.seq() - header.base_seq);
        let segment = Segment {
            path: path.to_owned(),
            file,
            base_seq: header.base_seq,
            follows_gap: header.follows_gap,
            len,
            count,
            confirmed_len: len,
            confirmed_count: count,
            synced_len: len,
            pending: Vec::new(),
            pending_count: 0,
        };
        Ok((segment, bad))
    }

    /// Cuts the file to its checked prefix (after [`Segment::open`] reported a bad tail).
    pub(crate) fn truncate_to_checked(&mut self) -> Result<()> {
        self.file.set_len(self.len).ctx("truncate", &self.path)?;
        self.file.sync_all().ctx("fsync", &self.path)?;
        self.synced_len = self.len;
        Ok(())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn base_seq(&self) -> u64 {
        self.base_seq
    }

    /// Whether the ids before `base_seq` that no segment holds were skipped on purpose.
    pub(crate) fn follows_gap(&self) -> bool {
        self.follows_gap
    }

    /// One past the last record, pending ones included.
    pub(crate) fn next_seq(&self) -> u64 {
        self.base_seq + self.count + self.pending_count
    }

    /// One past the last record a reader may see.
    pub(crate) fn confirmed_end(&self) -> u64 {
        self.base_seq + self.confirmed_count
    }

    /// Records in the file or pending.
    pub(crate) fn records(&self) -> u64 {
        self.count + self.pending_count
    }

    /// Bytes the segment takes once its pending frames are written.
    pub(crate) fn size(&self) -> u64 {
        self.len + self.pending.len() as u64
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether some written bytes are not confirmed yet (they need a sync, then a confirm).
    pub(crate) fn has_unconfirmed(&self) -> bool {
        self.confirmed_len != self.len || self.has_pending()
    }

    /// Adds a frame to the group being built; returns its sequence number.
    pub(crate) fn stage(&mut self, payload: &[u8]) -> u64 {
        let seq = self.next_seq();
        frame::encode_frame(seq, payload, &mut self.pending);
        self.pending_count += 1;
        seq
    }

    /// Hands the pending frames to the OS in one write.
    pub(crate) fn write_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(&self.pending, self.len).ctx("write", &self.path)?;
        self.len += self.pending.len() as u64;
        self.count += self.pending_count;
        self.pending.clear();
        self.pending_count = 0;
        Ok(())
    }

    /// fdatasync: enough, because the only metadata appends change is the size, which it covers.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.synced_len = self.len;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn synced_len(&self) -> u64 {
        self.synced_len
    }

    /// Everything written so far is now visible to readers.
    pub(crate) fn confirm(&mut self) {
        self.confirmed_len = self.len;
        self.confirmed_count = self.count;
    }

    /// Forgets the unconfirmed group: pending frames and any bytes written after the confirmed
    /// prefix (a partial write leaves a partial frame there).
    pub(crate) fn roll_back(&mut self) -> io::Result<()> {
        self.pending.clear();
        self.pending_count = 0;
        // Unconditional: a failed write leaves bytes past `len` that `len` does not know of.
        self.file.set_len(self.confirmed_len)?;
        self.len = self.confirmed_len;
        self.synced_len = self.synced_len.min(self.len);
        self.count = self.confirmed_count;
        Ok(())
    }

    /// Removes the file (the caller fsyncs the directory, then forgets the segment).
    pub(crate) fn remove_file(&self) -> Result<()> {
        fs::remove_file(&self.path).ctx("delete segment", &self.path)
    }

    /// A scan of the confirmed records from byte `offset`, which holds record `seq`.
    pub(crate) fn scan_from(&self, offset: u64, seq: u64) -> FrameScan<'_> {
        FrameScan::new(&self.file, offset, self.confirmed_len, seq)
    }

    /// A scan of the confirmed records from the first one.
    pub(crate) fn scan(&self) -> FrameScan<'_> {
        self.scan_from(SEGMENT_HEADER_LEN, self.base_seq)
    }
}

/// Reads frames one after another from a region of a segment file, checking each.
#[derive(Debug)]
pub(crate) struct FrameScan<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
    seq: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

/// Bytes read from the file at a time.
const READ_CHUNK: usize = 64 * 1024;

impl<'a> FrameScan<'a> {
    fn new(file: &'a File, pos: u64, end: u64, seq: u64) -> FrameScan<'a> {
        FrameScan { file, pos, end, seq, buf: Vec::new(), buf_start: pos }
    }

    /// Offset of the next frame (after a fault: of the frame that failed).
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Sequence number of the next frame.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// The next record's sequence number and payload; `None` at the end of the region.
    ///
    /// A frame that runs past the region, or whose length field points past it, is `Short`:
    /// the length is checked against the region before anything is allocated for it, so a
    /// damaged length can never make the scan allocate gigabytes.
    #[allow(clippy::type_complexity)]
    pub(crate) fn next(&mut self) -> io::Result<Option<Result<(u64, &[u8]), FrameFault>>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        if self.end - self.pos < FRAME_HEADER_LEN {
            return Ok(Some(Err(FrameFault::Short)));
        }
        self.fill(FRAME_HEADER_LEN)?;
        let at = (self.pos - self.buf_start) as usize;
        let mut header = [0u8; FRAME_HEADER_LEN as usize];
        header.copy_from_slice(&self.buf[at..at + FRAME_HEADER_LEN as usize]);
        let payload_len = frame::announced_len(&header);
        let total = FRAME_HEADER_LEN + payload_len;
        if self.end - self.pos < total {
            return Ok(Some(Err(FrameFault::Short)));
        }
        self.fill(total)?;
        let at = (self.pos - self.buf_start) as usize + FRAME_HEADER_LEN as usize;
        let payload = &self.buf[at..at + payload_len as usize];
        if let Err(fault) = frame::check_frame(self.seq, &header, payload) {
            return Ok(Some(Err(fault)));
        }
        let seq = self.seq;
        self.seq += 1;
        self.pos += total;
        Ok(Some(Ok((seq, payload))))
    }

    /// Makes `buf` hold `n` bytes from `pos` (the caller checked they lie inside the region).
    fn fill(&mut self, n: u64) -> io::Result<()> {
        let have_from = self.pos.saturating_sub(self.buf_start);
        if self.pos >= self.buf_start && have_from + n <= self.buf.len() as u64 {
            return Ok(());
        }
        let want = n.max(READ_CHUNK as u64).min(self.end - self.pos) as usize;
        self.buf.resize(want, 0);
        self.file.read_exact_at(&mut self.buf, self.pos)?;
        self.buf_start = self.pos;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(dir: &Path, n: u64) -> Segment {
        let mut s = Segment::create(dir, Priority::Normal, 10, false).unwrap();
        for i in 0..n {
            s.stage(format!("record {i}").as_bytes());
        }
        s.write_pending().unwrap();
        s.sync().unwrap();
        s.confirm();
        s
    }

    #[test]
    fn file_names_sort_by_sequence_and_parse_back() {
        assert_eq!(file_name(42), "00000000000000000042.seg");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_file_name("42.seg"), None);
        assert_eq!(parse_file_name("00000000000000000042.seg.tmp"), None);
    }

    #[test]
    fn records_written_are_read_back_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = fresh(dir.path(), 100);
        let path = s.path().to_owned();
        drop(s);
        let (s, bad) = Segment::open(&path, Priority::Normal).unwrap();
        assert_eq!(bad, None);
        assert_eq!((s.base_seq(), s.next_seq()), (10, 110));
        let mut scan = s.scan();
        let mut n = 0;
        while let Some(r) = scan.next().unwrap() {
            let (seq, payload) = r.unwrap();
            assert_eq!(payload, format!("record {}", seq - 10).as_bytes());
            n += 1;
        }
        assert_eq!(n, 100);
    }

    #[test]
    fn readers_see_only_the_confirmed_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = fresh(dir.path(), 2);
        s.stage(b"unconfirmed");
        s.write_pending().unwrap();
        let mut scan = s.scan();
        let mut n = 0;
        while let Some(r) = scan.next().unwrap() {
            r.unwrap();
            n += 1;
        }
        assert_eq!(n, 2);
        assert_eq!(s.confirmed_end(), 12);
        assert_eq!(s.next_seq(), 13);
    }

    #[test]
    fn roll_back_cuts_an_unconfirmed_write_off_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = fresh(dir.path(), 3);
        let confirmed = s.synced_len();
        s.stage(b"lost");
        s.write_pending().unwrap();
        s.stage(b"never written");
        s.roll_back().unwrap();
        assert_eq!(fs::metadata(s.path()).unwrap().len(), confirmed);
        assert_eq!(s.next_seq(), 13);
    }

    #[test]
    fn segment_in_the_wrong_priority_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = fresh(dir.path(), 1);
        let err = Segment::open(s.path(), Priority::High).unwrap_err();
        assert!(matches!(err, OutboxError::CorruptHeader { .. }), "{err}");
    }

    #[test]
    fn a_length_field_pointing_past_the_file_is_a_short_frame_not_an_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let s = fresh(dir.path(), 1);
        let path = s.path().to_owned();
        drop(s);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&u32::MAX.to_le_bytes(), SEGMENT_HEADER_LEN).unwrap();
        let (s, bad) = Segment::open(&path, Priority::Normal).unwrap();
        assert_eq!(bad.map(|b| (b.offset, b.fault)), Some((SEGMENT_HEADER_LEN, FrameFault::Short)));
        assert_eq!(s.records(), 0);
    }
}
