//! Property test of the promise the outbox exists for: whatever the interleaving of appends,
//! polls, acks, crashes and restarts, no acknowledged record is lost or reordered, and every
//! consumer resumes exactly at its committed position.
//!
//! A crash is modelled as a power cut: the outbox is dropped without any flush, then every
//! segment file is cut to the length that had been fsynced (tracked by the outbox's confirmed
//! lengths, which only move after an fsync under `Always`/`GroupCommit`), and then, sometimes,
//! a torn write is left on a tail: random bytes, or a prefix of a real frame.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use proptest::prelude::*;

use crate::frame::encode_frame;
use crate::{ConsumerName, FsyncPolicy, Outbox, OutboxConfig, Priority, RecordId};

#[derive(Debug, Clone)]
enum Op {
    Append { priority: usize, len: usize },
    Batch { priorities: Vec<usize> },
    Poll { consumer: usize, max: usize },
    Ack { consumer: usize },
    Rewind { consumer: usize },
    Crash { torn: Option<Torn> },
    Reopen,
}

#[derive(Debug, Clone)]
enum Torn {
    Garbage { priority: usize, bytes: Vec<u8> },
    PartialFrame { priority: usize, len: usize, keep: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, 0..120usize).prop_map(|(priority, len)| Op::Append { priority, len }),
        2 => prop::collection::vec(0..3usize, 1..8).prop_map(|priorities| Op::Batch { priorities }),
        3 => (0..2usize, 1..12usize).prop_map(|(consumer, max)| Op::Poll { consumer, max }),
        3 => (0..2usize).prop_map(|consumer| Op::Ack { consumer }),
        1 => (0..2usize).prop_map(|consumer| Op::Rewind { consumer }),
        2 => prop::option::of(torn()).prop_map(|torn| Op::Crash { torn }),
        1 => Just(Op::Reopen),
    ]
}

fn torn() -> impl Strategy<Value = Torn> {
    prop_oneof![
        (0..3usize, prop::collection::vec(any::<u8>(), 1..40))
            .prop_map(|(priority, bytes)| Torn::Garbage { priority, bytes }),
        (0..3usize, 0..80usize, 0..200usize).prop_map(|(priority, len, keep)| Torn::PartialFrame {
            priority,
            len,
            keep
        }),
    ]
}

fn policy() -> impl Strategy<Value = FsyncPolicy> {
    prop_oneof![Just(FsyncPolicy::Always), Just(FsyncPolicy::GroupCommit { interval_ms: 0 }), Just(FsyncPolicy::Never)]
}

/// What the test knows must be true.
#[derive(Default)]
struct Model {
    /// Per priority: every record whose append returned `Ok`, in seq order.
    acked: [Vec<(u64, Vec<u8>)>; 3],
    /// Per consumer: committed positions.
    committed: [[u64; 3]; 2],
    /// Per consumer: the last record polled of each priority since the last ack.
    polled: [[Option<u64>; 3]; 2],
}

fn payload(seq_hint: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq_hint * 31 + i) as u8).collect()
}

fn names() -> [ConsumerName; 2] {
    [ConsumerName::new("server").unwrap(), ConsumerName::new("mqtt").unwrap()]
}

fn config(fsync: FsyncPolicy) -> OutboxConfig {
    OutboxConfig { fsync, segment_bytes: 300, max_total_bytes: 1 << 30 }
}

fn open(dir: &Path, fsync: FsyncPolicy) -> Outbox {
    let mut outbox = Outbox::open(dir, config(fsync)).unwrap();
    for n in names() {
        outbox.add_consumer(&n).unwrap();
    }
    outbox
}

/// Every consumer, read from its committed position, sees exactly the acknowledged records
/// after that position, in order.
fn check(outbox: &mut Outbox, model: &Model) -> Result<(), TestCaseError> {
    for (c, name) in names().iter().enumerate() {
        outbox.rewind(name).unwrap();
        let got = outbox.poll(name, usize::MAX, usize::MAX).unwrap();
        for p in Priority::ALL {
            let i = p.index();
            prop_assert_eq!(outbox.committed(name, p).unwrap(), model.committed[c][i]);
            let want: Vec<(u64, Vec<u8>)> =
                model.acked[i].iter().filter(|(s, _)| *s >= model.committed[c][i]).cloned().collect();
            let have: Vec<(u64, Vec<u8>)> =
                got.iter().filter(|r| r.id.priority == p).map(|r| (r.id.seq, r.payload.clone())).collect();
            prop_assert_eq!(have, want, "consumer {} priority {}", c, p);
        }
        outbox.rewind(name).unwrap();
    }
    Ok(())
}

