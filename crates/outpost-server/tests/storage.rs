//! Storage layer specification: every test runs against SQLite and PostgreSQL.

#[path = "common/db.rs"]
mod test_db;

#[path = "storage/drift.rs"]
mod drift;
#[path = "storage/enrollment.rs"]
mod enrollment;
#[path = "storage/fixtures.rs"]
mod fixtures;
#[path = "storage/rollouts.rs"]
mod rollouts;
#[path = "storage/selector_sql.rs"]
mod selector_sql;
#[path = "storage/tokens.rs"]
mod tokens;

use fixtures::*;
use outpost_proto::fleet::api::*;
use outpost_proto::fleet::device::*;
use outpost_proto::fleet::selector::{Labels, Selector};
use outpost_server::db::*;
use std::time::{Duration, Instant};

fn ids(page: &Page<Device>) -> Vec<String> {
    page.items.iter().map(|d| d.id.clone()).collect()
}

#[tokio::test]
async fn selector_terms_filter_devices_in_sql() {
    for (label, db) in databases().await {
        enroll_many(&db, 1, 1, labels(&[("site", "berlin"), ("line", "1"), ("gpu", "")])).await;
        enroll_many(&db, 2, 1, labels(&[("site", "berlin"), ("line", "3")])).await;
        enroll_many(&db, 3, 1, labels(&[("site", "paris"), ("retired", "yes")])).await;
        enroll_many(&db, 4, 1, Labels::new()).await;
        let cases = [
            ("site=berlin", vec!["dev-00001", "dev-00002"]),
            ("site!=berlin", vec!["dev-00003", "dev-00004"]),
            ("site in (paris|rome)", vec!["dev-00003"]),
            ("site notin (paris)", vec!["dev-00001", "dev-00002", "dev-00004"]),
            ("gpu", vec!["dev-00001"]),
            ("!retired", vec!["dev-00001", "dev-00002", "dev-00004"]),
            ("site=berlin,line!=3", vec!["dev-00001"]),
            ("", vec!["dev-00001", "dev-00002", "dev-00003", "dev-00004"]),
        ];
        for (text, expected) in cases {
            let sel: Selector = text.parse().unwrap();
            let page = db.list_devices(&sel, None, None, 100, NOW, TH).await.unwrap();
            assert_eq!(ids(&page), expected, "[{label}] selector {text:?}");
        }
        let page = db.list_devices(&"site=berlin".parse().unwrap(), None, None, 100, NOW, TH).await.unwrap();
        assert_eq!(page.items[0].labels, labels(&[("site", "berlin"), ("line", "1"), ("gpu", "")]), "[{label}]");
    }
}

