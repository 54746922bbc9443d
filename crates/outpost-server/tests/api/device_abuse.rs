//! Attacks on the device channel, against real servers on both SQLite and PostgreSQL: captured
//! requests replayed after a restart or against another replica, signing times that overflow
//! the clock-skew check, history floods with reports dated in the future, and report floods
//! over the per-device rate limit.

use crate::common;
use common::server::TestServer;
use common::signed::{fresh_nonce, now_ms, TestDevice};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

const HEARTBEAT: &str = "/v1/device/heartbeat";

/// A heartbeat body dated `at_ms` and the headers of one signed request carrying it.
fn captured(dev: &TestDevice, seq: u64, at_ms: i64) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let body = serde_json::to_vec(&json!({"seq": seq, "at_ms": at_ms})).unwrap();
    (dev.headers("POST", HEARTBEAT, &body), body)
}

async fn history(s: &TestServer, dev: &TestDevice) -> Vec<Value> {
    let r = s.op(Method::GET, &format!("/v1/devices/{}/history?limit=1000", dev.id), Some(&s.admin), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}: {:?}", s.label, r.body);
    r.body.as_array().expect("a list of reports").clone()
}

#[tokio::test]
async fn rejects_replay_after_server_restart() {
    for (label, url) in common::db::test_databases().await {
        let s = TestServer::start(&label, &url).await;
        let dev = s.enrolled_device(json!({})).await;
        let (headers, body) = captured(&dev, 1, now_ms());
        assert_eq!(s.send(Method::POST, HEARTBEAT, &headers, body.clone()).await.status, StatusCode::OK, "{label}");

        let s = s.restart().await;
        let r = s.send(Method::POST, HEARTBEAT, &headers, body.clone()).await;
        assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "replayed_request"), "{label}: {:?}", r.body);
        // The device itself carries on with fresh nonces.
        let (headers, body) = captured(&dev, 2, now_ms());
        assert_eq!(s.send(Method::POST, HEARTBEAT, &headers, body).await.status, StatusCode::OK, "{label}");
        s.stop().await;
    }
}

#[tokio::test]
async fn rejects_replay_on_another_replica() {
    for (label, url) in common::db::test_databases().await {
        let a = TestServer::start(&label, &url).await;
        let b = a.replica().await;
        let dev = a.enrolled_device(json!({})).await;
        for (first, second) in [(&a, &b), (&b, &a)] {
            let (headers, body) = captured(&dev, 1, now_ms());
            let r = first.send(Method::POST, HEARTBEAT, &headers, body.clone()).await;
            assert_eq!(r.status, StatusCode::OK, "{label}: {:?}", r.body);
            let r = second.send(Method::POST, HEARTBEAT, &headers, body).await;
            assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "replayed_request"), "{label}: {:?}", r.body);
        }
        // Enrollment requests are protected the same way.
        let fresh = TestDevice::new();
        let (_, secret) = a.enrollment_token(json!({"uses": 2})).await;
        let enroll = serde_json::to_vec(&json!({
            "token": secret, "algorithm": "ed25519", "public_key": fresh.key.public_key_base64(),
            "name": "n", "agent_version": "0.1.0", "hardware": {"arch": "x86_64", "cores": 2}
        }))
        .unwrap();
        let headers = fresh.headers("POST", "/v1/enroll", &enroll);
        assert_eq!(a.send(Method::POST, "/v1/enroll", &headers, enroll.clone()).await.status, StatusCode::CREATED);
        let r = b.send(Method::POST, "/v1/enroll", &headers, enroll).await;
        assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "replayed_request"), "{label}: {:?}", r.body);
        b.stop().await;
        a.stop().await;
    }
}

#[tokio::test]
async fn rejects_timestamp_near_i64_min() {
    for (label, url) in common::db::test_databases().await {
        let s = TestServer::start(&label, &url).await;
        let dev = s.enrolled_device(json!({})).await;
        let body = serde_json::to_vec(&json!({"seq": 1})).unwrap();
        // `timestamp - now` is exactly i64::MIN when the timestamp is i64::MIN + now: the old
        // `.abs()` overflowed there (a negative "difference" passed the check). The server's
        // clock is a few ms behind ours by the time it checks, so sweep a few offsets.
        let mut timestamps = vec![i64::MIN, i64::MIN + 1, i64::MAX, i64::MAX - 1];
        for round in 0..40 {
            timestamps.push(i64::MIN.wrapping_add(now_ms()).wrapping_add(round % 4));
        }
        for ts in timestamps {
            let headers = dev.headers_with(&dev.id, "POST", HEARTBEAT, &body, ts, &fresh_nonce());
            let r = s.send(Method::POST, HEARTBEAT, &headers, body.clone()).await;
            assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "stale_request"), "{label}: timestamp {ts}");
        }
        s.stop().await;
    }
}

