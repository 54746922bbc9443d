//! A real full disk: a small tmpfs fills under the outbox. It is mounted with `mount`, so only
//! as root; elsewhere the tests say they are skipped and pass, except under CI=true, where they
//! fail.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{name, read_all};
use outpost_outbox::{AsyncOutbox, FsyncPolicy, Outbox, OutboxConfig, Priority, RecordId};

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
        assert!(ok || std::env::var("CI").is_err(), "CI=true but a small tmpfs cannot be mounted: run as root");
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

/// The outbox itself fills the disk (its cap is above the free space): acks still commit, the
/// consumed segments are deleted, and appends work again without anything else freeing space.
#[test]
fn an_outbox_that_filled_the_disk_frees_it_by_acking() {
    fill_ack_and_append("256k", 16 * 1024);
}

#[test]
fn segments_larger_than_the_disk_still_free_it_by_acking() {
    // The export's default segments are 8 MiB; a whole 1 MiB disk would be one active segment,
    // which acks never delete, if segments were not sized by the disk.
    fill_ack_and_append("1m", 8 << 20);
}

/// Fills a tmpfs of `size` with an outbox of `segment_bytes` segments, fills the rest with a
/// file, acks everything, and appends again.
fn fill_ack_and_append(size: &str, segment_bytes: u64) {
    let Some(disk) = SmallDisk::mount(size) else {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root)");
        return;
    };
    let dir = disk.path().join("outbox");
    let cfg = OutboxConfig { fsync: FsyncPolicy::Always, segment_bytes, max_total_bytes: 1 << 30 };
    let c = name("sink");
    let mut ob = Outbox::open(&dir, cfg).unwrap();
    ob.add_consumer(&c).unwrap();
    let mut acked = 0u64;
    loop {
        match ob.append(Priority::Normal, &[3; 1000]) {
            Ok(_) => acked += 1,
            Err(e) => {
                assert!(e.is_disk_full(), "{e}");
                break;
            }
        }
        assert!(acked < 10_000, "the disk never filled");
    }
    // Every byte the temp file of a position would need is taken.
    let mut filler = fs::File::create(disk.path().join("filler")).unwrap();
    while std::io::Write::write_all(&mut filler, &[0; 512]).is_ok() {}
    drop(filler);
    let records = ob.poll(&c, usize::MAX, usize::MAX).unwrap();
    assert_eq!(records.len() as u64, acked);
    let before = ob.stats().per_priority[Priority::Normal.index()].segments;
    ob.ack_all(&c, records.iter().map(|r| r.id)).expect("an ack on a full disk");
    let after = ob.stats().per_priority[Priority::Normal.index()].segments;
    assert!(after < before, "consumed segments were deleted: {before} -> {after}");
    let id = ob.append(Priority::Normal, &[4; 1000]).expect("space again");
    assert_eq!(id.seq, acked);
    drop(ob);
    // The position written in place is the one a restart reads.
    let mut ob = Outbox::open(&dir, cfg).unwrap();
    let left = read_all(&mut ob, &c);
    assert_eq!(left.iter().map(|r| r.id.seq).collect::<Vec<_>>(), vec![acked]);
}