#[tokio::test]
async fn status_filter_and_cursor_pagination_walk_the_fleet() {
    for (label, db) in databases().await {
        enroll_many(&db, 1, 7, labels(&[("site", "x")])).await;
        // 1-3 online, 4-5 stale, 6 offline (old), 7 never reported; then 7 is revoked.
        let seen =
            [(1, NOW), (2, NOW - 1_000), (3, NOW - 60_000), (4, NOW - 60_001), (5, NOW - 300_000), (6, NOW - 400_000)];
        let batch: Vec<ReportRow> =
            seen.iter().map(|(n, at)| row(&format!("dev-{n:05}"), *at, report(1, *at, &[]))).collect();
        db.write_reports(&batch).await.unwrap();
        db.revoke_device("dev-00007", "token:admin", NOW).await.unwrap();
        let all = Selector::everything();
        let by = |st| {
            let db = db.clone();
            let all = all.clone();
            async move { ids(&db.list_devices(&all, Some(st), None, 100, NOW, TH).await.unwrap()) }
        };
        assert_eq!(by(DeviceStatus::Online).await, ["dev-00001", "dev-00002", "dev-00003"], "[{label}]");
        assert_eq!(by(DeviceStatus::Stale).await, ["dev-00004", "dev-00005"], "[{label}]");
        assert_eq!(by(DeviceStatus::Offline).await, ["dev-00006"], "[{label}]");
        assert_eq!(by(DeviceStatus::Revoked).await, ["dev-00007"], "[{label}]");

        let mut cursor: Option<String> = None;
        let mut walked = Vec::new();
        loop {
            let page = db.list_devices(&all, None, cursor.as_deref(), 3, NOW, TH).await.unwrap();
            assert!(page.items.len() <= 3, "[{label}]");
            walked.extend(ids(&page));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(walked.len(), 7, "[{label}] {walked:?}");
        let online_page = db.list_devices(&all, Some(DeviceStatus::Online), None, 2, NOW, TH).await.unwrap();
        assert_eq!(online_page.next_cursor.as_deref(), Some("dev-00002"), "[{label}]");
        let rest = db.list_devices(&all, Some(DeviceStatus::Online), Some("dev-00002"), 2, NOW, TH).await.unwrap();
        assert_eq!((ids(&rest), rest.next_cursor), (vec!["dev-00003".to_string()], None), "[{label}]");
    }
}

#[tokio::test]
async fn a_batch_with_the_same_device_twice_keeps_the_newest_report() {
    for (label, url, db) in databases_with_urls().await {
        enroll_many(&db, 1, 2, Labels::new()).await;
        let mut newer = report(8, NOW - 1_000, &[("defect", "3")]);
        newer.health = Health::Degraded;
        newer.hardware = Some(HardwareProfile { arch: "aarch64".into(), cores: 8, ..Default::default() });
        let batch = vec![
            row("dev-00001", NOW - 10, newer.clone()),
            row("dev-00001", NOW - 5, report(7, NOW - 2_000, &[("defect", "2")])),
            row("dev-00002", NOW - 20, report(1, NOW - 20, &[])),
            row("dev-99999", NOW, report(1, NOW, &[])),
        ];
        db.write_reports(&batch).await.unwrap_or_else(|e| panic!("[{label}] {e}"));
        let dev = db.get_device("dev-00001", NOW, TH).await.unwrap().unwrap();
        assert_eq!(dev.health, Health::Degraded, "[{label}]");
        assert_eq!(dev.applied_etag, "etag-8", "[{label}]");
        assert_eq!(dev.models[0].version, "3", "[{label}]");
        assert_eq!(dev.agent_version, "0.2.0", "[{label}]");
        assert_eq!(dev.hardware.arch, "aarch64", "[{label}] hardware in a report updates the device");
        assert_eq!((dev.status, dev.last_seen_ms), (DeviceStatus::Online, Some(NOW - 10)), "[{label}]");
        assert_eq!(raw_count(&url, "SELECT COUNT(*) FROM device_status").await, 2, "[{label}] unknown device dropped");
    }
}

#[tokio::test]
async fn device_models_are_rewritten_only_when_the_model_set_changes() {
    for (label, url, db) in databases_with_urls().await {
        enroll_many(&db, 1, 1, Labels::new()).await;
        let all = Selector::everything();
        db.write_reports(&[row("dev-00001", NOW, report(1, NOW, &[("defect", "2")]))]).await.unwrap();
        let counts = db.fleet_summary(&all, NOW, TH).await.unwrap().by_model_version;
        assert_eq!(counts.get("defect@2"), Some(&1), "[{label}]");
        // Tamper behind the Db's back: an unchanged model set must not touch the table again.
        assert_eq!(raw(&url, "DELETE FROM device_models").await, 1, "[{label}]");
        db.write_reports(&[row("dev-00001", NOW + 1, report(2, NOW + 1, &[("defect", "2")]))]).await.unwrap();
        assert_eq!(raw_count(&url, "SELECT COUNT(*) FROM device_models").await, 0, "[{label}] rewritten needlessly");
        db.write_reports(&[row("dev-00001", NOW + 2, report(3, NOW + 2, &[("defect", "3"), ("ocr", "1")]))])
            .await
            .unwrap();
        let counts = db.fleet_summary(&all, NOW, TH).await.unwrap().by_model_version;
        assert_eq!(counts, [("defect@3".to_string(), 1), ("ocr@1".to_string(), 1)].into(), "[{label}]");
    }
}

#[tokio::test]
async fn history_keeps_one_report_per_interval_and_prunes_old_ones() {
    for (label, db) in databases().await {
        enroll_many(&db, 1, 1, Labels::new()).await;
        db.set_history_interval_ms(60_000);
        let at = |i: u64| NOW + i as i64 * 20_000;
        let batch: Vec<ReportRow> = (0..10).map(|i| row("dev-00001", at(i), report(i, at(i), &[]))).collect();
        db.write_reports(&batch).await.unwrap();
        // Reports at 0, 20, ..., 180 s: stored at 0, 60, 120, 180 s.
        db.write_reports(&[row("dev-00001", at(10), report(10, at(10), &[]))]).await.unwrap();
        db.write_reports(&[row("dev-00001", at(12), report(11, at(12), &[]))]).await.unwrap();
        let history = db.device_history("dev-00001", 0, 100).await.unwrap();
        let seqs: Vec<u64> = history.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [0, 3, 6, 9, 11], "[{label}]");
        assert_eq!(db.device_history("dev-00001", NOW + 100_000, 100).await.unwrap().len(), 3, "[{label}]");
        assert_eq!(db.prune_history(NOW + 100_000).await.unwrap(), 2, "[{label}]");
        assert_eq!(db.device_history("dev-00001", 0, 100).await.unwrap().len(), 3, "[{label}]");
    }
}

