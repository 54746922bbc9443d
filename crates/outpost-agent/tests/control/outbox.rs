//! The control outbox on real files: restarts, the size cap, a torn tail, the legacy file.

use outpost_agent::control::outbox::{ControlOutbox, Queued, DEFAULT_MAX_BYTES, LEGACY_FILE, OUTBOX_DIR};
use outpost_proto::fleet::device::{CommandAck, CommandStatus, StateReport};
use std::path::Path;

fn report(seq: u64) -> StateReport {
    StateReport { seq, at_ms: 1_700_000_000_000 + seq as i64, ..StateReport::default() }
}

fn ack(n: i64) -> CommandAck {
    CommandAck { status: CommandStatus::Succeeded, result: serde_json::json!({ "ok": n }) }
}

/// Report sequence numbers and acked command ids of a batch, in delivery order.
fn describe(batch: &[Queued]) -> Vec<String> {
    batch
        .iter()
        .map(|q| match q {
            Queued::Report(_, r) => format!("r{}", r.seq),
            Queued::Ack(_, a) => format!("a{}", a.id),
            Queued::Unreadable(id) => format!("?{id}"),
        })
        .collect()
}

async fn open(dir: &Path, max_bytes: u64) -> (ControlOutbox, outpost_agent::control::outbox::Backlog) {
    ControlOutbox::open(dir, max_bytes).await.unwrap()
}

#[tokio::test]
async fn outbox_survives_a_restart_and_delivers_acks_first_then_reports_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (outbox, backlog) = open(dir.path(), DEFAULT_MAX_BYTES).await;
        assert_eq!(backlog, Default::default());
        for seq in 1..=7 {
            outbox.push_report(&report(seq)).await.unwrap();
        }
        outbox.push_ack(42, ack(1)).await.unwrap();
        // No close: the process dies here.
    }
    let (outbox, backlog) = open(dir.path(), DEFAULT_MAX_BYTES).await;
    assert_eq!(backlog.max_seq, Some(7));
    assert_eq!(backlog.acked_ids.into_iter().collect::<Vec<_>>(), [42]);
    let counts = outbox.counts().await.unwrap();
    assert_eq!((counts.reports, counts.acks, counts.dropped), (7, 1, 0));
    let first = outbox.next_batch(4).await.unwrap();
    assert_eq!(describe(&first), ["a42", "r1", "r2", "r3"]);
    // A failed send: the same items come back.
    outbox.retry_later().await.unwrap();
    let again = outbox.next_batch(4).await.unwrap();
    assert_eq!(describe(&again), describe(&first));
    outbox.delivered(again.iter().map(Queued::id).collect()).await.unwrap();
    outbox.close().await.unwrap();

    let (outbox, backlog) = open(dir.path(), DEFAULT_MAX_BYTES).await;
    assert!(backlog.acked_ids.is_empty(), "a delivered ack is forgotten");
    let rest = outbox.next_batch(100).await.unwrap();
    assert_eq!(describe(&rest), ["r4", "r5", "r6", "r7"], "delivered items stay delivered after a restart");
    outbox.delivered(rest.iter().map(Queued::id).collect()).await.unwrap();
    let counts = outbox.counts().await.unwrap();
    assert_eq!((counts.reports, counts.acks), (0, 0));
    outbox.close().await.unwrap();
    let (outbox, backlog) = open(dir.path(), DEFAULT_MAX_BYTES).await;
    assert_eq!(backlog.max_seq, None);
    assert!(outbox.next_batch(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn full_outbox_drops_the_oldest_reports_counts_them_and_keeps_the_acks() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 16 << 10;
    let (outbox, _) = open(dir.path(), cap).await;
    outbox.push_ack(7, ack(7)).await.unwrap();
    for seq in 1..=400 {
        outbox.push_report(&report(seq)).await.unwrap();
    }
    let counts = outbox.counts().await.unwrap();
    assert!(counts.dropped > 0 && counts.reports < 400, "{counts:?}");
    assert_eq!(counts.reports + counts.dropped, 400, "every report is either kept or counted as dropped");
    assert_eq!(counts.acks, 1, "acknowledgements outrank reports");
    outbox.close().await.unwrap();

    let (outbox, backlog) = open(dir.path(), cap).await;
    assert_eq!(backlog.max_seq, Some(400));
    let kept = describe(&outbox.next_batch(1000).await.unwrap());
    let expected: Vec<String> =
        std::iter::once("a7".to_string()).chain((401 - counts.reports..=400).map(|s| format!("r{s}"))).collect();
    assert_eq!(kept, expected, "the newest reports are kept, in order");
    let bytes: u64 = walk(&dir.path().join(OUTBOX_DIR)).iter().map(|p| p.metadata().unwrap().len()).sum();
    assert!(bytes <= cap + 4096, "segments hold {bytes} bytes against a cap of {cap}");
}

#[tokio::test]
async fn a_torn_tail_loses_only_the_record_being_written() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (outbox, _) = open(dir.path(), DEFAULT_MAX_BYTES).await;
        outbox.push_report(&report(1)).await.unwrap();
        outbox.push_report(&report(2)).await.unwrap();
        outbox.close().await.unwrap();
    }
    // A crash mid-append: a frame header promising more bytes than were written.
    let segment = walk(&dir.path().join(OUTBOX_DIR).join("normal"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, b'{', b'"']);
    std::fs::write(&segment, bytes).unwrap();
    let (outbox, backlog) = open(dir.path(), DEFAULT_MAX_BYTES).await;
    assert_eq!(backlog.max_seq, Some(2));
    outbox.push_report(&report(3)).await.unwrap();
    assert_eq!(describe(&outbox.next_batch(10).await.unwrap()), ["r1", "r2", "r3"]);
}

#[tokio::test]
async fn the_legacy_json_lines_file_is_moved_into_the_log_once() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        serde_json::json!({ "report": report(5) }).to_string(),
        serde_json::json!({ "ack": { "id": 9, "ack": ack(9) } }).to_string(),
        serde_json::json!({ "report": report(6) }).to_string(),
        // The torn last line of a crash mid-append.
        "{\"report\":{\"seq\":7,".to_string(),
    ];
    std::fs::write(dir.path().join(LEGACY_FILE), lines.join("\n")).unwrap();
    let (outbox, backlog) = open(dir.path(), DEFAULT_MAX_BYTES).await;
    assert_eq!(backlog.max_seq, Some(6));
    assert_eq!(backlog.acked_ids.into_iter().collect::<Vec<_>>(), [9]);
    assert!(!dir.path().join(LEGACY_FILE).exists(), "the legacy file is gone once moved");
    assert_eq!(describe(&outbox.next_batch(10).await.unwrap()), ["a9", "r5", "r6"]);
    outbox.close().await.unwrap();
    let (outbox, _) = open(dir.path(), DEFAULT_MAX_BYTES).await;
    assert_eq!(describe(&outbox.next_batch(10).await.unwrap()), ["a9", "r5", "r6"], "moved once, not twice");
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
