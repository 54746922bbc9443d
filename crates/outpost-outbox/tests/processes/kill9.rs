//! kill -9 with a real child process: every append the child saw acknowledged is on disk after
//! the kill, in order, with its bytes.
//!
//! The test binary runs itself again as the child, filtered with `--exact` to the
//! `kill9::kill9_child_entry` test, which does nothing unless `OUTBOX_KILL9_DIR` is set. The
//! child appends for ever and prints `ACK <priority> <seq> <payload>` after each acknowledged
//! append; the parent kills it with SIGKILL at a random moment (from start-up, or after its
//! first acknowledged append), reopens the outbox, and checks every printed line against it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{name, read_all};
use outpost_outbox::{AsyncOutbox, FsyncPolicy, Outbox, OutboxConfig, Priority};

fn cfg(fsync: FsyncPolicy) -> OutboxConfig {
    // Small segments so kills also land during rotations.
    OutboxConfig { fsync, segment_bytes: 16 * 1024, max_total_bytes: 1 << 30 }
}

fn policy(s: &str) -> FsyncPolicy {
    match s {
        "always" => FsyncPolicy::Always,
        _ => FsyncPolicy::GroupCommit { interval_ms: 1 },
    }
}

#[test]
fn kill9_child_entry() {
    let Ok(dir) = std::env::var("OUTBOX_KILL9_DIR") else { return };
    let mode = std::env::var("OUTBOX_KILL9_POLICY").unwrap_or_default();
    let trial = std::env::var("OUTBOX_KILL9_TRIAL").unwrap_or_default();
    if mode == "always" {
        // The synchronous core, one fsync per append.
        let mut ob = Outbox::open(&dir, cfg(policy(&mode))).unwrap();
        for i in 0u64.. {
            let p = Priority::ALL[(i % 3) as usize];
            let payload = format!("{trial}-{i}");
            let id = ob.append(p, payload.as_bytes()).unwrap();
            println!("ACK {} {} {payload}", p.index(), id.seq);
        }
    } else {
        // The async handle, many appends in flight sharing group fsyncs.
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let ob = AsyncOutbox::open(&dir, cfg(policy(&mode))).await.unwrap();
            let mut tasks = Vec::new();
            for t in 0..16u64 {
                let ob = ob.clone();
                let trial = trial.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0u64.. {
                        let p = Priority::ALL[((t + i) % 3) as usize];
                        let payload = format!("{trial}-{t}-{i}-{}", "p".repeat((i % 50) as usize));
                        let id = ob.append(p, payload.clone()).await.unwrap();
                        println!("ACK {} {} {payload}", p.index(), id.seq);
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
    }
}

/// The child's test name as libtest knows it, for `--exact`: its module path without the
/// crate, so `kill9::kill9_child_entry` in the `processes` test binary.
fn child_test_name() -> String {
    match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::kill9_child_entry"),
        None => "kill9_child_entry".to_owned(),
    }
}

/// A small xorshift, seeded from the clock: kill moments differ from run to run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn trials(mode: &str, count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = Rng(seed);
    // Every acknowledged record so far: (priority index, seq) -> payload.
    let mut acked: BTreeMap<(usize, u64), String> = BTreeMap::new();
    let exe = std::env::current_exe().unwrap();
    let child_test = child_test_name();
    for trial in 0..count {
        let mut child = Command::new(&exe)
            .args([child_test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env("OUTBOX_KILL9_DIR", dir.path())
            .env("OUTBOX_KILL9_POLICY", mode)
            .env("OUTBOX_KILL9_TRIAL", trial.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("ACK ") && line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        // Even trials: kill at a random moment from start-up (it may land during recovery).
        // Odd trials: a random moment after the first acknowledged append.
        if trial % 2 == 1 {
            lines.push(line_rx.recv_timeout(Duration::from_secs(20)).expect("the child never acknowledged an append"));
        }
        let wait = Duration::from_millis(rng.below(300));
        let start = Instant::now();
        while start.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        lines.extend(line_rx.iter());
        let before = acked.len();
        for line in &lines {
            let mut parts = line.splitn(4, ' ');
            let (_, p, seq, payload) = (parts.next(), parts.next(), parts.next(), parts.next());
            // The last line can be cut by the kill; only whole lines were acknowledged.
            let (Some(p), Some(seq), Some(payload)) = (p, seq, payload) else { continue };
            let (Ok(p), Ok(seq)) = (p.parse::<usize>(), seq.parse::<u64>()) else { continue };
            let old = acked.insert((p, seq), payload.to_owned());
            assert!(old.is_none(), "id {p}/{seq} acknowledged twice");
        }
        let mut ob = Outbox::open(dir.path(), cfg(FsyncPolicy::Always)).unwrap();
        let c = name("check");
        ob.add_consumer(&c).unwrap();
        let on_disk = read_all(&mut ob, &c);
        let by_id: BTreeMap<(usize, u64), &[u8]> =
            on_disk.iter().map(|r| ((r.id.priority.index(), r.id.seq), r.payload.as_slice())).collect();
        for ((p, seq), payload) in &acked {
            let got = by_id.get(&(*p, *seq)).unwrap_or_else(|| panic!("{mode} trial {trial}: acked {p}/{seq} is lost"));
            assert_eq!(*got, payload.as_bytes(), "{mode} trial {trial}: {p}/{seq} changed");
        }
        for p in Priority::ALL {
            let s: Vec<u64> = on_disk.iter().filter(|r| r.id.priority == p).map(|r| r.id.seq).collect();
            assert_eq!(s, (0..s.len() as u64).collect::<Vec<_>>(), "{mode} trial {trial}: {p} in order, no hole");
        }
        eprintln!(
            "{mode} trial {trial}: killed after {:?}, {} acked this run, {} on disk, recovery: {:?}",
            wait,
            acked.len() - before,
            on_disk.len(),
            ob.recovery().events
        );
    }
    assert!(!acked.is_empty(), "{mode}: the child never acknowledged a record");
}

/// Trials per policy: 4 in the suite, more with `OUTBOX_KILL9_TRIALS=N`.
fn trial_count() -> usize {
    std::env::var("OUTBOX_KILL9_TRIALS").ok().and_then(|n| n.parse().ok()).unwrap_or(4)
}

#[test]
fn kill9_never_loses_an_acknowledged_record_with_fsync_always() {
    trials("always", trial_count());
}

#[test]
fn kill9_never_loses_an_acknowledged_record_with_group_commit() {
    trials("group", trial_count());
}