#[tokio::test]
async fn rejects_history_kept_forever_by_future_dated_reports() {
    for (label, db) in databases().await {
        enroll_many(&db, 1, 1, Labels::new()).await;
        // Dated 2058 by the device, received now: retention counts from the receipt.
        let far = 2_800_000_000_000;
        db.write_reports(&[row("dev-00001", NOW, report(1, far, &[]))]).await.unwrap();
        assert_eq!(db.device_history("dev-00001", 0, 100).await.unwrap().len(), 1, "[{label}]");
        assert_eq!(db.prune_history(NOW + 1).await.unwrap(), 1, "[{label}]");
        assert!(db.device_history("dev-00001", 0, 100).await.unwrap().is_empty(), "[{label}]");
    }
}

#[tokio::test]
async fn rejects_nonce_replayed_through_another_connection_pool() {
    for (label, url, db) in databases_with_urls().await {
        // A second pool on the same database stands for a restarted server or another replica.
        let other = Db::connect(&url, 2).await.unwrap();
        let nonce = |ms: i64, key: &str| NonceRow { signed_ms: ms, nonce_key: key.to_string() };
        let first = [nonce(NOW, "aa"), nonce(NOW, "bb")];
        assert_eq!(db.record_nonces(&first).await.unwrap().len(), 2, "[{label}]");
        let fresh = other.record_nonces(&[nonce(NOW, "aa"), nonce(NOW + 1, "aa")]).await.unwrap();
        assert_eq!(fresh.into_iter().collect::<Vec<_>>(), [nonce(NOW + 1, "aa")], "[{label}] replay not seen");
        assert_eq!(other.prune_nonces(NOW + 1).await.unwrap(), 2, "[{label}]");
        assert_eq!(db.record_nonces(&[nonce(NOW + 1, "aa")]).await.unwrap().len(), 0, "[{label}]");
        other.close().await;
    }
}

