//! Named consumers: priority order, committed positions, at-least-once, segment deletion.

use crate::common::{config, name, payload, read_all, segments, seqs};
use outpost_outbox::{Outbox, OutboxError, Priority, RecordId};

#[test]
fn consumer_restart_redelivers_everything_after_its_last_ack() {
    let dir = tempfile::tempdir().unwrap();
    let c = name("server");
    {
        let mut ob = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
        ob.add_consumer(&c).unwrap();
        for i in 0..10 {
            ob.append(Priority::Normal, &payload(i)).unwrap();
        }
        let batch = ob.poll(&c, 4, usize::MAX).unwrap();
        ob.ack(&c, batch[3].id).unwrap();
        // Read further without acking, then "crash".
        assert_eq!(seqs(&ob.poll(&c, 3, usize::MAX).unwrap(), Priority::Normal), vec![4, 5, 6]);
    }
    let mut ob = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
    assert_eq!(ob.committed(&c, Priority::Normal).unwrap(), 4);
    let again = ob.poll(&c, usize::MAX, usize::MAX).unwrap();
    assert_eq!(seqs(&again, Priority::Normal), (4..10).collect::<Vec<_>>(), "4, 5, 6 are delivered again");
    assert!(again.iter().all(|r| r.payload == payload(r.id.seq)));
}

#[test]
fn rewind_redelivers_what_was_read_but_not_acked() {
    let dir = tempfile::tempdir().unwrap();
    let c = name("server");
    let mut ob = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
    ob.add_consumer(&c).unwrap();
    for i in 0..4 {
        ob.append(Priority::Low, &payload(i)).unwrap();
    }
    ob.poll(&c, 2, usize::MAX).unwrap();
    ob.ack(&c, RecordId { priority: Priority::Low, seq: 0 }).unwrap();
    assert_eq!(seqs(&ob.poll(&c, 10, usize::MAX).unwrap(), Priority::Low), vec![2, 3]);
    ob.rewind(&c).unwrap();
    assert_eq!(seqs(&ob.poll(&c, 10, usize::MAX).unwrap(), Priority::Low), vec![1, 2, 3]);
}

#[test]
fn poll_serves_high_before_normal_before_low_and_keeps_order_within_each() {
    let dir = tempfile::tempdir().unwrap();
    let c = name("server");
    let mut ob = Outbox::open(dir.path(), config(256, 1 << 30)).unwrap();
    ob.add_consumer(&c).unwrap();
    for i in 0..30u64 {
        ob.append(Priority::ALL[(i * 7 % 3) as usize], &payload(i)).unwrap();
    }
    let got = ob.poll(&c, usize::MAX, usize::MAX).unwrap();
    let order: Vec<Priority> = got.iter().map(|r| r.id.priority).collect();
    let mut sorted = order.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(order, sorted, "High, then Normal, then Low");
    for p in Priority::ALL {
        assert_eq!(seqs(&got, p), (0..10).collect::<Vec<_>>(), "{p}");
    }
}

#[test]
fn poll_stops_at_max_bytes_but_always_returns_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let c = name("server");
    let mut ob = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
    ob.add_consumer(&c).unwrap();
    ob.append(Priority::Normal, &[1; 1000]).unwrap();
    ob.append(Priority::Normal, &[2; 10]).unwrap();
    ob.append(Priority::Normal, &[3; 10]).unwrap();
    assert_eq!(ob.poll(&c, 10, 100).unwrap().len(), 1, "one record, though larger than max_bytes");
    assert_eq!(ob.poll(&c, 10, 15).unwrap().len(), 1);
    assert_eq!(ob.poll(&c, 10, 15).unwrap().len(), 1);
    assert!(ob.poll(&c, 10, 15).unwrap().is_empty());
}

#[test]
fn segments_are_deleted_once_every_consumer_acked_past_them() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mqtt) = (name("server"), name("mqtt"));
    let mut ob = Outbox::open(dir.path(), config(200, 1 << 30)).unwrap();
    ob.add_consumer(&server).unwrap();
    ob.add_consumer(&mqtt).unwrap();
    let mut last = None;
    for i in 0..40 {
        last = Some(ob.append(Priority::Normal, &payload(i)).unwrap());
    }
    let last = last.unwrap();
    let before = segments(dir.path(), Priority::Normal).len();
    assert!(before > 5);
    ob.ack(&server, last).unwrap();
    assert_eq!(segments(dir.path(), Priority::Normal).len(), before, "mqtt still needs them");
    ob.ack(&mqtt, RecordId { seq: 20, ..last }).unwrap();
    let middle = segments(dir.path(), Priority::Normal).len();
    assert!(middle < before && middle > 1, "{middle} of {before}");
    assert!(seqs(&read_all(&mut ob, &mqtt), Priority::Normal).starts_with(&[21]));
    ob.ack(&mqtt, last).unwrap();
    assert_eq!(segments(dir.path(), Priority::Normal).len(), 1, "only the active segment is left");
    drop(ob);
    let mut ob = Outbox::open(dir.path(), config(200, 1 << 30)).unwrap();
    assert_eq!(ob.append(Priority::Normal, b"next").unwrap().seq, 40, "ids keep growing after deletion");
}

