//! The control plane's HTTP API against a real server on a random port, over both SQLite and
//! PostgreSQL: authentication and roles, enrollment, signed device requests, long-poll,
//! commands, desired state, audit and the OpenAPI document.

mod common;
#[path = "api/device_abuse.rs"]
mod device_abuse;
#[path = "api/doors.rs"]
mod doors;
#[path = "api/packages.rs"]
mod packages;
#[path = "api/resources.rs"]
mod resources;
#[path = "api/results.rs"]
mod results;
#[path = "api/rollouts.rs"]
mod rollouts;
#[path = "api/selector_attacks.rs"]
mod selector_attacks;

use common::server::TestServer;
use common::signed::{fresh_nonce, now_ms, TestDevice};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Runs `scenario` once per database (fresh SQLite file, fresh PostgreSQL schema).
async fn on_every_database<F, Fut>(scenario: F)
where
    F: Fn(TestServer) -> Fut,
    Fut: std::future::Future<Output = TestServer>,
{
    for (label, url) in common::db::test_databases().await {
        let server = TestServer::start(&label, &url).await;
        scenario(server).await.stop().await;
    }
}

#[tokio::test]
async fn roles_gate_operator_routes() {
    on_every_database(|s| async move {
        let dev = s.enrolled_device(json!({"site": "berlin"})).await;
        let viewer = s.api_token("dash", "viewer").await;
        let operator = s.api_token("ops", "operator").await;
        let labels = format!("/v1/devices/{}/labels", dev.id);
        let change = json!({"set": {"line": "3"}});

        let r = s.op(Method::GET, "/v1/devices", None, None).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{}", s.label);
        let r = s.op(Method::GET, "/v1/devices", Some("opt_not_a_real_token"), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", s.label);
        let r = s.op(Method::GET, "/v1/devices", Some(&viewer), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", s.label);
        assert_eq!(r.body["items"].as_array().unwrap().len(), 1);

        let r = s.op(Method::PATCH, &labels, Some(&viewer), Some(change.clone())).await;
        assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden"), "{}", s.label);
        assert!(r.body["message"].as_str().unwrap().contains("operator"));
        let r = s.op(Method::PATCH, &labels, Some(&operator), Some(change)).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {:?}", s.label, r.body);
        assert_eq!(r.body, json!({"site": "berlin", "line": "3"}));

        let revoke = format!("/v1/devices/{}/revoke", dev.id);
        let r = s.op(Method::POST, &revoke, Some(&operator), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", s.label);
        let r = s.op(Method::POST, &revoke, Some(&s.admin), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {:?}", s.label, r.body);
        assert_eq!(r.body["status"], "revoked");
        let r = s.op(Method::GET, "/v1/audit", Some(&operator), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", s.label);
        s
    })
    .await;
}

#[tokio::test]
async fn a_revoked_api_token_stops_working_at_once() {
    on_every_database(|s| async move {
        let viewer = s.api_token("temp", "viewer").await;
        assert_eq!(s.op(Method::GET, "/v1/models", Some(&viewer), None).await.status, StatusCode::OK);
        let list = s.op(Method::GET, "/v1/api-tokens", Some(&s.admin), None).await;
        let id = list.body["items"].as_array().unwrap().iter().find(|t| t["name"] == "temp").unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let r = s.op(Method::DELETE, &format!("/v1/api-tokens/{id}"), Some(&s.admin), None).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", s.label);
        let r = s.op(Method::GET, "/v1/models", Some(&viewer), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}: cached token outlived its revocation", s.label);
        s
    })
    .await;
}

#[tokio::test]
async fn enrollment_refuses_bad_tokens_and_forged_keys() {
    on_every_database(|s| async move {
        let (_, single) = s.enrollment_token(json!({"uses": 1})).await;
        assert_eq!(s.enroll(&TestDevice::new(), &single).await.status, StatusCode::CREATED, "{}", s.label);
        let r = s.enroll(&TestDevice::new(), &single).await;
        assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "enrollment_token_used_up"), "{}", s.label);

        let r = s.enroll(&TestDevice::new(), "oet_unknown").await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "invalid_enrollment_token"), "{}", s.label);

        let (_, short) = s.enrollment_token(json!({"uses": 5, "expires_in_s": 1})).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let r = s.enroll(&TestDevice::new(), &short).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "enrollment_token_expired"), "{}", s.label);

        let (id, revoked) = s.enrollment_token(json!({"uses": 5})).await;
        let r = s.op(Method::DELETE, &format!("/v1/enrollment-tokens/{id}"), Some(&s.admin), None).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let r = s.enroll(&TestDevice::new(), &revoked).await;
        assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "enrollment_token_revoked"), "{}", s.label);

        // Claiming someone else's public key: the signature is made with another key.
        let (_, fresh) = s.enrollment_token(json!({"uses": 5})).await;
        let (victim, forger) = (TestDevice::new(), TestDevice::new());
        let body = serde_json::to_vec(&json!({
            "token": fresh, "algorithm": "ed25519", "public_key": victim.key.public_key_base64()
        }))
        .unwrap();
        let headers = forger.headers_with(&victim.id, "POST", "/v1/enroll", &body, now_ms(), &fresh_nonce());
        let r = s.send(Method::POST, "/v1/enroll", &headers, body).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "bad_signature"), "{}", s.label);
        s
    })
    .await;
}