#[tokio::test]
async fn rejects_history_flooded_before_the_upgrade_staying_forever() {
    for (label, url) in test_db::test_databases().await {
        // A database as the previous release left it, holding one flooded row dated 2058 and
        // one honest row.
        sqlx::any::install_default_drivers();
        let open = if label == "sqlite" { format!("{url}?mode=rwc") } else { url.clone() };
        let pool = sqlx::AnyPool::connect(&open).await.unwrap();
        let migrator = if label == "sqlite" {
            sqlx::migrate!("./migrations/sqlite")
        } else {
            sqlx::migrate!("./migrations/postgres")
        };
        migrator.run_to(2, &pool).await.unwrap();
        pool.close().await;
        let device = "INSERT INTO devices (id, public_key, name, agent_version, hardware, enrolled_ms, \
                      enrollment_token) VALUES ('d', 'k', 'n', 'v', '{}', 0, 't')";
        raw(&url, device).await;
        let reports = "INSERT INTO device_reports (device_id, at_ms, report) VALUES ('d', 2800000000000, '{}'), \
                       ('d', 1000, '{}')";
        raw(&url, reports).await;

        let wall = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let before = wall();
        let db = Db::connect(&url, 2).await.unwrap_or_else(|e| panic!("[{label}] migrate: {e}"));
        let now = wall();
        // Clamped to the migration's clock (SQLite's is in whole seconds).
        let latest = raw_count(&url, "SELECT MAX(received_ms) FROM device_reports").await;
        assert!((before - 1_000..=now).contains(&latest), "[{label}] {latest} not in [{before}, {now}]");
        assert_eq!(raw_count(&url, "SELECT MIN(received_ms) FROM device_reports").await, 1000, "[{label}]");
        // One retention period after the upgrade, both are gone.
        assert_eq!(db.prune_history(now + 60_000).await.unwrap(), 2, "[{label}]");
        db.close().await;
    }
}

#[tokio::test]
async fn a_batch_of_thousands_of_reports_is_written_in_one_call() {
    for (label, db) in databases().await {
        enroll_many(&db, 1, 1_200, labels(&[("site", "big")])).await;
        let batch: Vec<ReportRow> = (1..=1_200u32)
            .flat_map(|n| {
                (0..2u64).map(move |s| row(&format!("dev-{n:05}"), NOW, report(s, NOW + s as i64, &[("m", "1")])))
            })
            .collect();
        let started = Instant::now();
        db.write_reports(&batch).await.unwrap_or_else(|e| panic!("[{label}] {e}"));
        eprintln!("[{label}] wrote {} reports in {:?}", batch.len(), started.elapsed());
        let steady: Vec<ReportRow> =
            (1..=1_200u32).map(|n| row(&format!("dev-{n:05}"), NOW, report(5, NOW + 5, &[("m", "1")]))).collect();
        let started = Instant::now();
        db.write_reports(&steady).await.unwrap_or_else(|e| panic!("[{label}] {e}"));
        eprintln!("[{label}] steady state: wrote {} heartbeats in {:?}", steady.len(), started.elapsed());
        let dev = db.get_device("dev-01200", NOW, TH).await.unwrap().unwrap();
        assert_eq!(dev.applied_etag, "etag-5", "[{label}]");
        let summary = db.fleet_summary(&"site=big".parse().unwrap(), NOW, TH).await.unwrap();
        assert_eq!(summary.by_status.get("online"), Some(&1_200), "[{label}]");
        assert_eq!(summary.by_model_version.get("m@1"), Some(&1_200), "[{label}]");
    }
}

