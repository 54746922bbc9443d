//! The size cap and its drop policy, and a real full disk.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{config, name, payload, read_all, seqs};
use outpost_outbox::{AsyncOutbox, FsyncPolicy, Outbox, OutboxConfig, OutboxError, Priority, RecordId};

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

/// A tmpfs of `size` mounted on a temp dir, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then_some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[test]
fn disk_full_is_a_typed_error_and_keeps_every_acknowledged_record() {
    let Some(disk) = SmallDisk::mount("256k") else {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root); the full-disk path is untested");
        return;
    };
    let filler: PathBuf = disk.path().join("filler");
    fs::write(&filler, vec![0u8; 64 * 1024]).unwrap();
    let dir = disk.path().join("outbox");
    let cfg = OutboxConfig { fsync: FsyncPolicy::Always, segment_bytes: 64 * 1024, max_total_bytes: 1 << 30 };
    let c = name("server");
    let mut acked = Vec::new();
    let err = {
        let mut ob = Outbox::open(&dir, cfg).unwrap();
        ob.add_consumer(&c).unwrap();
        let err = loop {
            let i = acked.len() as u64;
            match ob.append(Priority::Normal, &vec![i as u8; 1000]) {
                Ok(id) => acked.push(id),
                Err(e) => break e,
            }
            assert!(i < 1000, "the disk never filled");
        };
        // Still full: a clear error again, nothing half-written.
        let again = ob.append(Priority::Normal, &[1; 1000]).unwrap_err();
        assert!(again.is_disk_full(), "{again}");
        err
    };
    assert!(err.is_disk_full(), "{err}");
    assert!(err.to_string().contains("disk full"), "{err}");
    assert!(acked.len() > 50);

    let mut ob = Outbox::open(&dir, cfg).unwrap();
    assert!(ob.recovery().is_clean(), "the failed writes were cut back: {:?}", ob.recovery());
    let got = read_all(&mut ob, &c);
    assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), acked);
    assert!(got.iter().all(|r| r.payload == vec![r.id.seq as u8; 1000]));

    fs::remove_file(&filler).unwrap();
    let id = ob.append(Priority::Normal, &[2; 1000]).unwrap();
    assert_eq!(id.seq, acked.len() as u64, "appends work again once there is space");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_on_a_filling_disk_get_ok_only_for_records_that_are_on_disk() {
    let Some(disk) = SmallDisk::mount("192k") else {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root)");
        return;
    };
    let dir = disk.path().join("outbox");
    // Small segments: the disk fills during rotations as well as during group writes.
    let cfg = OutboxConfig {
        fsync: FsyncPolicy::GroupCommit { interval_ms: 1 },
        segment_bytes: 4096,
        max_total_bytes: 1 << 30,
    };
    let ob = AsyncOutbox::open(&dir, cfg).await.unwrap();
    // Added first: a position file cannot be written once the disk is full.
    let c = name("check");
    ob.add_consumer(&c).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let ob = ob.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = Vec::new();
            let mut full = 0;
            for i in 0..400u64 {
                let payload = format!("{t}-{i}-{}", "z".repeat(((t * 7 + i) % 300) as usize));
                match ob.append(Priority::ALL[((t + i) % 3) as usize], payload.clone()).await {
                    Ok(id) => ok.push((id, payload)),
                    Err(e) => {
                        assert!(e.is_disk_full(), "{e}");
                        full += 1;
                    }
                }
            }
            (ok, full)
        }));
    }
    let mut acked = Vec::new();
    let mut full = 0;
    for t in tasks {
        let (ok, f) = t.await.unwrap();
        acked.extend(ok);
        full += f;
    }
    ob.close().await.unwrap();
    assert!(full > 0, "the disk never filled");
    let mut sync = Outbox::open(&dir, OutboxConfig { fsync: FsyncPolicy::Always, ..cfg }).unwrap();
    let on_disk: std::collections::BTreeMap<RecordId, Vec<u8>> =
        read_all(&mut sync, &c).into_iter().map(|r| (r.id, r.payload)).collect();
    for (id, payload) in &acked {
        assert_eq!(on_disk.get(id).map(Vec::as_slice), Some(payload.as_bytes()), "{id} was acknowledged");
    }
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
