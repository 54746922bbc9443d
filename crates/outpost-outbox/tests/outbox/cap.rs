//! The size cap and its drop policy. The real full disk is in `processes/full_disk.rs`.

use crate::common::{config, name, payload, read_all, seqs};
use outpost_outbox::{FsyncPolicy, Outbox, OutboxConfig, OutboxError, Priority, RecordId};

const SEGMENT: u64 = 512;
const CAP: u64 = 4096;

fn fixed(i: u64) -> Vec<u8> {
    vec![i as u8; 100]
}

#[test]
fn cap_drops_low_before_normal_before_high_oldest_first_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path(), config(SEGMENT, CAP)).unwrap();
    let mut appended = [0u64; 3];
    for (p, n) in [(Priority::Low, 20), (Priority::Normal, 10), (Priority::High, 30)] {
        for i in 0..n {
            ob.append(p, &fixed(i)).unwrap();
            appended[p.index()] += 1;
            let stats = ob.stats();
            assert!(stats.total_bytes <= CAP, "{} bytes", stats.total_bytes);
            let [low, normal, high] = stats.per_priority;
            let d = stats.dropped;
            assert!(d.get(Priority::Normal).records == 0 || low.records == 0, "Normal dropped while Low kept");
            assert!(d.get(Priority::High).records == 0 || normal.records == 0, "High dropped while Normal kept");
            let _ = high;
        }
    }
    let stats = ob.stats();
    for p in Priority::ALL {
        let kept = stats.per_priority[p.index()].records;
        assert_eq!(kept + stats.dropped.get(p).records, appended[p.index()], "{p}: every record is kept or counted");
    }
    assert_eq!(stats.dropped.get(Priority::Low).records, 20);
    assert!(stats.dropped.get(Priority::Normal).records > 0);
    assert_eq!(stats.dropped.get(Priority::High).records, 0);
    assert!(stats.dropped.get(Priority::Low).bytes >= 20 * 108);

    // Oldest first: what is left of Normal is its newest records.
    let c = name("late");
    ob.add_consumer(&c).unwrap();
    let normal = seqs(&read_all(&mut ob, &c), Priority::Normal);
    assert_eq!(normal, (10 - normal.len() as u64..10).collect::<Vec<_>>());

    let counters = ob.dropped();
    drop(ob);
    let ob = Outbox::open(dir.path(), config(SEGMENT, CAP)).unwrap();
    assert_eq!(ob.dropped(), counters, "the counters survive a restart");
}

#[test]
fn records_a_consumer_already_acked_are_not_counted_as_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let c = name("server");
    let mut ob = Outbox::open(dir.path(), config(SEGMENT, CAP)).unwrap();
    ob.add_consumer(&c).unwrap();
    for i in 0..4 {
        ob.append(Priority::Low, &fixed(i)).unwrap();
    }
    ob.ack(&c, RecordId { priority: Priority::Low, seq: 1 }).unwrap();
    for i in 0..40 {
        ob.append(Priority::High, &fixed(i)).unwrap();
    }
    let d = ob.dropped().get(Priority::Low);
    assert_eq!(d.records, 2, "records 0 and 1 were acked: only 2 and 3 were lost");
    assert!(d.bytes > 0);
    let got = read_all(&mut ob, &c);
    assert!(seqs(&got, Priority::Low).is_empty());
    let high = seqs(&got, Priority::High);
    assert_eq!(high.last(), Some(&39));
    assert!(high.windows(2).all(|w| w[1] == w[0] + 1), "no hole in what a consumer gets");
}

#[test]
fn appends_never_fail_at_the_cap_only_a_record_larger_than_the_cap_does() {
    let dir = tempfile::tempdir().unwrap();
    // `Never`: the fsync policy plays no part here and 1,000 fsyncs would take seconds.
    let cfg = OutboxConfig { fsync: FsyncPolicy::Never, ..config(SEGMENT, CAP) };
    let mut ob = Outbox::open(dir.path(), cfg).unwrap();
    for i in 0..300u64 {
        ob.append(Priority::ALL[(i % 3) as usize], &payload(i)).unwrap();
        assert!(ob.stats().total_bytes <= CAP);
    }
    let err = ob.append(Priority::High, &vec![0; CAP as usize]).unwrap_err();
    assert!(matches!(err, OutboxError::RecordTooLarge { len, cap } if len == CAP && cap == CAP), "{err}");
    assert!(err.to_string().contains("cannot fit"), "{err}");
    ob.append(Priority::High, &vec![0; 3000]).unwrap();
    assert!(ob.stats().total_bytes <= CAP);
}

#[test]
fn a_low_record_never_evicts_normal_ones_it_is_dropped_on_arrival_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path(), config(SEGMENT, CAP)).unwrap();
    let mut i = 0;
    while ob.stats().dropped.total_records() == 0 {
        ob.append(Priority::Normal, &fixed(i)).unwrap();
        i += 1;
    }
    let normal_before = ob.stats().per_priority[Priority::Normal.index()];
    let dropped_before = ob.dropped().get(Priority::Normal);
    // The outbox is within a segment of its cap, all Normal: a large Low record cannot fit
    // without evicting Normal records, and must not.
    assert!(CAP - ob.stats().total_bytes < 1500);
    let big = vec![9u8; 1500];
    let first = ob.append(Priority::Low, &big).unwrap();
    let second = ob.append(Priority::Low, &big).unwrap();
    assert_eq!((first.seq, second.seq), (0, 1), "ids are still given");
    let stats = ob.stats();
    assert_eq!(stats.per_priority[Priority::Low.index()].records, 0);
    assert_eq!(stats.dropped.get(Priority::Low).records, 2);
    assert_eq!(stats.dropped.get(Priority::Low).bytes, 2 * 1508);
    assert_eq!(stats.dropped.get(Priority::Normal), dropped_before, "no Normal record was evicted for Low ones");
    assert_eq!(stats.per_priority[Priority::Normal.index()].records, normal_before.records);
    drop(ob);
    let mut ob = Outbox::open(dir.path(), config(SEGMENT, CAP)).unwrap();
    assert!(ob.recovery().is_clean(), "{:?}", ob.recovery());
    let c = name("late");
    ob.add_consumer(&c).unwrap();
    let third = ob.append(Priority::Low, &fixed(2)).unwrap();
    assert!(third.seq >= 2, "the ids of dropped records are not given again after a restart");
}