#[tokio::test]
async fn an_unknown_protocol_version_is_refused_before_any_route_runs() {
    on_every_database(|s| async move {
        let dev = s.enrolled_device(json!({})).await;
        let path = "/v1/device/heartbeat";
        let body = serde_json::to_vec(&json!({"seq": 1, "at_ms": now_ms()})).unwrap();
        // One set of signature headers for every attempt: a refused request must not have
        // reached the route, so its nonce is still unused when version 1 comes.
        let signed = dev.headers("POST", path, &body);
        for bad in ["2", "0", "1.0", "one", ""] {
            let mut headers = signed.clone();
            headers.push((outpost_proto::HEADER_PROTOCOL, bad.to_string()));
            let r = s.send(Method::POST, path, &headers, body.clone()).await;
            assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "unsupported_protocol"), "{}: {bad:?}", s.label);
            assert!(r.body["message"].as_str().unwrap().contains("speaks protocol 1"), "{:?}", r.body);
        }
        let mut headers = signed.clone();
        headers.push((outpost_proto::HEADER_PROTOCOL, "1".into()));
        let r = s.send(Method::POST, path, &headers, body.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {:?}", s.label, r.body);
        let answered = r.headers.get(outpost_proto::HEADER_PROTOCOL).and_then(|v| v.to_str().ok());
        assert_eq!(answered, Some("1"), "every answer names the server's version");
        // Operators' tools send no header and are taken as version 1.
        let r = s.op(Method::GET, "/v1/devices", Some(&s.admin), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", s.label);
        s
    })
    .await;
}

#[tokio::test]
async fn enrolling_twice_returns_the_same_device() {
    on_every_database(|s| async move {
        let (_, token) = s.enrollment_token(json!({"uses": 5, "labels": {"site": "paris"}})).await;
        let dev = TestDevice::new();
        let first = s.enroll(&dev, &token).await;
        assert_eq!(first.status, StatusCode::CREATED, "{}: {:?}", s.label, first.body);
        assert_eq!(first.body["already_enrolled"], false);
        assert_eq!(first.body["labels"], json!({"site": "paris"}));
        let second = s.enroll(&dev, &token).await;
        assert_eq!(second.status, StatusCode::OK, "{}: {:?}", s.label, second.body);
        assert_eq!(second.body["already_enrolled"], true);
        assert_eq!(first.body["device_id"], second.body["device_id"]);
        assert_eq!(first.body["device_id"], dev.id.as_str());
        let list = s.op(Method::GET, "/v1/devices", Some(&s.admin), None).await;
        assert_eq!(list.body["items"].as_array().unwrap().len(), 1, "{}", s.label);
        s
    })
    .await;
}

#[tokio::test]
async fn device_requests_must_be_signed_fresh_and_by_an_active_device() {
    on_every_database(|s| async move {
        let dev = s.enrolled_device(json!({})).await;
        let path = "/v1/device/heartbeat";
        let body = serde_json::to_vec(&json!({"seq": 1, "at_ms": now_ms()})).unwrap();

        let other = TestDevice::new();
        let forged = other.headers_with(&dev.id, "POST", path, &body, now_ms(), &fresh_nonce());
        let r = s.send(Method::POST, path, &forged, body.clone()).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "bad_signature"), "{}", s.label);

        let good = dev.headers("POST", path, &body);
        assert_eq!(s.send(Method::POST, path, &good, body.clone()).await.status, StatusCode::OK, "{}", s.label);
        let r = s.send(Method::POST, path, &good, body.clone()).await;
        assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "replayed_request"), "{}", s.label);

        let stale = dev.headers_with(&dev.id, "POST", path, &body, now_ms() - 3_600_000, &fresh_nonce());
        let r = s.send(Method::POST, path, &stale, body.clone()).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "stale_request"), "{}", s.label);

        let stranger = TestDevice::new();
        let r = s.send(Method::POST, path, &stranger.headers("POST", path, &body), body.clone()).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "unknown_device"), "{}", s.label);

        let r = s.send(Method::POST, path, &[], body.clone()).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "bad_signature"), "{}", s.label);

        let r = s.op(Method::POST, &format!("/v1/devices/{}/revoke", dev.id), Some(&s.admin), None).await;
        assert_eq!(r.status, StatusCode::OK);
        let r = s.device(&dev, Method::POST, path, Some(json!({"seq": 2}))).await;
        assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "device_revoked"), "{}", s.label);
        s
    })
    .await;
}