#[tokio::test]
async fn rejects_timestamp_near_i64_max() {
    for (label, url) in common::db::test_databases().await {
        let s = TestServer::start(&label, &url).await;
        let dev = s.enrolled_device(json!({})).await;
        let body = serde_json::to_vec(&json!({"seq": 1})).unwrap();
        for ts in [i64::MAX, i64::MAX - 1, i64::MAX.wrapping_sub(now_ms())] {
            let headers = dev.headers_with(&dev.id, "POST", HEARTBEAT, &body, ts, &fresh_nonce());
            let r = s.send(Method::POST, HEARTBEAT, &headers, body.clone()).await;
            assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "stale_request"), "{label}: timestamp {ts}");
        }
        s.stop().await;
    }
}

#[tokio::test]
async fn rejects_history_flood_dated_in_the_future() {
    for (label, url) in common::db::test_databases().await {
        let s = TestServer::start(&label, &url).await;
        let dev = s.enrolled_device(json!({})).await;
        // The campaign's flood: five batches of reports spaced one history interval apart,
        // running decades into the future.
        let start = now_ms();
        for batch in 0..5i64 {
            let reports: Vec<Value> = (0..2000i64)
                .map(|i| json!({"seq": batch * 2000 + i, "at_ms": start + (batch * 2000 + i) * 300_000}))
                .collect();
            let r = s.device(&dev, Method::POST, "/v1/device/reports", Some(json!({"reports": reports}))).await;
            assert_eq!(r.status, StatusCode::OK, "{label}: {:?}", r.body);
        }
        let stored = history(&s, &dev).await;
        assert!(stored.len() <= 3, "{label}: {} history rows from one device", stored.len());
        let latest = now_ms() + 300_000;
        for report in &stored {
            assert!(report["at_ms"].as_i64().unwrap() <= latest, "{label}: stored a future date: {report}");
        }
        s.stop().await;
    }
}

#[tokio::test]
async fn rejects_future_dated_report_suppressing_later_history() {
    for (label, url) in common::db::test_databases().await {
        let s = TestServer::start_with(&label, &url, |c| c.history_interval_s = 1).await;
        let dev = s.enrolled_device(json!({})).await;
        let r = s.device(&dev, Method::POST, HEARTBEAT, Some(json!({"seq": 1, "at_ms": 2_800_000_000_000i64}))).await;
        assert_eq!(r.status, StatusCode::OK, "{label}: {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let r = s.device(&dev, Method::POST, HEARTBEAT, Some(json!({"seq": 2, "at_ms": now_ms()}))).await;
        assert_eq!(r.status, StatusCode::OK, "{label}: {:?}", r.body);
        let seqs: Vec<i64> = history(&s, &dev).await.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, [1, 2], "{label}: the honest report after a future-dated one must be kept");
        s.stop().await;
    }
}

#[tokio::test]
async fn rejects_report_flood_over_the_rate_limit() {
    for (label, url) in common::db::test_databases().await {
        let s = TestServer::start_with(&label, &url, |c| {
            c.device_report_burst = 5;
            c.device_reports_per_min = 6;
        })
        .await;
        let dev = s.enrolled_device(json!({})).await;
        for seq in 0..5 {
            let r = s.device(&dev, Method::POST, HEARTBEAT, Some(json!({"seq": seq, "at_ms": now_ms()}))).await;
            assert_eq!(r.status, StatusCode::OK, "{label}: {:?}", r.body);
        }
        let r = s.device(&dev, Method::POST, HEARTBEAT, Some(json!({"seq": 5, "at_ms": now_ms()}))).await;
        assert_eq!((r.status, r.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"), "{label}: {:?}", r.body);
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=10).contains(&retry), "{label}: Retry-After {retry}");
        let batch = json!({"reports": [{"seq": 6}, {"seq": 7}]});
        let r = s.device(&dev, Method::POST, "/v1/device/reports", Some(batch)).await;
        assert_eq!(r.code(), "rate_limited", "{label}");
        // Other devices have their own budget.
        let other = s.enrolled_device(json!({})).await;
        let r = s.device(&other, Method::POST, HEARTBEAT, Some(json!({"seq": 0, "at_ms": now_ms()}))).await;
        assert_eq!(r.status, StatusCode::OK, "{label}: {:?}", r.body);
        s.stop().await;
    }
}
