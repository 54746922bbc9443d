//! The label-selector attacks of the hardening campaign, against a real server over SQLite and
//! PostgreSQL: oversized selectors, an operator flood while a device heartbeats, a query that
//! outlives the operator timeout and one whose client went away.

use crate::common;

use common::server::TestServer;
use common::signed::{now_ms, TestDevice};
use outpost_proto::fleet::selector::{MAX_SELECTOR_BYTES, MAX_SELECTOR_TERMS, MAX_SET_VALUES};
use outpost_server::ServerConfig;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};
use std::time::{Duration, Instant};

/// `k0=v,k1=v,...` with `n` terms.
fn terms(n: usize) -> String {
    (0..n).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",")
}

/// The largest selector the server accepts: every term an `in` or `notin` list, `site` first.
fn max_selector() -> String {
    let mut parts = vec!["site in (berlin|paris)".to_string()];
    let list = (0..MAX_SET_VALUES).map(|i| format!("v{i}")).collect::<Vec<_>>().join("|");
    for i in 1..MAX_SELECTOR_TERMS {
        parts.push(if i % 2 == 0 { format!("k{i} notin ({list})") } else { format!("!absent{i}") });
    }
    let text = parts.join(",");
    assert!(text.len() <= MAX_SELECTOR_BYTES, "{} bytes", text.len());
    text
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn heartbeat(s: &TestServer, dev: &TestDevice, seq: u64) -> (StatusCode, String) {
    let report = json!({"seq": seq, "at_ms": now_ms(), "agent_version": "0.2.0", "health": "ok"});
    let r = s.device(dev, Method::POST, "/v1/device/heartbeat", Some(report)).await;
    (r.status, r.body.to_string())
}

/// A PostgreSQL connection holding `ACCESS EXCLUSIVE` on `device_labels` until dropped or
/// committed: every operator selector query then waits, deterministically, without any
/// test-only code in the server.
async fn lock_labels(url: &str) -> PgConnection {
    let mut conn = PgConnection::connect(url).await.expect("lock connection");
    conn.execute("BEGIN").await.expect("begin");
    conn.execute("LOCK TABLE device_labels IN ACCESS EXCLUSIVE MODE").await.expect("lock");
    conn
}

/// The number of backends waiting for the lock `holder` holds.
async fn blocked_by(holder: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))")
        .fetch_one(holder)
        .await
        .expect("pg_stat_activity")
}

