//! Fixtures shared by the storage tests: databases, devices, tokens and reports.

use super::test_db;
use outpost_proto::fleet::api::*;
use outpost_proto::fleet::device::*;
use outpost_proto::fleet::selector::Labels;
use outpost_server::db::*;

pub const NOW: i64 = 1_700_000_000_000;
pub const TH: Thresholds = Thresholds { stale_after_ms: 60_000, offline_after_ms: 300_000 };

pub async fn databases() -> Vec<(String, Db)> {
    databases_with_urls().await.into_iter().map(|(label, _, db)| (label, db)).collect()
}

pub async fn databases_with_urls() -> Vec<(String, String, Db)> {
    let mut out = Vec::new();
    for (label, url) in test_db::test_databases().await {
        let db = Db::connect(&url, 5).await.unwrap_or_else(|e| panic!("[{label}] connect {url}: {e}"));
        out.push((label, url, db));
    }
    out
}

/// Runs raw SQL beside the Db (to observe or tamper with what it stored).
pub async fn raw(url: &str, sql: &str) -> u64 {
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await.expect("raw connect");
    let done = sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut conn).await.expect("raw sql");
    done.rows_affected()
}

pub async fn raw_count(url: &str, sql: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await.expect("raw connect");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(&mut conn).await.expect("raw count")
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn new_device(secret: &str, n: u32) -> NewDevice {
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&n.to_be_bytes());
    NewDevice {
        token_secret: secret.to_string(),
        device_id: format!("dev-{n:05}"),
        public_key: key,
        name: format!("device {n}"),
        agent_version: "0.1.0".into(),
        hardware: HardwareProfile { arch: "x86_64".into(), cores: 4, ..Default::default() },
    }
}

pub async fn token(db: &Db, uses: u32, expires_in_s: u64, l: Labels) -> EnrollmentToken {
    let req = CreateEnrollmentToken { uses, expires_in_s, labels: l, note: "test".into() };
    db.create_enrollment_token(&req, "token:ops", NOW).await.expect("create enrollment token")
}

/// Enrolls devices `first..first+count` with one fresh token carrying `l`.
pub async fn enroll_many(db: &Db, first: u32, count: u32, l: Labels) {
    let t = token(db, count, 3600, l).await;
    let secret = t.secret.expect("secret");
    for n in first..first + count {
        let out = db.enroll(&new_device(&secret, n), NOW).await.expect("enroll");
        assert!(matches!(out, EnrollOutcome::Enrolled { .. }), "{out:?}");
    }
}

pub fn report(seq: u64, at_ms: i64, models: &[(&str, &str)]) -> StateReport {
    StateReport {
        seq,
        at_ms,
        agent_version: "0.2.0".into(),
        health: Health::Ok,
        models: models
            .iter()
            .map(|(n, v)| ModelReport {
                name: n.to_string(),
                version: v.to_string(),
                state: "ready".into(),
                ..Default::default()
            })
            .collect(),
        applied_etag: format!("etag-{seq}"),
        ..Default::default()
    }
}

pub fn row(id: &str, received_ms: i64, report: StateReport) -> ReportRow {
    ReportRow { device_id: id.to_string(), received_ms, report }
}
