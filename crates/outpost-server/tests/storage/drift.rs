//! Drift windows in storage: the latest per device and model, since when it alerts, and the
//! drift counts of the per-version windows.

use crate::fixtures::*;
use outpost_server::db::StatsCursor;

#[tokio::test]
async fn drift_windows_keep_the_latest_per_device_and_model_and_since_when_it_alerts() {
    use outpost_proto::fleet::drift::{DriftReport, DriftStatus};
    for (label, db) in databases().await {
        enroll_many(&db, 1, 2, [("site".to_string(), "berlin".to_string())].into()).await;
        let with = |seq: u64, status: DriftStatus, score: f64| {
            let mut r = report(seq, NOW + seq as i64, &[("bearing", "2")]);
            r.models[0].drift =
                Some(DriftReport { version: "2".into(), status, score, samples: 100, ..Default::default() });
            r.models[0].windows = vec![outpost_proto::fleet::quality::VersionWindow {
                version: "2".into(),
                requests: 100,
                drift_windows: 1,
                drift_alerts: u64::from(status == DriftStatus::Alert),
                drift_score: score,
                ..Default::default()
            }];
            r
        };
        db.write_reports(&[row("dev-00001", NOW + 1, with(1, DriftStatus::Ok, 0.01))]).await.unwrap();
        db.write_reports(&[row("dev-00001", NOW + 2, with(2, DriftStatus::Alert, 0.9))]).await.unwrap();
        db.write_reports(&[row("dev-00001", NOW + 3, with(3, DriftStatus::Alert, 1.2))]).await.unwrap();
        db.write_reports(&[row("dev-00002", NOW + 3, with(1, DriftStatus::Warn, 0.15))]).await.unwrap();
        let entries = db.drift_entries(Some("bearing"), NOW).await.unwrap_or_else(|e| panic!("[{label}] {e}"));
        assert_eq!(entries.len(), 2, "[{label}] one window per device and model");
        let first = &entries[0];
        assert_eq!(
            (first.device_id.as_str(), first.report.status, first.report.score),
            ("dev-00001", DriftStatus::Alert, 1.2)
        );
        assert_eq!(first.alert_since_ms, Some(NOW + 2), "[{label}] alerting since the first alert window");
        assert_eq!(first.labels.get("site").map(String::as_str), Some("berlin"), "[{label}]");
        assert_eq!(entries[1].alert_since_ms, None, "[{label}]");
        db.write_reports(&[row("dev-00001", NOW + 4, with(4, DriftStatus::Ok, 0.02))]).await.unwrap();
        let entries = db.drift_entries(None, NOW).await.unwrap();
        assert_eq!((entries[0].report.status, entries[0].alert_since_ms), (DriftStatus::Ok, None), "[{label}]");
        assert!(db.drift_entries(None, NOW + 10).await.unwrap().is_empty(), "[{label}] stale windows do not count");
        // The per-version windows carry the drift counts the rollout gates sum.
        let stats = db.version_stats_next(&mut StatsCursor::default(), "bearing", 0).await.unwrap();
        let alerts: u64 = stats.iter().map(|(_, s)| s.drift_alerts).sum();
        let windows: u64 = stats.iter().map(|(_, s)| s.drift_windows).sum();
        assert_eq!((windows, alerts), (5, 2), "[{label}]");
        assert_eq!(db.prune_drift(NOW + 10).await.unwrap(), 2, "[{label}]");
    }
}