#[tokio::test]
async fn rejects_selector_with_too_many_terms() {
    for (label, url) in common::db::test_databases().await {
        let s = TestServer::start(&label, &url).await;
        let viewer = s.api_token("dash", "viewer").await;
        s.enrolled_device(json!({"site": "berlin"})).await;
        // 1,000 terms made SQLite answer 500 ("Expression tree is too large").
        let r = s.op(Method::GET, &format!("/v1/devices?selector={}", encode(&terms(33))), Some(&viewer), None).await;
        let message = r.body["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("at most {MAX_SELECTOR_TERMS} are allowed")), "{label}: {message}");
        for n in [MAX_SELECTOR_TERMS + 1, 100, 1000] {
            for route in ["/v1/devices", "/v1/fleet/summary"] {
                let path = format!("{route}?selector={}", encode(&terms(n)));
                let r = s.op(Method::GET, &path, Some(&viewer), None).await;
                if path.len() > outpost_server::serve::MAX_URI_BYTES {
                    // Refused before it is parsed at all.
                    assert_eq!((r.status, r.code()), (StatusCode::URI_TOO_LONG, "uri_too_long"), "{label} {route} {n}");
                    continue;
                }
                assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_request"), "{label} {route} {n}");
                let message = r.body["message"].as_str().unwrap_or_default();
                assert!(message.contains("selector too large"), "{label}: {message}");
            }
            let body = json!({"selector": terms(n), "model": "m", "version": "1"});
            let r = s.op(Method::POST, "/v1/assignments", Some(&s.admin), Some(body)).await;
            assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_request"), "{label} assignment {n}");
        }
        let long = format!("site={}", "x".repeat(MAX_SELECTOR_BYTES));
        let r = s.op(Method::GET, &format!("/v1/devices?selector={long}"), Some(&viewer), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{label}");
        assert!(r.body["message"].as_str().unwrap_or_default().contains("bytes"), "{label}: {:?}", r.body);
        // The largest legal selector is answered, and correctly.
        let path = format!("/v1/devices?selector={}", encode(&max_selector()));
        let r = s.op(Method::GET, &path, Some(&viewer), None).await;
        assert_eq!(r.status, StatusCode::OK, "{label}: {:?}", r.body);
        assert_eq!(r.body["items"].as_array().map(Vec::len), Some(1), "{label}");
        s.stop().await;
    }
}

#[tokio::test]
async fn operator_selector_flood_does_not_starve_device_heartbeats() {
    for (label, url) in common::db::test_databases().await {
        let configure = |c: &mut ServerConfig| {
            c.max_connections = 2;
            c.operator_max_connections = 2;
            c.operator_query_timeout_ms = 60_000;
        };
        let s = TestServer::start_with(&label, &url, configure).await;
        let viewer = s.api_token("dash", "viewer").await;
        for i in 0..20 {
            s.enrolled_device(json!({"site": if i % 2 == 0 { "berlin" } else { "paris" }, "k2": "v7"})).await;
        }
        let dev = s.enrolled_device(json!({"site": "berlin"})).await;
        assert_eq!(heartbeat(&s, &dev, 1).await.0, StatusCode::OK, "{label}");
        // On PostgreSQL the flood is made to hold every operator connection for the whole
        // test: the selector queries wait on a lock of the label table, which the heartbeat
        // path does not read. With one shared pool this left heartbeats without a connection.
        let mut lock = if label == "postgres" { Some(lock_labels(&url).await) } else { None };
        let path = format!("{}/v1/devices?selector={}", s.base, encode(&max_selector()));
        let stop = Instant::now() + Duration::from_secs(4);
        let mut flood = Vec::new();
        for _ in 0..16 {
            let (http, path, viewer) = (s.http().clone(), path.clone(), viewer.clone());
            flood.push(tokio::spawn(async move {
                let mut answered = 0u32;
                while Instant::now() < stop {
                    let sent = http.get(&path).bearer_auth(&viewer).timeout(Duration::from_secs(6)).send().await;
                    if let Ok(r) = sent {
                        let status = r.status();
                        assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "flood request failed");
                        answered += 1;
                    }
                }
                answered
            }));
        }
        if let Some(conn) = lock.as_mut() {
            let waited = Instant::now();
            while blocked_by(conn).await < 2 && waited.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(blocked_by(conn).await, 2, "{label}: both operator connections must be held by the flood");
        }
        let mut seq = 2;
        while Instant::now() < stop {
            let (status, body) = heartbeat(&s, &dev, seq).await;
            assert_eq!(status, StatusCode::OK, "{label}: heartbeat {seq} during the flood: {body}");
            seq += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(seq > 5, "{label}: only {} heartbeats were sent", seq - 2);
        drop(lock);
        for task in flood {
            task.await.expect("flood task");
        }
        s.stop().await;
    }
}

#[tokio::test]
async fn operator_query_times_out_with_json_error() {
    for (label, url) in common::db::test_databases().await {
        let s = TestServer::start_with(&label, &url, |c| c.operator_query_timeout_ms = 300).await;
        let dev = s.enrolled_device(json!({"site": "berlin"})).await;
        let list = format!("/v1/devices?selector={}", encode("site=berlin,!retired"));
        let labels = format!("/v1/devices/{}/labels", dev.id);
        let change = json!({"set": {"line": "3"}});
        // Something holds the tables longer than the operator timeout. PostgreSQL: a lock on
        // the label table, which selector reads and label writes wait for. SQLite: another
        // writer, which an operator write waits for (busy_timeout alone would wait 5 s); its
        // readers never wait in WAL mode, so there only the write path can be held up on purpose.
        let holder = if label == "postgres" {
            Hold::Pg(lock_labels(&url).await)
        } else {
            sqlx::any::install_default_drivers();
            let mut c = sqlx::AnyConnection::connect(&url).await.expect("sqlite lock connection");
            c.execute("BEGIN IMMEDIATE").await.expect("begin immediate");
            c.execute("DELETE FROM device_labels WHERE key = 'nothing'").await.expect("write");
            Hold::Sqlite(c)
        };
        let mut held = vec![(Method::PATCH, labels.clone(), Some(change.clone()))];
        if label == "postgres" {
            held.push((Method::GET, list.clone(), None));
            held.push((Method::GET, "/v1/fleet/summary?selector=site%3Dberlin".to_string(), None));
        }
        for (method, path, body) in held {
            let r = s.op(method, &path, Some(&s.admin), body).await;
            assert_eq!(
                (r.status, r.code()),
                (StatusCode::SERVICE_UNAVAILABLE, "query_timeout"),
                "{label} {path}: {:?}",
                r.body
            );
            assert!(r.headers.get("retry-after").is_some(), "{label}");
            let message = r.body["message"].as_str().unwrap_or_default();
            assert!(message.contains("operator_query_timeout_ms"), "{label}: {message}");
        }
        match holder {
            Hold::Pg(c) => drop(c),
            Hold::Sqlite(mut c) => {
                c.execute("ROLLBACK").await.expect("rollback");
                c.close().await.expect("close");
            }
        }
        // Once the tables are free the same requests are answered again.
        let r = s.op(Method::GET, &list, Some(&s.admin), None).await;
        assert_eq!(r.status, StatusCode::OK, "{label}: {:?}", r.body);
        let r = s.op(Method::PATCH, &labels, Some(&s.admin), Some(change)).await;
        assert_eq!(r.status, StatusCode::OK, "{label}: {:?}", r.body);
        s.stop().await;
    }
}

enum Hold {
    Pg(PgConnection),
    Sqlite(sqlx::AnyConnection),
}

#[tokio::test]
async fn abandoned_selector_query_is_cancelled_on_the_server() {
    for (label, url) in common::db::test_databases().await {
        if label != "postgres" {
            // SQLite runs inside the server process; its statements are bounded by the selector
            // limits and the operator deadline (see operator_query_times_out_with_json_error).
            continue;
        }
        let s = TestServer::start_with(&label, &url, |c| c.operator_query_timeout_ms = 120_000).await;
        s.enrolled_device(json!({"site": "berlin"})).await;
        let mut lock = lock_labels(&url).await;
        let path = format!("{}/v1/devices?selector=site%3Dberlin", s.base);
        // The client gives up long before the statement timeout would end the query.
        let gave_up = s.http().get(&path).bearer_auth(&s.admin).timeout(Duration::from_millis(1500)).send().await;
        assert!(gave_up.is_err(), "{label}: the request cannot be answered while the table is locked");
        let waited = Instant::now();
        let mut blocked = blocked_by(&mut lock).await;
        while blocked > 0 && waited.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            blocked = blocked_by(&mut lock).await;
        }
        assert_eq!(blocked, 0, "{label}: the abandoned query is still running on the server");
        drop(lock);
        let r = s.op(Method::GET, "/v1/devices?selector=site%3Dberlin", Some(&s.admin), None).await;
        assert_eq!(r.status, StatusCode::OK, "{label}: {:?}", r.body);
        s.stop().await;
    }
}