#[tokio::test]
async fn fleet_summary_counts_by_status_health_version_and_model() {
    for (label, db) in databases().await {
        enroll_many(&db, 1, 3, labels(&[("site", "a")])).await;
        enroll_many(&db, 4, 1, labels(&[("site", "b")])).await;
        let mut failing = report(1, NOW, &[("defect", "3")]);
        failing.health = Health::Failing;
        db.write_reports(&[
            row("dev-00001", NOW, report(1, NOW, &[("defect", "3")])),
            row("dev-00002", NOW - 100_000, failing),
            row("dev-00004", NOW, report(1, NOW, &[("defect", "2")])),
        ])
        .await
        .unwrap();
        let s = db.fleet_summary(&"site=a".parse().unwrap(), NOW, TH).await.unwrap();
        assert_eq!(s.devices, 3, "[{label}]");
        assert_eq!(s.by_status, [("online".into(), 1), ("stale".into(), 1), ("offline".into(), 1)].into(), "[{label}]");
        assert_eq!(s.by_health, [("ok".into(), 1), ("failing".into(), 1), ("unknown".into(), 1)].into(), "[{label}]");
        assert_eq!(s.by_agent_version, [("0.2.0".into(), 2), ("0.1.0".into(), 1)].into(), "[{label}]");
        assert_eq!(s.by_model_version, [("defect@3".into(), 2)].into(), "[{label}]");
        let everything = db.fleet_summary(&Selector::everything(), NOW, TH).await.unwrap();
        assert_eq!(everything.devices, 4, "[{label}]");
    }
}

#[tokio::test]
async fn commands_go_pending_delivered_acked_and_a_second_ack_is_refused() {
    for (label, db) in databases().await {
        enroll_many(&db, 1, 1, Labels::new()).await;
        let create = CreateCommand { kind: CommandKind::CollectLogs, args: serde_json::json!({"lines": 50}) };
        assert_eq!(db.create_command("dev-missing", &create, "token:ops", NOW).await.unwrap(), None, "[{label}]");
        let c1 = db.create_command("dev-00001", &create, "token:ops", NOW).await.unwrap().unwrap();
        let c2 = db.create_command("dev-00001", &create, "token:ops", NOW + 1).await.unwrap().unwrap();
        assert_eq!(c1.status, CommandStatus::Pending, "[{label}]");
        let open: Vec<i64> = db.open_commands("dev-00001").await.unwrap().iter().map(|c| c.id).collect();
        assert_eq!(open, [c1.id, c2.id], "[{label}]");
        db.mark_delivered(&[c1.id], NOW + 2).await.unwrap();
        let listed = db.list_commands("dev-00001", None, 1).await.unwrap();
        assert_eq!(listed.items[0].id, c2.id, "[{label}] newest first");
        let older = db.list_commands("dev-00001", listed.next_cursor.as_deref(), 1).await.unwrap();
        assert_eq!((older.items[0].id, older.items[0].status), (c1.id, CommandStatus::Delivered), "[{label}]");

        let ack = CommandAck { status: CommandStatus::Succeeded, result: serde_json::json!({"lines": ["x"]}) };
        let bad = CommandAck { status: CommandStatus::Delivered, result: serde_json::Value::Null };
        assert!(matches!(db.ack_command("dev-00001", c1.id, &bad, NOW).await, Err(DbError::Invalid(_))), "[{label}]");
        let AckOutcome::Acked(done) = db.ack_command("dev-00001", c1.id, &ack, NOW + 3).await.unwrap() else {
            panic!("[{label}] first ack must be recorded");
        };
        assert_eq!((done.status, done.acked_ms), (CommandStatus::Succeeded, Some(NOW + 3)), "[{label}]");
        let again = db.ack_command("dev-00001", c1.id, &ack, NOW + 4).await.unwrap();
        assert!(matches!(again, AckOutcome::AlreadyAcked(ref c) if c.acked_ms == Some(NOW + 3)), "[{label}] {again:?}");
        assert_eq!(db.ack_command("dev-other", c1.id, &ack, NOW).await.unwrap(), AckOutcome::NotFound, "[{label}]");
        assert_eq!(db.expire_commands(NOW + 10).await.unwrap(), 1, "[{label}] only c2 was still open");
        assert!(db.open_commands("dev-00001").await.unwrap().is_empty(), "[{label}]");
    }
}

