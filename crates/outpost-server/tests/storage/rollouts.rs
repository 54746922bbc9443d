//! What the rollout engine reads about the fleet is never wider than its selector says: a
//! stored selector that no longer parses is an error (not "every device"), and a device whose
//! override cannot be read is left out rather than updated.

use crate::fixtures::*;
use outpost_server::db::Reader;
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
