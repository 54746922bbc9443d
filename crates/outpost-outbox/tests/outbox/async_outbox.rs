//! The async handle: group commit under concurrency, consumers from async code, close.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::{name, read_all, seqs};
use outpost_outbox::{AsyncOutbox, FsyncPolicy, Outbox, OutboxConfig, OutboxError, Priority};

fn cfg(fsync: FsyncPolicy) -> OutboxConfig {
    OutboxConfig { fsync, segment_bytes: 64 * 1024, max_total_bytes: 1 << 30 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_all_durable_with_distinct_ordered_ids() {
    let dir = tempfile::tempdir().unwrap();
    let ob = AsyncOutbox::open(dir.path(), cfg(FsyncPolicy::GroupCommit { interval_ms: 2 })).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..100u64 {
        let ob = ob.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..20u64 {
                let p = Priority::ALL[((t + i) % 3) as usize];
                let id = ob.append(p, format!("{t}:{i}")).await.unwrap();
                ids.push((id, format!("{t}:{i}")));
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let ids = t.await.unwrap();
        // One task's appends of one priority keep their order.
        for p in Priority::ALL {
            let mine: Vec<u64> = ids.iter().filter(|(id, _)| id.priority == p).map(|(id, _)| id.seq).collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]));
        }
        all.extend(ids);
    }
    assert_eq!(all.iter().map(|(id, _)| *id).collect::<BTreeSet<_>>().len(), 2000);
    ob.close().await.unwrap();

    let mut sync = Outbox::open(dir.path(), cfg(FsyncPolicy::Always)).unwrap();
    assert!(sync.recovery().is_clean());
    let c = name("check");
    sync.add_consumer(&c).unwrap();
    let got = read_all(&mut sync, &c);
    assert_eq!(got.len(), 2000);
    for (id, payload) in &all {
        let r = got.iter().find(|r| r.id == *id).unwrap();
        assert_eq!(r.payload, payload.as_bytes());
    }
    for p in Priority::ALL {
        let s = seqs(&got, p);
        assert_eq!(s, (0..s.len() as u64).collect::<Vec<_>>(), "{p}: contiguous ids");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_task_waits_for_records_and_acks_them() {
    let dir = tempfile::tempdir().unwrap();
    let ob = AsyncOutbox::open(dir.path(), cfg(FsyncPolicy::default())).await.unwrap();
    let c = name("server");
    ob.add_consumer(&c).await.unwrap();
    let mut changed = ob.subscribe();
    let consumer = {
        let ob = ob.clone();
        let c = c.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < 50 {
                let batch = ob.poll(&c, 16, usize::MAX).await.unwrap();
                if batch.is_empty() {
                    tokio::time::timeout(Duration::from_secs(5), changed.changed()).await.unwrap().unwrap();
                    continue;
                }
                ob.ack_all(&c, batch.iter().map(|r| r.id).collect()).await.unwrap();
                seen.extend(batch.into_iter().map(|r| r.id.seq));
            }
            seen
        })
    };
    for i in 0..50u32 {
        ob.append(Priority::Normal, i.to_le_bytes().to_vec()).await.unwrap();
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let seen = tokio::time::timeout(Duration::from_secs(10), consumer).await.unwrap().unwrap();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
    let stats = ob.stats().await.unwrap();
    assert_eq!(stats.per_priority[Priority::Normal.index()].first_seq, 0, "one segment: nothing to delete yet");
    ob.close().await.unwrap();
    let sync = Outbox::open(dir.path(), cfg(FsyncPolicy::Always)).unwrap();
    assert_eq!(sync.committed(&c, Priority::Normal).unwrap(), 50);
}

#[tokio::test]
async fn errors_come_back_typed_and_close_releases_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let ob = AsyncOutbox::open(dir.path(), OutboxConfig { max_total_bytes: 4096, ..cfg(FsyncPolicy::Always) })
        .await
        .unwrap();
    let err = ob.append(Priority::High, vec![0; 5000]).await.unwrap_err();
    assert!(matches!(err, OutboxError::RecordTooLarge { .. }), "{err}");
    let err = AsyncOutbox::open(dir.path(), cfg(FsyncPolicy::Always)).await.unwrap_err();
    assert!(matches!(err, OutboxError::Locked { .. }), "{err}");
    let other = ob.clone();
    ob.close().await.unwrap();
    assert!(matches!(other.append(Priority::Low, b"x".to_vec()).await, Err(OutboxError::Closed)));
    AsyncOutbox::open(dir.path(), cfg(FsyncPolicy::Always)).await.unwrap();
}
