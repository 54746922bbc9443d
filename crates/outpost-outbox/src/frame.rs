//! The bytes on disk: segment headers and record frames, encoded and checked without I/O.
//!
//! A record's checksum covers its sequence number although the number is not stored: the
//! sequence is implied by the record's place in the segment (header base + index). Covering it
//! means a frame can only be valid at the one place it was written, so stale bytes (a block of
//! zeros after a crash, an old frame in a reused block) never pass for a record.

use crate::record::Priority;

/// First bytes of every segment file ("outpost outbox").
pub(crate) const SEGMENT_MAGIC: [u8; 4] = *b"OPOX";
/// Version of the segment format this build writes and reads.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// magic 4 + version 1 + priority 1 + flags 1 + reserved 1 + base seq 8 + crc 4.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 20;
/// payload length 4 + crc 4.
pub(crate) const FRAME_HEADER_LEN: u64 = 8;
/// Largest payload a frame can describe.
pub(crate) const MAX_PAYLOAD_LEN: u64 = u32::MAX as u64;

/// The fixed header at the start of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub priority: Priority,
    /// Sequence number of the segment's first record.
    pub base_seq: u64,
    /// The ids between the previous segment's end and `base_seq` were skipped on purpose
    /// (dropped on arrival by the cap, or already reported missing): recovery does not report
    /// the gap as a loss again.
    pub follows_gap: bool,
}

/// Bit of the flags byte: see [`SegmentHeader::follows_gap`].
const FLAG_FOLLOWS_GAP: u8 = 1;

/// Why a segment header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderFault {
    /// Fewer bytes than a header.
    Short,
    /// Not our magic: a file some other program wrote.
    Foreign([u8; 4]),
    /// Our magic, a format this build does not know.
    Version(u8),
    /// Our magic and version, but the header's checksum or priority byte is wrong.
    Corrupt,
}

impl SegmentHeader {
    pub(crate) fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut out = [0u8; SEGMENT_HEADER_LEN as usize];
        out[0..4].copy_from_slice(&SEGMENT_MAGIC);
        out[4] = FORMAT_VERSION;
        out[5] = self.priority.index() as u8;
        out[6] = if self.follows_gap { FLAG_FOLLOWS_GAP } else { 0 };
        out[8..16].copy_from_slice(&self.base_seq.to_le_bytes());
        let crc = crc32fast::hash(&out[0..16]);
        out[16..20].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderFault> {
        if bytes.len() < 4 {
            return Err(HeaderFault::Short);
        }
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != SEGMENT_MAGIC {
            return Err(HeaderFault::Foreign(magic));
        }
        let Some(header) = bytes.get(0..SEGMENT_HEADER_LEN as usize) else {
            return Err(HeaderFault::Short);
        };
        if header[4] != FORMAT_VERSION {
            return Err(HeaderFault::Version(header[4]));
        }
        if crc32fast::hash(&header[0..16]).to_le_bytes() != header[16..20] {
            return Err(HeaderFault::Corrupt);
        }
        let priority = Priority::from_index(header[5]).ok_or(HeaderFault::Corrupt)?;
        if header[6] & !FLAG_FOLLOWS_GAP != 0 || header[7] != 0 {
            // Flags this version does not know, under a valid checksum: a newer writer.
            return Err(HeaderFault::Version(header[4]));
        }
        let base_seq = u64::from_le_bytes(header[8..16].try_into().map_err(|_| HeaderFault::Short)?);
        Ok(SegmentHeader { priority, base_seq, follows_gap: header[6] & FLAG_FOLLOWS_GAP != 0 })
    }
}

/// Appends the frame of record `seq` to `out`.
pub(crate) fn encode_frame(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(payload.len() as u64 <= MAX_PAYLOAD_LEN);
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&frame_crc(seq, len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Bytes a frame of `payload_len` takes on disk.
pub(crate) fn frame_len(payload_len: u64) -> u64 {
    FRAME_HEADER_LEN + payload_len
}

fn frame_crc(seq: u64, len: [u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&len);
    h.update(payload);
    h.finalize()
}

/// What the bytes at a frame position turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameFault {
    /// The region ends before the frame does (a torn write, or a corrupt length).
    Short,
    /// The frame is whole but its checksum does not match.
    Checksum,
}

/// Payload length a frame header announces.
pub(crate) fn announced_len(header: &[u8; FRAME_HEADER_LEN as usize]) -> u64 {
    u64::from(u32::from_le_bytes([header[0], header[1], header[2], header[3]]))
}

/// Checks a whole frame (`header` then `payload` of the announced length) written for `seq`.
pub(crate) fn check_frame(
    seq: u64,
    header: &[u8; FRAME_HEADER_LEN as usize],
    payload: &[u8],
) -> Result<(), FrameFault> {
    if payload.len() as u64 != announced_len(header) {
        return Err(FrameFault::Short);
    }
    let stored = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let len = [header[0], header[1], header[2], header[3]];
    if frame_crc(seq, len, payload) == stored {
        Ok(())
    } else {
        Err(FrameFault::Checksum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(frame: &[u8]) -> ([u8; 8], &[u8]) {
        let mut h = [0u8; 8];
        h.copy_from_slice(&frame[..8]);
        (h, &frame[8..])
    }

    #[test]
    fn header_round_trips() {
        for follows_gap in [false, true] {
            let h = SegmentHeader { priority: Priority::High, base_seq: 123_456_789, follows_gap };
            assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
        }
    }

    #[test]
    fn header_of_a_foreign_file_is_refused_as_foreign() {
        assert_eq!(
            SegmentHeader::decode(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\0\0\0\0"),
            Err(HeaderFault::Foreign(*b"\x7fELF"))
        );
        assert_eq!(SegmentHeader::decode(b"OP"), Err(HeaderFault::Short));
    }

    #[test]
    fn header_of_a_newer_version_is_refused_not_repaired() {
        let mut b = SegmentHeader { priority: Priority::Low, base_seq: 0, follows_gap: false }.encode();
        b[4] = 2;
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderFault::Version(2)));
    }

    #[test]
    fn header_with_a_flipped_bit_is_corrupt() {
        let mut b = SegmentHeader { priority: Priority::Low, base_seq: 7, follows_gap: false }.encode();
        b[9] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderFault::Corrupt));
    }

    #[test]
    fn frame_checks_only_at_the_sequence_it_was_written_for() {
        let mut out = Vec::new();
        encode_frame(42, b"hello", &mut out);
        assert_eq!(out.len() as u64, frame_len(5));
        let (h, p) = split(&out);
        assert_eq!(check_frame(42, &h, p), Ok(()));
        assert_eq!(check_frame(43, &h, p), Err(FrameFault::Checksum));
    }

    #[test]
    fn zeroed_frame_is_not_a_record() {
        assert_eq!(check_frame(0, &[0; 8], &[]), Err(FrameFault::Checksum));
        assert_eq!(check_frame(1, &[0; 8], &[]), Err(FrameFault::Checksum));
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let mut out = Vec::new();
        encode_frame(9, b"payload bytes", &mut out);
        for i in 0..out.len() * 8 {
            let mut bad = out.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let (h, p) = split(&bad);
            assert!(check_frame(9, &h, p).is_err(), "bit {i}");
        }
    }
}
