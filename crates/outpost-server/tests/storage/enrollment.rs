//! Enrollment: token labels, one use per device, refusals, and racing for the last use.

use crate::fixtures::*;
use outpost_proto::fleet::api::*;
use outpost_proto::fleet::selector::{Labels, Selector};
use outpost_server::db::*;

#[tokio::test]
async fn enrollment_applies_token_labels_and_consumes_one_use() {
    for (label, db) in databases().await {
        let t = token(&db, 2, 3600, labels(&[("site", "berlin"), ("line", "3")])).await;
        let secret = t.secret.clone().expect("secret on create");
        assert!(secret.starts_with("oet_") && secret.len() == 4 + 43, "[{label}] {secret}");
        assert!(t.id.starts_with("et-"), "[{label}] {}", t.id);
        let out = db.enroll(&new_device(&secret, 1), NOW).await.unwrap();
        let expected = labels(&[("site", "berlin"), ("line", "3")]);
        assert_eq!(
            out,
            EnrollOutcome::Enrolled { device_id: "dev-00001".into(), labels: expected.clone() },
            "[{label}]"
        );
        assert_eq!(db.device_labels("dev-00001").await.unwrap(), Some(expected), "[{label}]");
        let key = db.device_key("dev-00001").await.unwrap().expect("key row");
        assert_eq!(key, DeviceKeyRow { public_key: new_device(&secret, 1).public_key, revoked: false }, "[{label}]");
        let listed = db.list_enrollment_tokens(None, 10).await.unwrap();
        assert_eq!(listed.items.len(), 1, "[{label}]");
        assert_eq!((listed.items[0].used, listed.items[0].secret.clone()), (1, None), "[{label}]");
        let dev = db.get_device("dev-00001", NOW, TH).await.unwrap().expect("device");
        assert_eq!((dev.status, dev.agent_version.as_str(), dev.hardware.cores), (DeviceStatus::Offline, "0.1.0", 4));
    }
}

#[tokio::test]
async fn enrolling_the_same_key_twice_returns_already_enrolled_without_consuming_a_use() {
    for (label, db) in databases().await {
        let t = token(&db, 2, 3600, labels(&[("site", "paris")])).await;
        let secret = t.secret.expect("secret");
        db.enroll(&new_device(&secret, 7), NOW).await.unwrap();
        let again = db.enroll(&new_device(&secret, 7), NOW + 1).await.unwrap();
        assert_eq!(
            again,
            EnrollOutcome::AlreadyEnrolled { device_id: "dev-00007".into(), labels: labels(&[("site", "paris")]) },
            "[{label}]"
        );
        let tokens = db.list_enrollment_tokens(None, 10).await.unwrap();
        assert_eq!(tokens.items[0].used, 1, "[{label}] a repeated enrollment must not take a use");
        let devices = db.list_devices(&Selector::everything(), None, None, 100, NOW, TH).await.unwrap();
        assert_eq!(devices.items.len(), 1, "[{label}]");
        let mut other_key = new_device(&secret, 7);
        other_key.public_key = [9; 32];
        let err = db.enroll(&other_key, NOW).await.unwrap_err();
        assert!(matches!(err, DbError::Conflict(_)), "[{label}] {err:?}");
    }
}

#[tokio::test]
async fn expired_used_up_revoked_and_unknown_tokens_are_refused() {
    for (label, db) in databases().await {
        let expired = token(&db, 5, 10, Labels::new()).await.secret.unwrap();
        let out = db.enroll(&new_device(&expired, 1), NOW + 10_000).await.unwrap();
        assert_eq!(out, EnrollOutcome::TokenExpired, "[{label}]");

        let single = token(&db, 1, 3600, Labels::new()).await.secret.unwrap();
        db.enroll(&new_device(&single, 2), NOW).await.unwrap();
        assert_eq!(db.enroll(&new_device(&single, 3), NOW).await.unwrap(), EnrollOutcome::TokenUsedUp, "[{label}]");

        let revoked = token(&db, 5, 3600, Labels::new()).await;
        assert!(db.revoke_enrollment_token(&revoked.id, "token:ops", NOW).await.unwrap(), "[{label}]");
        let out = db.enroll(&new_device(&revoked.secret.unwrap(), 4), NOW).await.unwrap();
        assert_eq!(out, EnrollOutcome::TokenRevoked, "[{label}]");
        assert!(!db.revoke_enrollment_token("et-missing", "token:ops", NOW).await.unwrap(), "[{label}]");

        let out = db.enroll(&new_device("oet_not-a-token", 5), NOW).await.unwrap();
        assert_eq!(out, EnrollOutcome::TokenUnknown, "[{label}]");
        let devices = db.list_devices(&Selector::everything(), None, None, 100, NOW, TH).await.unwrap();
        assert_eq!(devices.items.len(), 1, "[{label}] only the one valid enrollment created a device");
    }
}

#[tokio::test]
async fn revoked_device_cannot_re_enroll() {
    for (label, db) in databases().await {
        let secret = token(&db, 5, 3600, Labels::new()).await.secret.unwrap();
        db.enroll(&new_device(&secret, 1), NOW).await.unwrap();
        assert!(db.revoke_device("dev-00001", "token:admin", NOW + 5).await.unwrap(), "[{label}]");
        assert!(db.device_key("dev-00001").await.unwrap().unwrap().revoked, "[{label}]");
        let out = db.enroll(&new_device(&secret, 1), NOW + 10).await.unwrap();
        assert_eq!(out, EnrollOutcome::DeviceRevoked, "[{label}]");
        let dev = db.get_device("dev-00001", NOW + 10, TH).await.unwrap().unwrap();
        assert_eq!((dev.status, dev.revoked_ms), (DeviceStatus::Revoked, Some(NOW + 5)), "[{label}]");
        assert!(!db.revoke_device("dev-missing", "token:admin", NOW).await.unwrap(), "[{label}]");
    }
}

#[tokio::test]
async fn concurrent_enrollments_racing_for_the_last_use_let_exactly_one_win() {
    for (label, db) in databases().await {
        for round in 0..5u32 {
            let secret = token(&db, 1, 3600, Labels::new()).await.secret.unwrap();
            let (a, b) = (new_device(&secret, 100 + 2 * round), new_device(&secret, 101 + 2 * round));
            let (ra, rb) = tokio::join!(db.enroll(&a, NOW), db.enroll(&b, NOW));
            let outcomes = [ra.unwrap(), rb.unwrap()];
            let won = outcomes.iter().filter(|o| matches!(o, EnrollOutcome::Enrolled { .. })).count();
            let lost = outcomes.iter().filter(|o| **o == EnrollOutcome::TokenUsedUp).count();
            assert_eq!((won, lost), (1, 1), "[{label}] round {round}: {outcomes:?}");
        }
        let devices = db.list_devices(&Selector::everything(), None, None, 100, NOW, TH).await.unwrap();
        assert_eq!(devices.items.len(), 5, "[{label}]");
    }
}