fn crash(outbox: Outbox, torn: Option<Torn>, fsync: FsyncPolicy) {
    let durable = outbox.durable_lengths();
    let dir = outbox.dir().to_owned();
    drop(outbox);
    if fsync.is_durable() {
        for (path, len) in &durable {
            let f = OpenOptions::new().write(true).open(path).unwrap();
            assert!(f.metadata().unwrap().len() >= *len);
            f.set_len(*len).unwrap();
        }
    }
    let Some(torn) = torn else { return };
    let (priority, bytes) = match torn {
        Torn::Garbage { priority, bytes } => (priority, bytes),
        Torn::PartialFrame { priority, len, keep } => {
            let mut frame = Vec::new();
            let next = u64::MAX / 2; // any seq: the frame is cut short anyway
            encode_frame(next, &payload(keep, len), &mut frame);
            frame.truncate(keep.min(frame.len().saturating_sub(1)).max(1));
            (priority, frame)
        }
    };
    let pdir = dir.join(Priority::ALL[priority].dir_name());
    let mut segs: Vec<_> = fs::read_dir(&pdir).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort();
    if let Some(last) = segs.last() {
        OpenOptions::new().append(true).open(last).unwrap().write_all(&bytes).unwrap();
    }
}

fn run(fsync: FsyncPolicy, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let names = names();
    let mut model = Model::default();
    let mut outbox = Some(open(dir.path(), fsync));
    let mut counter = 0usize;
    for op in ops {
        let ob = outbox.as_mut().unwrap();
        match op {
            Op::Append { priority, len } => {
                counter += 1;
                let bytes = payload(counter, len);
                let id = ob.append(Priority::ALL[priority], &bytes).unwrap();
                prop_assert_eq!(id.seq, model.acked[priority].last().map_or(id.seq, |(s, _)| s + 1));
                model.acked[priority].push((id.seq, bytes));
            }
            Op::Batch { priorities } => {
                let items: Vec<(Priority, Vec<u8>)> = priorities
                    .iter()
                    .map(|&p| {
                        counter += 1;
                        (Priority::ALL[p], payload(counter, counter % 50))
                    })
                    .collect();
                let refs: Vec<(Priority, &[u8])> = items.iter().map(|(p, b)| (*p, b.as_slice())).collect();
                let ids = ob.append_batch(&refs).unwrap();
                for (id, (_, bytes)) in ids.into_iter().zip(items) {
                    model.acked[id.priority.index()].push((id.seq, bytes));
                }
            }
            Op::Poll { consumer, max } => {
                let got = ob.poll(&names[consumer], max, usize::MAX).unwrap();
                let mut prev: [Option<u64>; 3] = model.polled[consumer];
                for r in got {
                    let i = r.id.priority.index();
                    if let Some(p) = prev[i] {
                        prop_assert_eq!(r.id.seq, p + 1, "order within {}", r.id.priority);
                    }
                    prev[i] = Some(r.id.seq);
                }
                model.polled[consumer] = prev;
            }
            Op::Ack { consumer } => {
                let ids: Vec<RecordId> = Priority::ALL
                    .iter()
                    .filter_map(|&p| model.polled[consumer][p.index()].map(|seq| RecordId { priority: p, seq }))
                    .collect();
                ob.ack_all(&names[consumer], ids.iter().copied()).unwrap();
                for id in ids {
                    let c = &mut model.committed[consumer][id.priority.index()];
                    *c = (*c).max(id.seq + 1);
                }
                model.polled[consumer] = [None; 3];
            }
            Op::Rewind { consumer } => {
                ob.rewind(&names[consumer]).unwrap();
                model.polled[consumer] = [None; 3];
            }
            Op::Crash { torn } => {
                let ob = outbox.take().unwrap();
                crash(ob, torn, fsync);
                let mut reopened = open(dir.path(), fsync);
                check(&mut reopened, &model)?;
                outbox = Some(reopened);
                model.polled = [[None; 3]; 2];
            }
            Op::Reopen => {
                drop(outbox.take());
                let mut reopened = open(dir.path(), fsync);
                prop_assert!(reopened.recovery().is_clean(), "{:?}", reopened.recovery());
                check(&mut reopened, &model)?;
                outbox = Some(reopened);
                model.polled = [[None; 3]; 2];
            }
        }
    }
    let mut ob = outbox.take().unwrap();
    check(&mut ob, &model)?;
    // A sealed segment every consumer acked past is gone: the second-oldest segment of each
    // priority starts above the lowest committed position.
    drop(ob);
    for p in Priority::ALL {
        let min = model.committed.iter().map(|c| c[p.index()]).min().unwrap_or(0);
        let mut bases: Vec<u64> = fs::read_dir(dir.path().join(p.dir_name()))
            .unwrap()
            .filter_map(|e| crate::segment::parse_file_name(e.unwrap().file_name().to_str()?))
            .collect();
        bases.sort_unstable();
        if let Some(second) = bases.get(1) {
            prop_assert!(*second > min, "{p}: segment {} is wholly acked (min {min}) but kept", bases[0]);
        }
    }
    Ok(())
}

proptest! {
    // 48 cases keep the suite fast; PROPTEST_CASES=N runs more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(48),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_acknowledged_record_is_lost_or_reordered_across_crashes(
        fsync in policy(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        run(fsync, ops)?;
    }
}
