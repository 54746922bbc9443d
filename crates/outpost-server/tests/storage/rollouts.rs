//! What the rollout engine reads about the fleet is never wider than its selector says: a
//! stored selector that no longer parses is an error (not "every device"), and a device whose
//! override cannot be read is left out rather than updated. Its gate windows are read once
//! each, also when PostgreSQL commits them out of id order.

use crate::fixtures::*;
use outpost_server::db::{Reader, StatsCursor};
use outpost_server::rollout::engine::RolloutRecord;

fn record(selector: &str) -> RolloutRecord {
    let spec = serde_json::json!({"model": "detector", "version": "2", "selector": selector});
    RolloutRecord {
        id: 1,
        spec: serde_json::from_value(spec).unwrap(),
        state: outpost_proto::fleet::rollout::RolloutState::Running,
        wave: 0,
        waves: Vec::new(),
        reason: String::new(),
        created_ms: NOW,
    }
}

#[tokio::test]
async fn a_corrupt_selector_is_an_error_and_an_unreadable_override_skips_the_device() {
    for (label, url, db) in databases_with_urls().await {
        let berlin = token(&db, 3, 3600, labels(&[("site", "berlin")])).await.secret.unwrap();
        let paris = token(&db, 1, 3600, labels(&[("site", "paris")])).await.secret.unwrap();
        for n in 1..=3 {
            db.enroll(&new_device(&berlin, n), NOW).await.unwrap();
        }
        db.enroll(&new_device(&paris, 4), NOW).await.unwrap();

        let fleet = db.rollout_fleet(&record("site=berlin"), NOW, TH, Reader::Engine).await.unwrap();
        let mut ids: Vec<&String> = fleet.keys().collect();
        ids.sort();
        assert_eq!(ids, ["dev-00001", "dev-00002", "dev-00003"], "[{label}]");
        assert!(fleet.values().all(|v| v.matches && !v.pinned), "[{label}] {fleet:?}");

        let err = db
            .rollout_fleet(&record("=berlin"), NOW, TH, Reader::Engine)
            .await
            .expect_err("a corrupt selector must not match");
        assert!(err.to_string().contains("selector"), "[{label}] {err}");

        let garbage =
            "INSERT INTO device_overrides (device_id, body, updated_ms) VALUES ('dev-00002', '{\"models\": 7', 0)";
        assert_eq!(raw(&url, garbage).await, 1, "[{label}]");
        let fleet = db.rollout_fleet(&record("site=berlin"), NOW, TH, Reader::Engine).await.unwrap();
        assert!(fleet["dev-00002"].pinned, "[{label}] an unreadable override reads as pinned");
        assert!(!fleet["dev-00001"].pinned && !fleet["dev-00003"].pinned, "[{label}]");
    }
}

/// The stamp of one device in `device_changes`, if it has one.
async fn stamp(db: &outpost_server::db::Db, id: &str) -> Option<i64> {
    db.device_changes_since(i64::MIN).await.unwrap().into_iter().find(|(d, _)| d == id).map(|(_, s)| s)
}