#[tokio::test]
async fn labels_can_be_set_and_removed_and_bad_labels_are_invalid() {
    for (label, db) in databases().await {
        enroll_many(&db, 1, 1, labels(&[("site", "berlin"), ("line", "1")])).await;
        let change = LabelChange { set: labels(&[("line", "2"), ("tier", "prod")]), remove: vec!["site".into()] };
        let after = db.change_labels("dev-00001", &change, "token:ops", NOW).await.unwrap();
        assert_eq!(after, Some(labels(&[("line", "2"), ("tier", "prod")])), "[{label}]");
        let missing = db.change_labels("dev-missing", &change, "token:ops", NOW).await.unwrap();
        assert_eq!(missing, None, "[{label}]");
        let bad = LabelChange { set: labels(&[("bad key", "x")]), remove: vec![] };
        let err = db.change_labels("dev-00001", &bad, "token:ops", NOW).await.unwrap_err();
        assert!(matches!(err, DbError::Invalid(_)), "[{label}] {err:?}");
        assert_eq!(db.device_labels("dev-missing").await.unwrap(), None, "[{label}]");
    }
}

#[tokio::test]
async fn overrides_are_stored_replaced_and_cleared() {
    for (label, db) in databases().await {
        enroll_many(&db, 1, 1, Labels::new()).await;
        let ov = DeviceOverride {
            models: [("defect".parse().unwrap(), "4".to_string())].into(),
            config: [("threads".to_string(), serde_json::json!(2))].into(),
        };
        assert!(db.set_override("dev-00001", Some(&ov), "token:ops", NOW).await.unwrap(), "[{label}]");
        assert_eq!(db.get_override("dev-00001").await.unwrap(), Some(ov.clone()), "[{label}]");
        let replaced =
            DeviceOverride { models: [("defect".parse().unwrap(), String::new())].into(), ..Default::default() };
        db.set_override("dev-00001", Some(&replaced), "token:ops", NOW).await.unwrap();
        assert_eq!(db.get_override("dev-00001").await.unwrap(), Some(replaced), "[{label}]");
        assert!(db.set_override("dev-00001", None, "token:ops", NOW).await.unwrap(), "[{label}]");
        assert_eq!(db.get_override("dev-00001").await.unwrap(), None, "[{label}]");
        assert!(!db.set_override("dev-missing", Some(&ov), "token:ops", NOW).await.unwrap(), "[{label}]");
    }
}

#[tokio::test]
async fn models_are_published_once_and_assignments_need_a_registered_version() {
    for (label, db) in databases().await {
        let publish = |v: &str| PublishModel {
            name: "defect".parse().unwrap(),
            version: v.parse().unwrap(),
            metadata: serde_json::json!({"task": "cls"}),
        };
        let m = db.publish_model(&publish("2"), "token:ops", NOW).await.unwrap();
        assert_eq!((m.published_by.as_str(), m.metadata["task"].as_str()), ("token:ops", Some("cls")), "[{label}]");
        db.publish_model(&publish("3"), "token:ops", NOW + 1).await.unwrap();
        let dup = db.publish_model(&publish("3"), "token:ops", NOW + 2).await.unwrap_err();
        assert!(matches!(dup, DbError::Conflict(_)), "[{label}] {dup:?}");
        let first = db.list_models(None, 1).await.unwrap();
        assert_eq!(first.next_cursor.as_deref(), Some("defect@2"), "[{label}]");
        let second = db.list_models(first.next_cursor.as_deref(), 1).await.unwrap();
        assert_eq!((second.items[0].version.as_str(), second.next_cursor), ("3", None), "[{label}]");
        assert_eq!(db.model_versions("defect").await.unwrap().len(), 2, "[{label}]");

        let assign = |sel: &str, v: &str| CreateAssignment {
            selector: sel.into(),
            model: "defect".parse().unwrap(),
            version: v.parse().unwrap(),
        };
        let missing = db.create_assignment(&assign("site=a", "9"), "token:ops", NOW).await.unwrap_err();
        assert!(matches!(missing, DbError::NotFound(_)), "[{label}] {missing:?}");
        let invalid = db.create_assignment(&assign("site in berlin", "2"), "token:ops", NOW).await.unwrap_err();
        assert!(matches!(invalid, DbError::Invalid(_)), "[{label}] {invalid:?}");
        let a1 = db.create_assignment(&assign("site=a", "2"), "token:ops", NOW).await.unwrap();
        let a2 = db.create_assignment(&assign("", "3"), "token:ops", NOW).await.unwrap();
        let listed: Vec<i64> = db.list_assignments().await.unwrap().iter().map(|a| a.id).collect();
        assert_eq!(listed, [a1.id, a2.id], "[{label}] oldest first");
        assert!(db.delete_assignment(a1.id, "token:ops", NOW).await.unwrap(), "[{label}]");
        assert!(!db.delete_assignment(a1.id, "token:ops", NOW).await.unwrap(), "[{label}]");
        assert_eq!(db.list_assignments().await.unwrap(), [a2], "[{label}]");
    }
}

