//! Opening an outbox after crashes and damage: what is kept, what is cut, what is refused.

use std::fs;
use std::os::unix::fs::FileExt;

use crate::common::{config, name, payload, read_all, segments, seqs};
use outpost_outbox::{Outbox, OutboxError, Priority, RecoveryEvent};

#[test]
fn torn_tail_at_every_byte_offset_of_the_last_record_keeps_every_earlier_record() {
    let dir = tempfile::tempdir().unwrap();
    let reader = name("server");
    let mut before_last = 0;
    {
        let mut ob = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
        ob.add_consumer(&reader).unwrap();
        for i in 0..5 {
            if i == 4 {
                before_last = fs::metadata(&segments(dir.path(), Priority::Normal)[0]).unwrap().len();
            }
            ob.append(Priority::Normal, &payload(i)).unwrap();
        }
    }
    let seg = segments(dir.path(), Priority::Normal)[0].clone();
    let whole = fs::read(&seg).unwrap();
    for cut in before_last..whole.len() as u64 {
        fs::write(&seg, &whole[..cut as usize]).unwrap();
        let mut ob = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
        let torn = cut - before_last;
        if torn == 0 {
            assert!(ob.recovery().is_clean(), "cut {cut}: {:?}", ob.recovery());
        } else {
            assert_eq!(ob.recovery().truncated_bytes(), torn, "cut {cut}");
            assert!(matches!(
                ob.recovery().events[..],
                [RecoveryEvent::TruncatedTail { priority: Priority::Normal, offset, .. }] if offset == before_last
            ));
        }
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            before_last,
            "cut {cut}: the file is cut to the last whole record"
        );
        let got = read_all(&mut ob, &reader);
        assert_eq!(seqs(&got, Priority::Normal), vec![0, 1, 2, 3], "cut {cut}");
        assert!(got.iter().all(|r| r.payload == payload(r.id.seq)));
        if cut == whole.len() as u64 - 1 {
            assert_eq!(ob.append(Priority::Normal, b"after").unwrap().seq, 4, "the torn record's id is reused");
        }
    }
}

#[test]
fn a_flipped_bit_anywhere_in_the_last_record_cuts_only_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let reader = name("server");
    let mut before_last = 0;
    {
        let mut ob = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
        ob.add_consumer(&reader).unwrap();
        for i in 0..3 {
            if i == 2 {
                before_last = fs::metadata(&segments(dir.path(), Priority::High)[0]).unwrap().len();
            }
            ob.append(Priority::High, &payload(i)).unwrap();
        }
    }
    let seg = segments(dir.path(), Priority::High)[0].clone();
    let whole = fs::read(&seg).unwrap();
    for at in before_last as usize..whole.len() {
        let mut bad = whole.clone();
        bad[at] ^= 0x40;
        fs::write(&seg, &bad).unwrap();
        let mut ob = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
        assert_eq!(ob.recovery().truncated_bytes(), whole.len() as u64 - before_last, "byte {at}");
        assert_eq!(seqs(&read_all(&mut ob, &reader), Priority::High), vec![0, 1], "byte {at}");
    }
}

#[test]
fn corrupt_record_in_an_older_segment_keeps_what_is_before_and_counts_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let reader = name("server");
    {
        let mut ob = Outbox::open(dir.path(), config(300, 1 << 30)).unwrap();
        ob.add_consumer(&reader).unwrap();
        for i in 0..30 {
            ob.append(Priority::Low, &payload(i)).unwrap();
        }
    }
    let segs = segments(dir.path(), Priority::Low);
    assert!(segs.len() >= 4, "{} segments", segs.len());
    let first_of_second: u64 = segs[1].file_stem().unwrap().to_str().unwrap().parse().unwrap();
    assert!(first_of_second >= 3);
    // Damage the third record of the oldest segment: 20-byte header, then frames.
    let f = fs::OpenOptions::new().read(true).write(true).open(&segs[0]).unwrap();
    let mut offset = 20u64;
    for _ in 0..2 {
        let mut len = [0u8; 4];
        f.read_exact_at(&mut len, offset).unwrap();
        offset += 8 + u64::from(u32::from_le_bytes(len));
    }
    f.write_all_at(b"\xff", offset + 10).unwrap();
    drop(f);
    let size_before = fs::metadata(&segs[0]).unwrap().len();

    let mut ob = Outbox::open(dir.path(), config(300, 1 << 30)).unwrap();
    let report = ob.recovery().clone();
    assert_eq!(report.lost_records(), first_of_second - 2, "{report:?}");
    assert_eq!(report.truncated_bytes(), size_before - offset);
    assert!(matches!(&report.events[..], [RecoveryEvent::CorruptRecord { offset: o, .. }] if *o == offset));
    let got = seqs(&read_all(&mut ob, &reader), Priority::Low);
    let want: Vec<u64> = [0, 1].into_iter().chain(first_of_second..30).collect();
    assert_eq!(got, want, "records before the damage and every later segment are kept");
    assert_eq!(ob.append(Priority::Low, b"next").unwrap().seq, 30);
}