#[tokio::test]
async fn every_change_the_engine_reads_stamps_the_device_and_heartbeats_alone_do_not() {
    use outpost_proto::fleet::api::{DeviceOverride, LabelChange};
    for (label, _url, db) in databases_with_urls().await {
        // Stamps come from the database's clock, whatever time the writer passes.
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        enroll_many(&db, 1, 3, labels(&[("site", "berlin")])).await;
        enroll_many(&db, 4, 1, labels(&[("site", "paris")])).await;
        let all = db.device_changes_since(i64::MIN).await.unwrap();
        assert_eq!(all.len(), 4, "[{label}] enrolment stamps: {all:?}");
        let newest = all.iter().map(|(_, s)| *s).max().unwrap();
        assert!(all.iter().all(|(_, s)| *s >= before - 1_000), "[{label}] the database's clock: {all:?} vs {before}");
        assert!(db.device_changes_since(newest + 1).await.unwrap().is_empty(), "[{label}]");
        let at_newest = all.iter().filter(|(_, s)| *s == newest).count();
        assert_eq!(db.device_changes_since(newest).await.unwrap().len(), at_newest, "[{label}] at or after");

        // A new model set stamps; the same set reported again does not; a changed one does.
        let beat = |at: i64, version: &str| {
            vec![row("dev-00001", at, report((at - NOW) as u64, at, &[("detector", version)]))]
        };
        let enrolled = stamp(&db, "dev-00001").await.unwrap();
        db.write_reports(&beat(NOW + 1_000, "1")).await.unwrap();
        let first = stamp(&db, "dev-00001").await.unwrap();
        assert!(first > enrolled, "[{label}] {first} after {enrolled}");
        db.write_reports(&beat(NOW + 2_000, "1")).await.unwrap();
        assert_eq!(stamp(&db, "dev-00001").await, Some(first), "[{label}] a heartbeat that changes nothing");
        db.write_reports(&beat(NOW + 3_000, "2")).await.unwrap();
        assert!(stamp(&db, "dev-00001").await.unwrap() > first, "[{label}]");

        // Labels, overrides (twice in a row: the stamp moves each time) and revocation.
        let change = LabelChange { set: labels(&[("site", "berlin")]), remove: Vec::new() };
        let old = stamp(&db, "dev-00004").await.unwrap();
        db.change_labels("dev-00004", &change, "op", NOW + 4_000).await.unwrap().unwrap();
        let relabelled = stamp(&db, "dev-00004").await.unwrap();
        assert!(relabelled > old, "[{label}]");
        let ov: DeviceOverride = serde_json::from_value(serde_json::json!({"models": {"detector": "1"}})).unwrap();
        let old = stamp(&db, "dev-00002").await.unwrap();
        db.set_override("dev-00002", Some(&ov), "op", NOW + 5_000).await.unwrap();
        let set = stamp(&db, "dev-00002").await.unwrap();
        db.set_override("dev-00002", None, "op", NOW + 5_000).await.unwrap();
        let cleared = stamp(&db, "dev-00002").await.unwrap();
        assert!(old < set && set < cleared, "[{label}] never the same stamp twice: {old} {set} {cleared}");
        let old = stamp(&db, "dev-00003").await.unwrap();
        db.revoke_device("dev-00003", "op", NOW + 6_000).await.unwrap();
        assert!(stamp(&db, "dev-00003").await.unwrap() > old, "[{label}]");

        // Reading only the stamped devices: the relabelled one now matches, the revoked one is
        // gone, and each comes with the stamp it had when read.
        let only: Vec<String> = ["dev-00003", "dev-00004"].map(String::from).to_vec();
        let read = db.read_fleet(&record("site=berlin"), NOW + 7_000, TH, Reader::Engine, Some(&only)).await.unwrap();
        assert_eq!(read.views.keys().collect::<Vec<_>>(), ["dev-00004"], "[{label}]");
        assert!(read.views["dev-00004"].matches, "[{label}]");
        assert_eq!(read.stamps.get("dev-00004"), Some(&relabelled), "[{label}]");
        let whole = db.read_fleet(&record("site=berlin"), NOW + 7_000, TH, Reader::Engine, None).await.unwrap();
        let mut ids: Vec<&String> = whole.views.keys().collect();
        ids.sort();
        assert_eq!(ids, ["dev-00001", "dev-00002", "dev-00004"], "[{label}]");
        assert_eq!(whole.views["dev-00001"].observed.serving.as_ref().map(|s| s.0.as_str()), Some("2"), "[{label}]");

        // Heartbeats: who went quiet, and when a given device was last heard from.
        assert_eq!(db.quiet_devices(NOW + 3_500).await.unwrap(), [("dev-00001".to_string(), NOW + 3_000)], "[{label}]");
        assert!(db.quiet_devices(NOW + 3_000).await.unwrap().is_empty(), "[{label}]");
        let seen = db.last_seen_of(&["dev-00001".into(), "dev-00002".into()]).await.unwrap();
        assert_eq!(
            seen,
            [("dev-00001".to_string(), NOW + 3_000)],
            "[{label}] a device that never reported has no time"
        );
    }
}

/// One window row of `model`, as a report batch writes it.
fn window_sql(model: &str, device: &str, requests: i64) -> String {
    format!(
        "INSERT INTO version_stats (device_id, model, version, shadow, received_ms, requests, errors, latency, \
         agreement) VALUES ('{device}', '{model}', '2', 0, {NOW}, {requests}, 0, '[]', 0)"
    )
}

#[tokio::test]
async fn windows_committed_out_of_id_order_are_each_read_once() {
    use sqlx::Connection;
    for (label, url, db) in databases_with_urls().await {
        let mut cursor = StatsCursor::default();
        let read = |rows: Vec<(String, outpost_server::rollout::gates::StatRow)>| {
            rows.into_iter().map(|(d, r)| (d, r.requests, r.id)).collect::<Vec<_>>()
        };
        raw(&url, &window_sql("m", "first", 1)).await;
        let first = db.version_stats_next(&mut cursor, "m", NOW - 1000).await.unwrap();
        assert_eq!(read(first), vec![("first".to_string(), 1, 1)], "[{label}]");
        if label != "postgres" {
            // SQLite's writers take turns: ids commit in order, nothing to race.
            continue;
        }
        // A batch takes the next id and stays open while a later one commits.
        sqlx::any::install_default_drivers();
        let mut slow = <sqlx::AnyConnection as Connection>::connect(&url).await.unwrap();
        let mut open = slow.begin().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(window_sql("m", "slow", 2))).execute(&mut *open).await.unwrap();
        raw(&url, &window_sql("m", "fast", 3)).await;
        raw(&url, &window_sql("other", "fast", 9)).await;
        let fast = db.version_stats_next(&mut cursor, "m", NOW - 1000).await.unwrap();
        assert_eq!(read(fast), vec![("fast".to_string(), 3, 2)], "[{label}]");
        assert!(!cursor.in_flight().is_empty(), "[{label}] the open batch was seen in progress");
        open.commit().await.unwrap();
        // `id > last` alone never returned it: its id is below the fast one's.
        let late = db.version_stats_next(&mut cursor, "m", NOW - 1000).await.unwrap();
        assert_eq!(read(late), vec![("slow".to_string(), 2, 3)], "[{label}] numbered in the order returned");
        let again = db.version_stats_next(&mut cursor, "m", NOW - 1000).await.unwrap();
        assert!(again.is_empty(), "[{label}] each row once: {:?}", read(again));
        raw(&url, &window_sql("m", "next", 4)).await;
        let next = db.version_stats_next(&mut cursor, "m", NOW - 1000).await.unwrap();
        assert_eq!(read(next), vec![("next".to_string(), 4, 4)], "[{label}]");
    }
}
