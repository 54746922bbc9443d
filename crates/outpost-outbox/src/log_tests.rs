//! Unit tests of the segment log (`log.rs`), kept apart to keep that file readable.

use super::*;

fn open(dir: &Path, segment_bytes: u64) -> (SegmentLog, RecoveryReport) {
    let mut report = RecoveryReport::default();
    let log = SegmentLog::open(dir, Priority::Normal, segment_bytes, true, &mut report).unwrap();
    (log, report)
}

fn append(log: &mut SegmentLog, payload: &[u8]) -> u64 {
    let seq = log.stage(payload).unwrap();
    log.commit().unwrap();
    seq
}

fn read_all(log: &SegmentLog, from: u64) -> Vec<u64> {
    let mut out = Vec::new();
    log.read(&mut Cursor::at(from), usize::MAX, usize::MAX, &mut out).unwrap();
    out.iter().map(|r| r.id.seq).collect()
}

#[test]
fn segments_shrink_to_an_eighth_of_a_small_disk_but_not_below_the_floor() {
    assert_eq!(segment_limit(8 << 20, None, 0), 8 << 20, "no figure: the configured size");
    assert_eq!(segment_limit(8 << 20, Some(1 << 40), 0), 8 << 20, "a large disk: the configured size");
    assert_eq!(segment_limit(8 << 20, Some(3 << 20), 1 << 20), 512 << 10, "what the log holds counts as its own");
    assert_eq!(segment_limit(8 << 20, Some(0), 0), MIN_SEGMENT_BYTES);
    assert_eq!(segment_limit(300, Some(0), 0), 300, "never larger than configured");
}

#[test]
fn rotates_at_the_segment_size_and_reads_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 200);
    for i in 0..20u64 {
        assert_eq!(append(&mut log, &[i as u8; 50]), i);
    }
    assert!(log.segment_count() >= 6, "{} segments", log.segment_count());
    assert!(log.segments.iter().all(|s| s.size() <= 200));
    assert_eq!(read_all(&log, 0), (0..20).collect::<Vec<_>>());
    assert_eq!(read_all(&log, 13), (13..20).collect::<Vec<_>>());
}

#[test]
fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 100);
    append(&mut log, b"small");
    append(&mut log, &[7; 500]);
    append(&mut log, b"small again");
    assert_eq!(read_all(&log, 0), vec![0, 1, 2]);
    assert_eq!(log.segment_count(), 3);
}

#[test]
fn sequence_numbers_survive_deleting_every_sealed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 100);
    for _ in 0..10 {
        append(&mut log, &[1; 40]);
    }
    assert!(log.delete_below(10).unwrap() > 0);
    assert_eq!(log.segment_count(), 1);
    drop(log);
    let (mut log, report) = open(dir.path(), 100);
    assert!(report.is_clean());
    assert_eq!(append(&mut log, b"next"), 10);
}

#[test]
fn read_from_a_deleted_position_jumps_to_the_first_kept_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 100);
    for _ in 0..10 {
        append(&mut log, &[1; 40]);
    }
    let dropped = log.drop_oldest().unwrap().unwrap();
    assert_eq!(dropped.first_seq, 0);
    assert_eq!(read_all(&log, 0).first().copied(), Some(dropped.end_seq));
}

#[test]
fn ids_of_records_dropped_on_arrival_are_never_given_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 1 << 20);
    append(&mut log, b"a");
    assert_eq!(log.skip_one(), 1);
    assert_eq!(log.skip_one(), 2);
    assert_eq!(append(&mut log, b"b"), 3);
    assert_eq!(read_all(&log, 0), vec![0, 3]);
    drop(log);
    let (mut log, report) = open(dir.path(), 1 << 20);
    assert!(report.is_clean(), "a gap skipped on purpose is no loss: {report:?}");
    assert_eq!(append(&mut log, b"c"), 4);
}

#[test]
fn a_gap_nobody_skipped_is_reported_as_missing_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 100);
    for _ in 0..9 {
        append(&mut log, &[1; 40]);
    }
    drop(log);
    let mut segs: Vec<_> = fs::read_dir(dir.path().join("normal")).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort();
    assert!(segs.len() >= 3);
    fs::remove_file(&segs[1]).unwrap();
    let (_, report) = open(dir.path(), 100);
    assert!(report.lost_records() > 0, "{report:?}");
    assert!(matches!(report.events[..], [RecoveryEvent::MissingRecords { .. }]));
}

#[test]
fn unconfirmed_records_are_invisible_and_a_discarded_group_reuses_no_confirmed_id() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 1 << 20);
    append(&mut log, b"a");
    log.stage(b"b").unwrap();
    assert_eq!(read_all(&log, 0), vec![0]);
    log.discard_staged();
    assert_eq!(append(&mut log, b"c"), 1);
}

#[test]
fn skip_to_makes_later_ids_start_after_the_gap_and_reports_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 1 << 20);
    append(&mut log, b"a");
    let mut report = RecoveryReport::default();
    log.skip_to(5, &mut report).unwrap();
    assert_eq!(report.lost_records(), 4);
    assert_eq!(append(&mut log, b"b"), 5);
    drop(log);
    let (log, report) = open(dir.path(), 1 << 20);
    assert!(report.is_clean(), "reported once, when it was found, not at every open: {report:?}");
    assert_eq!(read_all(&log, 0), vec![0, 5]);
}