#[tokio::test]
async fn garbage_json_gets_a_json_400() {
    on_every_database(|s| async move {
        let r = s.op_raw(Method::POST, "/v1/models", Some(&s.admin), Some(b"{not json".to_vec())).await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_request"), "{}", s.label);
        assert!(r.headers["content-type"].to_str().unwrap().starts_with("application/json"));
        let r = s.op(Method::GET, "/v1/devices?limit=abc", Some(&s.admin), None).await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_request"), "{}", s.label);
        let r = s.op(Method::GET, "/v1/devices?selector=a%20b%3Dc", Some(&s.admin), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", s.label);
        let r = s.op(Method::DELETE, "/v1/assignments/not-a-number", Some(&s.admin), None).await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_request"), "{}", s.label);
        let r = s.op(Method::GET, "/v1/nowhere", None, None).await;
        assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"), "{}", s.label);

        let dev = s.enrolled_device(json!({})).await;
        let body = b"[1,2".to_vec();
        let headers = dev.headers("POST", "/v1/device/heartbeat", &body);
        let r = s.send(Method::POST, "/v1/device/heartbeat", &headers, body).await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_request"), "{}", s.label);
        let big = vec![b' '; 2 * 1024 * 1024];
        let r = s.op_raw(Method::POST, "/v1/models", Some(&s.admin), Some(big)).await;
        assert_eq!((r.status, r.code()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"), "{}", s.label);
        s
    })
    .await;
}

fn etag_of(r: &common::server::Reply) -> String {
    r.headers["etag"].to_str().unwrap().trim_matches('"').to_string()
}

#[tokio::test]
async fn long_poll_waits_then_304_and_wakes_early_on_change() {
    on_every_database(|s| async move {
        let dev = s.enrolled_device(json!({"site": "berlin"})).await;
        let first = s.device(&dev, Method::GET, "/v1/device/desired-state", None).await;
        assert_eq!(first.status, StatusCode::OK, "{}: {:?}", s.label, first.body);
        let etag = etag_of(&first);
        assert_eq!(first.body["etag"], etag.as_str());
        let inm = [("if-none-match", format!("\"{etag}\""))];

        let started = Instant::now();
        let r = s.device_with(&dev, Method::GET, "/v1/device/desired-state?wait=1", None, &inm).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{}", s.label);
        assert!(started.elapsed() >= Duration::from_millis(900));

        // A command created while the device waits ends the wait with the new state.
        let s = std::sync::Arc::new(s);
        let (s2, id) = (s.clone(), dev.id.clone());
        let creator = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let path = format!("/v1/devices/{id}/commands");
            s2.op(Method::POST, &path, Some(&s2.admin), Some(json!({"kind": "collect_logs"}))).await
        });
        let started = Instant::now();
        let r = s.device_with(&dev, Method::GET, "/v1/device/desired-state?wait=8", None, &inm).await;
        assert_eq!(r.status, StatusCode::OK, "{}", s.label);
        assert!(started.elapsed() < Duration::from_secs(5), "woken early");
        let created = creator.await.unwrap();
        assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
        let commands = r.body["commands"].as_array().unwrap();
        assert_eq!(commands.len(), 1);
        assert_eq!(commands[0]["kind"], "collect_logs");
        let cmd_id = commands[0]["id"].as_i64().unwrap();
        let list = s.op(Method::GET, &format!("/v1/devices/{}/commands", dev.id), Some(&s.admin), None).await;
        assert_eq!(list.body["items"][0]["status"], "delivered", "{}", s.label);

        // A label change wakes it too.
        let inm = [("if-none-match", format!("\"{}\"", etag_of(&r)))];
        let (s2, id) = (s.clone(), dev.id.clone());
        let labeler = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let path = format!("/v1/devices/{id}/labels");
            s2.op(Method::PATCH, &path, Some(&s2.admin), Some(json!({"set": {"line": "2"}}))).await
        });
        let started = Instant::now();
        let r = s.device_with(&dev, Method::GET, "/v1/device/desired-state?wait=8", None, &inm).await;
        assert_eq!(r.status, StatusCode::OK, "{}", s.label);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(r.body["labels"]["line"], "2");
        labeler.await.unwrap();

        // Acknowledging twice: the second is a conflict.
        let ack = format!("/v1/device/commands/{cmd_id}/ack");
        let body = json!({"status": "succeeded", "result": {"lines": 3}});
        let r = s.device(&dev, Method::POST, &ack, Some(body.clone())).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {:?}", s.label, r.body);
        assert_eq!(r.body["status"], "succeeded");
        let r = s.device(&dev, Method::POST, &ack, Some(body)).await;
        assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "already_acked"), "{}", s.label);
        let r = s.device(&dev, Method::GET, "/v1/device/desired-state", None).await;
        assert!(r.body["commands"].as_array().unwrap().is_empty());
        std::sync::Arc::try_unwrap(s).ok().expect("helpers finished")
    })
    .await;
}