#[test]
fn removing_the_slowest_consumer_frees_what_only_it_needed() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mqtt) = (name("server"), name("mqtt"));
    let mut ob = Outbox::open(dir.path(), config(200, 1 << 30)).unwrap();
    ob.add_consumer(&server).unwrap();
    ob.add_consumer(&mqtt).unwrap();
    let mut last = None;
    for i in 0..20 {
        last = Some(ob.append(Priority::High, &payload(i)).unwrap());
    }
    ob.ack(&server, last.unwrap()).unwrap();
    assert!(segments(dir.path(), Priority::High).len() > 1);
    assert!(ob.remove_consumer(&mqtt).unwrap());
    assert_eq!(segments(dir.path(), Priority::High).len(), 1);
    assert_eq!(ob.consumers(), vec![server]);
}

#[test]
fn a_consumer_added_later_starts_at_the_oldest_record_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
    for i in 0..3 {
        ob.append(Priority::Low, &payload(i)).unwrap();
    }
    let late = name("late");
    assert!(ob.add_consumer(&late).unwrap());
    assert!(!ob.add_consumer(&late).unwrap(), "adding twice changes nothing");
    assert_eq!(seqs(&read_all(&mut ob, &late), Priority::Low), vec![0, 1, 2]);
}

#[test]
fn acks_of_unknown_records_and_consumers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = name("server");
    let mut ob = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
    ob.add_consumer(&c).unwrap();
    let id = ob.append(Priority::High, b"one").unwrap();
    let err = ob.ack(&c, RecordId { seq: 5, ..id }).unwrap_err();
    assert!(matches!(err, OutboxError::AckBeyondEnd { end: 1, .. }), "{err}");
    let err = ob.poll(&name("nobody"), 1, 1).unwrap_err();
    assert!(matches!(err, OutboxError::UnknownConsumer(_)), "{err}");
    ob.ack(&c, id).unwrap();
    ob.ack(&c, id).unwrap();
    assert_eq!(ob.committed(&c, Priority::High).unwrap(), 1);
}

#[test]
fn a_byte_limit_never_lets_a_lower_priority_pass_a_higher_one() {
    let dir = tempfile::tempdir().unwrap();
    let c = name("server");
    let mut ob = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
    ob.add_consumer(&c).unwrap();
    ob.append(Priority::High, &[1; 60]).unwrap();
    ob.append(Priority::High, &[2; 60]).unwrap();
    ob.append(Priority::Low, &[3; 5]).unwrap();
    let first = ob.poll(&c, 10, 100).unwrap();
    assert_eq!(first.iter().map(|r| r.id.priority).collect::<Vec<_>>(), vec![Priority::High]);
    let second = ob.poll(&c, 10, 100).unwrap();
    assert_eq!(second.iter().map(|r| r.id.priority).collect::<Vec<_>>(), vec![Priority::High, Priority::Low]);
}

#[test]
fn pending_counts_what_a_consumer_has_not_acked_and_forgets_what_the_cap_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (name("server"), name("mqtt"));
    let mut ob = Outbox::open(dir.path(), config(256, 1 << 30)).unwrap();
    ob.add_consumer(&a).unwrap();
    for i in 0..6 {
        ob.append(Priority::Normal, &payload(i)).unwrap();
    }
    ob.append(Priority::High, &payload(9)).unwrap();
    assert_eq!(ob.pending(&a).unwrap(), [0, 6, 1]);
    // Reading is not acking.
    let batch = ob.poll(&a, 3, usize::MAX).unwrap();
    assert_eq!(ob.pending(&a).unwrap(), [0, 6, 1]);
    ob.ack_all(&a, batch.iter().map(|r| r.id)).unwrap();
    assert_eq!(ob.pending(&a).unwrap(), [0, 4, 0]);
    // A consumer added later starts at the oldest record kept.
    ob.add_consumer(&b).unwrap();
    assert_eq!(ob.pending(&b).unwrap()[Priority::Normal.index()], ob.stats().per_priority[1].records);
    assert!(matches!(ob.pending(&name("nobody")), Err(OutboxError::UnknownConsumer(_))));
}

#[test]
fn poll_priority_reads_one_priority_past_a_backlog_of_higher_ones() {
    let dir = tempfile::tempdir().unwrap();
    let c = name("server");
    let mut ob = Outbox::open(dir.path(), config(1 << 20, 1 << 30)).unwrap();
    ob.add_consumer(&c).unwrap();
    for i in 0..5 {
        ob.append(Priority::High, &payload(i)).unwrap();
        ob.append(Priority::Low, &payload(100 + i)).unwrap();
    }
    let low = ob.poll_priority(&c, Priority::Low, 3, usize::MAX).unwrap();
    assert_eq!(seqs(&low, Priority::Low), vec![0, 1, 2]);
    assert!(low.iter().all(|r| r.id.priority == Priority::Low));
    // Its own cursor moved; the other priorities' did not.
    assert_eq!(seqs(&ob.poll(&c, 2, usize::MAX).unwrap(), Priority::High), vec![0, 1]);
    assert_eq!(seqs(&ob.poll_priority(&c, Priority::Low, 10, usize::MAX).unwrap(), Priority::Low), vec![3, 4]);
    assert!(ob.poll_priority(&c, Priority::Normal, 10, usize::MAX).unwrap().is_empty());
}
