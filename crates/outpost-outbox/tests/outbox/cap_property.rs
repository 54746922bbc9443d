//! Property test of the drop policy: under any mix of appends, acks and restarts at a small
//! cap, appends never fail, the cap is never passed, a priority only loses records when every
//! lower priority is empty, and what a consumer reads of each priority is an unbroken run of
//! the newest records, with their bytes.

use crate::common::name;
use outpost_outbox::{FsyncPolicy, Outbox, OutboxConfig, Priority, RecordId};
use proptest::prelude::*;

const CAP: u64 = 2048;

#[derive(Debug, Clone)]
enum Op {
    Append { priority: usize, len: usize },
    PollAndAck { max: usize },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3usize, 0..300usize).prop_map(|(priority, len)| Op::Append { priority, len }),
        2 => (1..8usize).prop_map(|max| Op::PollAndAck { max }),
        1 => Just(Op::Reopen),
    ]
}

fn config() -> OutboxConfig {
    // `Never`: the fsync policy plays no part in the drop policy, and keeps the test fast.
    OutboxConfig { fsync: FsyncPolicy::Never, segment_bytes: 512, max_total_bytes: CAP }
}

fn payload(n: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (n as usize + i) as u8).collect()
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let c = name("server");
    let mut ob = Outbox::open(dir.path(), config()).unwrap();
    ob.add_consumer(&c).unwrap();
    // Per priority: every appended payload, by sequence number.
    let mut appended: [Vec<Vec<u8>>; 3] = Default::default();
    let mut n = 0u64;
    for op in ops {
        match op {
            Op::Append { priority, len } => {
                n += 1;
                let before = ob.stats();
                let bytes = payload(n, len);
                let id = ob.append(Priority::ALL[priority], &bytes).unwrap();
                prop_assert_eq!(id.seq, appended[priority].len() as u64);
                appended[priority].push(bytes);
                let after = ob.stats();
                prop_assert!(after.total_bytes <= CAP, "{} bytes", after.total_bytes);
                for p in Priority::ALL {
                    let grew = after.dropped.get(p).bytes > before.dropped.get(p).bytes;
                    for lower in Priority::ALL.iter().filter(|q| **q < p) {
                        prop_assert!(
                            !grew || after.per_priority[lower.index()].records == 0,
                            "{p} lost records while {lower} kept some"
                        );
                    }
                }
            }
            Op::PollAndAck { max } => {
                let got = ob.poll(&c, max, usize::MAX).unwrap();
                let ids: Vec<RecordId> = got.iter().map(|r| r.id).collect();
                ob.ack_all(&c, ids).unwrap();
            }
            Op::Reopen => {
                drop(ob);
                ob = Outbox::open(dir.path(), config()).unwrap();
            }
        }
    }
    ob.rewind(&c).unwrap();
    let got = ob.poll(&c, usize::MAX, usize::MAX).unwrap();
    for p in Priority::ALL {
        let mine: Vec<&outpost_outbox::Record> = got.iter().filter(|r| r.id.priority == p).collect();
        let total = appended[p.index()].len() as u64;
        if let Some(first) = mine.first() {
            let want: Vec<u64> = (first.id.seq..total).collect();
            let have: Vec<u64> = mine.iter().map(|r| r.id.seq).collect();
            prop_assert_eq!(have, want, "{}: an unbroken run up to the newest record", p);
        }
        for r in mine {
            prop_assert_eq!(&r.payload, &appended[p.index()][r.id.seq as usize]);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(32),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_cap_drops_lowest_priority_oldest_first_and_never_fails_an_append(ops in prop::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