#[tokio::test]
async fn heartbeats_are_acknowledged_with_the_current_etag() {
    on_every_database(|s| async move {
        let dev = s.enrolled_device(json!({})).await;
        let report = json!({"seq": 1, "at_ms": now_ms(), "agent_version": "0.2.0", "health": "ok"});
        let r = s.device(&dev, Method::POST, "/v1/device/heartbeat", Some(report)).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {:?}", s.label, r.body);
        assert_eq!(r.body["accepted"], 1);
        let desired = s.device(&dev, Method::GET, "/v1/device/desired-state", None).await;
        assert_eq!(r.body["desired_etag"], desired.body["etag"], "{}", s.label);
        let batch = json!({"reports": [{"seq": 2}, {"seq": 3}, {"seq": 4}]});
        let r = s.device(&dev, Method::POST, "/v1/device/reports", Some(batch)).await;
        assert_eq!((r.status, r.body["accepted"].clone()), (StatusCode::OK, json!(3)), "{}: {:?}", s.label, r.body);
        let d = s.op(Method::GET, &format!("/v1/devices/{}", dev.id), Some(&s.admin), None).await;
        assert_eq!(d.body["status"], "online", "{}: {:?}", s.label, d.body);
        let metrics = reqwest::get(format!("{}/metrics", s.base)).await.unwrap().text().await.unwrap();
        assert!(metrics.contains("outpost_server_reports_received_total 4"), "{metrics}");
        assert!(metrics.contains("route=\"/v1/device/heartbeat\""));
        s
    })
    .await;
}

fn models_of(state: &Value) -> Vec<(String, String, String)> {
    state["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let f = |k: &str| m[k].as_str().unwrap().to_string();
            (f("name"), f("version"), f("source"))
        })
        .collect()
}

#[tokio::test]
async fn desired_state_follows_assignments_and_override() {
    on_every_database(|s| async move {
        let admin = Some(s.admin.as_str());
        for v in ["1", "2"] {
            let r = s.op(Method::POST, "/v1/models", admin, Some(json!({"name": "defect", "version": v}))).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}: {:?}", s.label, r.body);
        }
        let dup = s.op(Method::POST, "/v1/models", admin, Some(json!({"name": "defect", "version": "1"}))).await;
        assert_eq!((dup.status, dup.code()), (StatusCode::CONFLICT, "conflict"), "{}", s.label);
        let dev = s.enrolled_device(json!({"site": "berlin"})).await;
        let a1 = s
            .op(
                Method::POST,
                "/v1/assignments",
                admin,
                Some(json!({"selector": "site=berlin", "model": "defect", "version": "1"})),
            )
            .await;
        assert_eq!(a1.status, StatusCode::CREATED, "{}: {:?}", s.label, a1.body);
        let r = s.device(&dev, Method::GET, "/v1/device/desired-state", None).await;
        let source1 = format!("assignment:{}", a1.body["id"]);
        assert_eq!(models_of(&r.body), vec![("defect".into(), "1".into(), source1)], "{}", s.label);

        let a2 = s
            .op(
                Method::POST,
                "/v1/assignments",
                admin,
                Some(json!({"selector": "", "model": "defect", "version": "2"})),
            )
            .await;
        let r = s.device(&dev, Method::GET, "/v1/device/desired-state", None).await;
        assert_eq!(models_of(&r.body)[0].1, "2", "{}: the newest assignment wins", s.label);

        let ov = format!("/v1/devices/{}/override", dev.id);
        let r = s.op(Method::PUT, &ov, admin, Some(json!({"models": {"defect": ""}, "config": {"x": 1}}))).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {:?}", s.label, r.body);
        let r = s.device(&dev, Method::GET, "/v1/device/desired-state", None).await;
        assert!(models_of(&r.body).is_empty(), "{}: an empty override version removes the model", s.label);
        assert_eq!(r.body["config"]["x"], 1);
        let preview = s.op(Method::GET, &format!("/v1/devices/{}/desired-state", dev.id), admin, None).await;
        assert_eq!(preview.body, r.body, "{}", s.label);

        assert_eq!(s.op(Method::DELETE, &ov, admin, None).await.status, StatusCode::NO_CONTENT);
        let path = format!("/v1/assignments/{}", a2.body["id"]);
        assert_eq!(s.op(Method::DELETE, &path, admin, None).await.status, StatusCode::NO_CONTENT);
        let r = s.device(&dev, Method::GET, "/v1/device/desired-state", None).await;
        assert_eq!(models_of(&r.body)[0].1, "1", "{}", s.label);
        assert_eq!(s.op(Method::DELETE, &path, admin, None).await.status, StatusCode::NOT_FOUND);
        s
    })
    .await;
}