#[tokio::test]
async fn api_tokens_bootstrap_once_authenticate_by_secret_and_revoke() {
    for (label, db) in databases().await {
        let boot = db.bootstrap_admin_token(NOW).await.unwrap().expect("first start makes an admin token");
        assert_eq!((boot.name.as_str(), boot.role), ("bootstrap-admin", Role::Admin), "[{label}]");
        assert_eq!(db.bootstrap_admin_token(NOW).await.unwrap(), None, "[{label}]");
        let req = CreateApiToken { name: "ci".into(), role: Role::Viewer, expires_in_s: Some(60) };
        let t = db.create_api_token(&req, "token:bootstrap-admin", NOW).await.unwrap();
        let secret = t.secret.clone().expect("secret on create");
        assert!(secret.starts_with("opt_") && t.id.starts_with("at-"), "[{label}] {secret} {}", t.id);
        assert_eq!(t.expires_ms, Some(NOW + 60_000), "[{label}]");
        let found = db.api_token_by_secret(&secret).await.unwrap().expect("found by secret");
        assert_eq!(found, ApiToken { secret: None, ..t.clone() }, "[{label}]");
        assert_eq!(db.api_token_by_secret("opt_wrong").await.unwrap(), None, "[{label}]");
        assert_eq!(db.revoke_api_token(&t.id, "token:bootstrap-admin", NOW).await.unwrap(), RevokeOutcome::Revoked);
        assert!(db.api_token_by_secret(&secret).await.unwrap().unwrap().revoked, "[{label}]");
        let page = db.list_api_tokens(None, 1).await.unwrap();
        let rest = db.list_api_tokens(page.next_cursor.as_deref(), 1).await.unwrap();
        assert_eq!((page.items.len(), rest.items.len(), rest.next_cursor), (1, 1, None), "[{label}]");
    }
}