#[test]
fn a_foreign_file_where_a_segment_belongs_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    drop(Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap());
    let path = dir.path().join("normal/00000000000000000007.seg");
    let foreign = b"\x7fELF\x02\x01\x01\0 some other program's bytes".to_vec();
    fs::write(&path, &foreign).unwrap();
    let err = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap_err();
    assert!(matches!(err, OutboxError::ForeignFile { found, .. } if &found == b"\x7fELF"), "{err}");
    assert!(err.to_string().contains("not an outbox segment"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), foreign);
}

#[test]
fn garbage_and_newer_versions_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut ob = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
        ob.append(Priority::High, b"kept").unwrap();
    }
    let seg = segments(dir.path(), Priority::High)[0].clone();
    let good = fs::read(&seg).unwrap();

    let mut newer = good.clone();
    newer[4] = 9;
    fs::write(&seg, &newer).unwrap();
    let err = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap_err();
    assert!(matches!(err, OutboxError::UnsupportedVersion { found: 9, supported: 1, .. }), "{err}");

    let mut damaged = good.clone();
    damaged[10] ^= 1;
    fs::write(&seg, &damaged).unwrap();
    let err = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap_err();
    assert!(matches!(err, OutboxError::CorruptHeader { .. }), "{err}");

    fs::write(&seg, b"OP").unwrap();
    assert!(matches!(Outbox::open(dir.path(), config(1 << 20, 1 << 30)), Err(OutboxError::CorruptHeader { .. })));

    fs::write(&seg, &good).unwrap();
    let ob = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
    assert_eq!(ob.stats().per_priority[Priority::High.index()].records, 1, "nothing was deleted on the way");
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let first = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
    let err = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap_err();
    assert!(matches!(err, OutboxError::Locked { .. }), "{err}");
    drop(first);
    Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
}

#[test]
fn a_damaged_position_file_restarts_its_consumer_from_the_oldest_record() {
    let dir = tempfile::tempdir().unwrap();
    let c = name("mqtt");
    {
        let mut ob = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
        ob.add_consumer(&c).unwrap();
        for i in 0..5 {
            ob.append(Priority::Normal, &payload(i)).unwrap();
        }
        let got = ob.poll(&c, 3, usize::MAX).unwrap();
        ob.ack(&c, got[2].id).unwrap();
    }
    fs::write(dir.path().join("consumers/mqtt.pos"), b"\0\0\0").unwrap();
    let mut ob = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
    assert!(matches!(&ob.recovery().events[..], [RecoveryEvent::ConsumerReset { consumer, .. }] if consumer == "mqtt"));
    assert_eq!(seqs(&read_all(&mut ob, &c), Priority::Normal), vec![0, 1, 2, 3, 4], "redelivered, not skipped");
}

#[test]
fn a_clean_reopen_reports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut ob = Outbox::open(dir.path(), config(200, 1 << 30)).unwrap();
        for i in 0..20 {
            ob.append(Priority::ALL[(i % 3) as usize], &payload(i)).unwrap();
        }
    }
    let ob = Outbox::open(dir.path(), config(200, 1 << 30)).unwrap();
    assert!(ob.recovery().events.is_empty(), "{:?}", ob.recovery());
}