#[tokio::test]
async fn audit_log_records_actions_with_their_actors() {
    on_every_database(|s| async move {
        let operator = s.api_token("ops", "operator").await;
        let dev = s.enrolled_device(json!({})).await;
        let path = format!("/v1/devices/{}/labels", dev.id);
        s.op(Method::PATCH, &path, Some(&operator), Some(json!({"set": {"a": "b"}}))).await;
        s.op(Method::POST, &format!("/v1/devices/{}/revoke", dev.id), Some(&s.admin), None).await;
        let r = s.op(Method::GET, "/v1/audit?limit=100", Some(&s.admin), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {:?}", s.label, r.body);
        let entries: Vec<(String, String)> = r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["actor"].as_str().unwrap().to_string(), e["target"].as_str().unwrap_or("").to_string()))
            .collect();
        assert!(entries.iter().any(|(a, t)| a == "token:ops" && t.contains(&dev.id)), "{}: {entries:?}", s.label);
        assert!(entries.iter().filter(|(a, t)| a.starts_with("token:") && t.contains(&dev.id)).count() >= 2);
        s
    })
    .await;
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    on_every_database(|s| async move {
        let doc: Value = reqwest::get(format!("{}/openapi.json", s.base)).await.unwrap().json().await.unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in [
            ("/v1/devices", "get"),
            ("/v1/devices/{id}", "get"),
            ("/v1/devices/{id}/labels", "patch"),
            ("/v1/devices/{id}/revoke", "post"),
            ("/v1/devices/{id}/override", "put"),
            ("/v1/devices/{id}/override", "delete"),
            ("/v1/devices/{id}/override", "get"),
            ("/v1/devices/{id}/desired-state", "get"),
            ("/v1/devices/{id}/history", "get"),
            ("/v1/devices/{id}/commands", "post"),
            ("/v1/devices/{id}/commands", "get"),
            ("/v1/fleet/summary", "get"),
            ("/v1/enrollment-tokens", "post"),
            ("/v1/enrollment-tokens", "get"),
            ("/v1/enrollment-tokens/{id}", "delete"),
            ("/v1/api-tokens", "post"),
            ("/v1/api-tokens", "get"),
            ("/v1/api-tokens/{id}", "delete"),
            ("/v1/models", "post"),
            ("/v1/models", "get"),
            ("/v1/models/{name}", "get"),
            ("/v1/assignments", "post"),
            ("/v1/assignments", "get"),
            ("/v1/assignments/{id}", "delete"),
            ("/v1/audit", "get"),
            ("/v1/enroll", "post"),
            ("/v1/device/heartbeat", "post"),
            ("/v1/device/reports", "post"),
            ("/v1/device/results", "post"),
            ("/v1/results", "get"),
            ("/v1/device/desired-state", "get"),
            ("/v1/device/commands/{id}/ack", "post"),
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
        ] {
            assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} missing from OpenAPI");
        }
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        assert!(schemes.contains_key("bearer") && schemes.contains_key("device_signature"));
        let r = s.op(Method::GET, "/readyz", None, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", s.label);
        s
    })
    .await;
}