#[tokio::test]
async fn every_mutation_writes_an_audit_entry_with_its_actor() {
    for (label, db) in databases().await {
        let t = token(&db, 1, 3600, Labels::new()).await;
        db.enroll(&new_device(t.secret.as_deref().unwrap(), 1), NOW).await.unwrap();
        db.revoke_enrollment_token(&t.id, "token:ops", NOW).await.unwrap();
        let api = CreateApiToken { name: "x".into(), role: Role::Operator, expires_in_s: None };
        let at = db.create_api_token(&api, "token:admin", NOW).await.unwrap();
        db.revoke_api_token(&at.id, "token:admin", NOW).await.unwrap();
        let change = LabelChange { set: labels(&[("a", "b")]), remove: vec![] };
        db.change_labels("dev-00001", &change, "token:ops", NOW).await.unwrap();
        db.set_override("dev-00001", Some(&DeviceOverride::default()), "token:ops", NOW).await.unwrap();
        let pm = PublishModel {
            name: "m".parse().unwrap(),
            version: "1".parse().unwrap(),
            metadata: serde_json::Value::Null,
        };
        db.publish_model(&pm, "token:ops", NOW).await.unwrap();
        let ca =
            CreateAssignment { selector: "a=b".into(), model: "m".parse().unwrap(), version: "1".parse().unwrap() };
        let a = db.create_assignment(&ca, "token:ops", NOW).await.unwrap();
        db.delete_assignment(a.id, "token:ops", NOW).await.unwrap();
        let cc = CreateCommand { kind: CommandKind::RestartAgent, args: serde_json::json!({}) };
        let c = db.create_command("dev-00001", &cc, "token:ops", NOW).await.unwrap().unwrap();
        let ack = CommandAck { status: CommandStatus::Failed, result: serde_json::json!("nope") };
        db.ack_command("dev-00001", c.id, &ack, NOW).await.unwrap();
        db.revoke_device("dev-00001", "token:admin", NOW).await.unwrap();
        db.write_reports(&[row("dev-00001", NOW, report(1, NOW, &[]))]).await.unwrap();

        let mut entries = Vec::new();
        let mut cursor = None;
        loop {
            let page = db.list_audit(cursor.as_deref(), 5).await.unwrap();
            entries.extend(page.items);
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        let got: Vec<(String, String)> = entries.iter().rev().map(|e| (e.action.clone(), e.actor.clone())).collect();
        let expected = [
            ("enrollment_token.create", "token:ops"),
            ("device.enroll", "device:dev-00001"),
            ("enrollment_token.revoke", "token:ops"),
            ("api_token.create", "token:admin"),
            ("api_token.revoke", "token:admin"),
            ("device.label", "token:ops"),
            ("device.override", "token:ops"),
            ("model.publish", "token:ops"),
            ("assignment.create", "token:ops"),
            ("assignment.delete", "token:ops"),
            ("command.create", "token:ops"),
            ("command.ack", "device:dev-00001"),
            ("device.revoke", "token:admin"),
        ];
        let expected: Vec<(String, String)> = expected.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(got, expected, "[{label}]");
        assert_eq!(entries.last().unwrap().target, t.id, "[{label}]");
    }
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_quickly() {
    let started = Instant::now();
    let err = Db::connect("postgres://postgres@127.0.0.1:1/test", 2).await.err().expect("must fail");
    assert!(matches!(err, DbError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let err = Db::connect("mysql://localhost/x", 2).await.err().expect("must fail");
    assert!(matches!(err, DbError::Invalid(_)), "{err:?}");
}

#[tokio::test]
async fn a_closed_pool_is_unavailable_and_duplicates_are_conflicts() {
    for (label, db) in databases().await {
        db.ping().await.unwrap_or_else(|e| panic!("[{label}] {e}"));
        let pm =
            PublishModel { name: "m".parse().unwrap(), version: "1".parse().unwrap(), metadata: serde_json::json!({}) };
        db.publish_model(&pm, "token:ops", NOW).await.unwrap();
        assert!(matches!(db.publish_model(&pm, "token:ops", NOW).await, Err(DbError::Conflict(_))), "[{label}]");
        assert_eq!(db.kind(), if label == "sqlite" { DbKind::Sqlite } else { DbKind::Postgres });
        db.close().await;
        let err = db.ping().await.unwrap_err();
        assert!(matches!(err, DbError::Unavailable(_)), "[{label}] {err:?}");
    }
}

#[tokio::test]
async fn reconnecting_to_a_migrated_database_keeps_its_data() {
    for (label, url, db) in databases_with_urls().await {
        enroll_many(&db, 1, 1, Labels::new()).await;
        db.close().await;
        let again = Db::connect(&url, 2).await.unwrap_or_else(|e| panic!("[{label}] {e}"));
        assert!(again.get_device("dev-00001", NOW, TH).await.unwrap().is_some(), "[{label}]");
    }
}
