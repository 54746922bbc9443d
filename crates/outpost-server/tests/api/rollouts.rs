//! Rollouts through the API with scripted devices that follow their desired state and report
//! per-version windows, on SQLite and PostgreSQL: a good rollout completes into an assignment,
//! a regressing one rolls the fleet back by itself, a restart resumes a rollout where it was,
//! and two replicas on one database never both act on the same rollout.

use crate::common::db::test_databases;
use crate::common::package::opkg;
use crate::common::server::TestServer;
use crate::common::signed::TestDevice;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn fast(c: &mut outpost_server::ServerConfig) {
    c.rollout_tick_ms = 100;
    c.rollout_lease_ms = 2_000;
    c.device_reports_per_min = 100_000;
}

async fn publish(s: &TestServer, version: &str) {
    let model: Vec<u8> = (0..4_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let url = format!("{}/v1/model-packages", s.base);
    let r = s.http().post(url).bearer_auth(&s.admin).body(opkg("detector", version, &model)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", s.label);
}

/// A scripted device: serves what its desired state says (or refuses one version), reports
/// requests with an error rate per version, and shadow agreement when asked to shadow.
struct Scripted {
    dev: TestDevice,
    seq: u64,
    error_rate: HashMap<String, f64>,
}

impl Scripted {
    async fn step(&mut self, s: &TestServer) -> Value {
        let desired = s.device(&self.dev, Method::GET, "/v1/device/desired-state", None).await;
        assert_eq!(desired.status, StatusCode::OK, "{}: {:?}", s.label, desired.body);
        let mut models = Vec::new();
        for m in desired.body["models"].as_array().unwrap() {
            let version = m["version"].as_str().unwrap().to_string();
            let rate = self.error_rate.get(&version).copied().unwrap_or(0.0);
            let requests = 40u64;
            let errors = (requests as f64 * rate).round() as u64;
            let mut report = json!({
                "name": m["name"], "version": version, "state": "ready",
                "windows": [{"version": version, "requests": requests, "errors": errors, "latency": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, requests]}],
            });
            if let Some(sh) = m.get("shadow").filter(|v| !v.is_null()) {
                report["shadow"] =
                    json!({"version": sh["version"], "state": "ready", "samples": 10, "agreement": 10.0});
            }
            models.push(report);
        }
        self.seq += 1;
        let report = json!({"seq": self.seq, "at_ms": crate::common::signed::now_ms(), "models": models, "applied_etag": desired.body["etag"]});
        let r = s.device(&self.dev, Method::POST, "/v1/device/heartbeat", Some(report)).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {:?}", s.label, r.body);
        desired.body
    }
}

async fn fleet(s: &TestServer, n: usize, labels: Value) -> Vec<Scripted> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Scripted { dev: s.enrolled_device(labels.clone()).await, seq: 0, error_rate: HashMap::new() });
    }
    out
}

/// Steps every device and reads the rollout until `done` says so or 40 s pass.
async fn drive(s: &TestServer, devices: &mut [Scripted], id: i64, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        for d in devices.iter_mut() {
            d.step(s).await;
        }
        let r = s.op(Method::GET, &format!("/v1/rollouts/{id}"), Some(&s.admin), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {:?}", s.label, r.body);
        if done(&r.body) {
            return r.body;
        }
        if started.elapsed() > Duration::from_secs(40) {
            let devices = s.op(Method::GET, &format!("/v1/rollouts/{id}/devices"), Some(&s.admin), None).await;
            panic!("{}: rollout stuck: {:#}\ndevices: {:#}", s.label, r.body, devices.body);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn state_is(want: &'static str) -> impl Fn(&Value) -> bool {
    move |r| r["state"] == want
}

async fn create(s: &TestServer, body: Value) -> i64 {
    let r = s.op(Method::POST, "/v1/rollouts", Some(&s.admin), Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}: {:?}", s.label, r.body);
    assert_eq!(r.body["state"], "pending");
    r.body["id"].as_i64().unwrap()
}

async fn desired_version(s: &TestServer, d: &Scripted) -> String {
    let r = s.device(&d.dev, Method::GET, "/v1/device/desired-state", None).await;
    r.body["models"][0]["version"].as_str().unwrap_or("").to_string()
}

async fn audit_actions(s: &TestServer, target: i64) -> Vec<Value> {
    let r = s.op(Method::GET, "/v1/audit?limit=500", Some(&s.admin), None).await;
    let mut entries: Vec<Value> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["target"].as_str() == Some(target.to_string().as_str())
                && e["action"].as_str().unwrap().starts_with("rollout.")
        })
        .cloned()
        .collect();
    entries.reverse();
    entries
}

#[tokio::test]
async fn rollouts_complete_roll_back_by_themselves_and_survive_restarts_and_replicas() {
    for (label, url) in test_databases().await {
        let s = TestServer::start_with(&label, &url, fast).await;
        for v in ["1", "2", "3", "4"] {
            publish(&s, v).await;
        }
        let r = s
            .op(
                Method::POST,
                "/v1/assignments",
                Some(&s.admin),
                Some(json!({"selector": "", "model": "detector", "version": "1"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let mut berlin = fleet(&s, 6, json!({"site": "berlin"})).await;
        let mut paris = fleet(&s, 1, json!({"site": "paris"})).await;
        let pinned = &berlin[5];
        let r = s
            .op(
                Method::PUT,
                &format!("/v1/devices/{}/override", pinned.dev.id),
                Some(&s.admin),
                Some(json!({"models": {"detector": "1"}})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{label}: {:?}", r.body);

        // Bad requests are refused with the reason.
        for (body, needle) in [
            (json!({"model": "detector", "version": "9"}), "not in the registry"),
            (json!({"model": "detector", "version": "2", "gates": ["error_rate>1%"]}), "error_rate takes <"),
            (json!({"model": "detector", "version": "2", "waves": [50, 0]}), "not a percentage"),
            (json!({"model": "detector", "version": "2", "selector": "site in"}), "selector"),
        ] {
            let r = s.op(Method::POST, "/v1/rollouts", Some(&s.admin), Some(body)).await;
            assert!(r.status.is_client_error(), "{label}: {:?}", r.body);
            assert!(r.body["message"].as_str().unwrap().contains(needle), "{label}: {:?}", r.body);
        }

        // v2 over berlin in two waves with a shadow phase and health gates: completes.
        let spec = json!({
            "model": "detector", "version": "2", "selector": "site=berlin", "waves": [40, 100],
            "bake_s": 1, "gates": ["shadow_agreement>90%", "error_rate<5%", "p99_latency<1.5x"],
            "min_samples": 10, "wave_deadline_s": 30,
        });
        let id = create(&s, spec).await;
        let done = drive(&s, &mut berlin, id, state_is("completed")).await;
        assert_eq!(done["eligible"], 5, "{label}: {done:#}");
        assert_eq!(done["skipped"]["pinned"], 1, "{label}");
        assert_eq!(done["waves"][0]["devices"], 2, "{label}: 40 % of 5, rounded up");
        assert_eq!(done["waves"][1]["by_state"]["updated"], 3, "{label}: {done:#}");
        let gates = &done["waves"][1]["gates"];
        assert!(gates.as_array().unwrap().iter().all(|g| g["verdict"] == "pass"), "{label}: {gates:#}");
        for d in &berlin[..5] {
            assert_eq!(desired_version(&s, d).await, "2", "{label}");
        }
        assert_eq!(desired_version(&s, &berlin[5]).await, "1", "{label}: pinned");
        assert_eq!(desired_version(&s, &paris[0]).await, "1", "{label}: outside the selector");
        let assignments = s.op(Method::GET, "/v1/assignments", Some(&s.admin), None).await;
        let made = assignments
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["created_by"] == format!("rollout:{id}") && a["version"] == "2");
        assert!(made, "{label}: completion assigns the version: {:?}", assignments.body);
        let actions: Vec<String> =
            audit_actions(&s, id).await.iter().map(|e| e["action"].as_str().unwrap().to_string()).collect();
        assert_eq!(actions.first().map(String::as_str), Some("rollout.create"), "{label}: {actions:?}");
        assert_eq!(actions.iter().filter(|a| *a == "rollout.live").count(), 2, "{label}: {actions:?}");
        assert_eq!(actions.last().map(String::as_str), Some("rollout.complete"), "{label}: {actions:?}");

        // v3 regresses on every device: the error gate rolls the fleet back to v2 by itself.
        for d in berlin.iter_mut() {
            d.error_rate.insert("3".into(), 0.5);
        }
        let spec = json!({
            "model": "detector", "version": "3", "selector": "site=berlin", "waves": [40, 100],
            "bake_s": 2, "gates": ["error_rate<2x"], "min_samples": 10, "wave_deadline_s": 30,
        });
        let id3 = create(&s, spec).await;
        let done = drive(&s, &mut berlin, id3, |r| r["state"] != "pending" && r["state"] != "running").await;
        assert_eq!(done["state"], "rolled_back", "{label}: {done:#}");
        assert!(done["reason"].as_str().unwrap().contains("error_rate<2x failed"), "{label}: {done:#}");
        for d in &berlin[..5] {
            assert_eq!(desired_version(&s, d).await, "2", "{label}: back to the previous version");
        }
        let audit = audit_actions(&s, id3).await;
        let rollback = audit.iter().find(|e| e["action"] == "rollout.rollback").expect("rollback audited");
        assert!(rollback["details"]["gates"][0]["value"].as_f64().unwrap() > 0.3, "{label}: {rollback}");
        assert_eq!(rollback["actor"], "server", "{label}");

        // v4 with a long bake: a restart in the middle resumes it where it was.
        let spec = json!({
            "model": "detector", "version": "4", "selector": "site=berlin", "waves": [40, 100],
            "bake_s": 3, "gates": ["error_rate<5%"], "min_samples": 10, "wave_deadline_s": 30,
        });
        let id4 = create(&s, spec).await;
        let before = drive(&s, &mut berlin, id4, |r| r["waves"][0]["phase"] == "baking").await;
        let s = s.restart_with(fast).await;
        let after = s.op(Method::GET, &format!("/v1/rollouts/{id4}"), Some(&s.admin), None).await.body;
        assert_eq!((&after["state"], &after["wave"]), (&before["state"], &before["wave"]), "{label}");
        assert_eq!(after["waves"][0]["bake_started_ms"], before["waves"][0]["bake_started_ms"], "{label}");
        // A second replica on the same database: exactly one of them acts, and devices polling
        // the other one follow (its caches learn what the acting replica changed).
        let replica = s.replica().await;
        let done = drive(&replica, &mut berlin, id4, state_is("completed")).await;
        assert_eq!(done["waves"][1]["by_state"]["updated"], 3, "{label}");
        for d in &berlin[..5] {
            let started = Instant::now();
            while desired_version(&replica, d).await != "4" {
                assert!(started.elapsed() < Duration::from_secs(10), "{label}: the replica's cache never learned");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let audit = audit_actions(&s, id4).await;
        let count = |a: &str| audit.iter().filter(|e| e["action"] == a).count();
        assert_eq!(
            (count("rollout.start"), count("rollout.wave"), count("rollout.complete")),
            (1, 1, 1),
            "{label}: {audit:#?}"
        );

        // Hand actions: refused where they make no sense, audited where they do.
        let r = s.op(Method::POST, &format!("/v1/rollouts/{id4}/pause"), Some(&s.admin), None).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{label}: {:?}", r.body);
        let r = s.op(Method::POST, &format!("/v1/rollouts/{id4}/sideways"), Some(&s.admin), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{label}");
        let r = s.op(Method::POST, &format!("/v1/rollouts/{id4}/rollback"), Some(&s.admin), None).await;
        assert_eq!((r.status, &r.body["state"]), (StatusCode::OK, &json!("rolled_back")), "{label}: {:?}", r.body);
        for d in &berlin[..5] {
            assert_eq!(
                desired_version(&s, d).await,
                "2",
                "{label}: rolling back a completed rollout removes its assignment"
            );
        }
        let devices = s.op(Method::GET, &format!("/v1/rollouts/{id4}/devices"), Some(&s.admin), None).await;
        assert_eq!(devices.body.as_array().unwrap().len(), 5, "{label}");
        drop(paris.pop());
        replica.stop().await;
        s.stop().await;
    }
}

/// `part`'s count in the engine's per-part timing.
async fn part_count(s: &TestServer, part: &str) -> f64 {
    let text = s.http().get(format!("{}/metrics", s.base)).send().await.unwrap().text().await.unwrap();
    let name = format!("outpost_server_rollout_part_duration_seconds_count{{part=\"{part}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(name.as_str())).map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn devices_that_change_during_a_rollout_are_seen_from_their_stamps_alone() {
    for (label, url) in test_databases().await {
        let s = TestServer::start_with(&label, &url, fast).await;
        for v in ["1", "2"] {
            publish(&s, v).await;
        }
        let assign = json!({"selector": "", "model": "detector", "version": "1"});
        assert_eq!(
            s.op(Method::POST, "/v1/assignments", Some(&s.admin), Some(assign)).await.status,
            StatusCode::CREATED
        );
        let mut devices = fleet(&s, 3, json!({"site": "berlin"})).await;
        devices.extend(fleet(&s, 2, json!({"site": "paris"})).await);
        for d in devices.iter_mut() {
            d.step(&s).await;
        }
        let spec = json!({
            "model": "detector", "version": "2", "selector": "site=berlin", "waves": [50, 100],
            "bake_s": 1, "gates": ["error_rate<5%"], "min_samples": 10, "wave_deadline_s": 30,
        });
        let id = create(&s, spec).await;
        drive(&s, &mut devices, id, |r| r["waves"][0]["phase"] == "baking").await;

        // Mid-rollout: a new device enrols into the selector, one paris device is relabelled
        // into it, the other is pinned first and then relabelled (so it matches but is skipped).
        devices.extend(fleet(&s, 1, json!({"site": "berlin"})).await);
        let pin = json!({"models": {"detector": "1"}});
        let r =
            s.op(Method::PUT, &format!("/v1/devices/{}/override", devices[4].dev.id), Some(&s.admin), Some(pin)).await;
        assert_eq!(r.status, StatusCode::OK, "{label}: {:?}", r.body);
        for d in &devices[3..5] {
            let change = json!({"set": {"site": "berlin"}, "remove": []});
            let path = format!("/v1/devices/{}/labels", d.dev.id);
            assert_eq!(s.op(Method::PATCH, &path, Some(&s.admin), Some(change)).await.status, StatusCode::OK);
        }
        let done = drive(&s, &mut devices, id, state_is("completed")).await;
        assert_eq!(done["eligible"], 5, "{label}: 3 + the new one + the relabelled one: {done:#}");
        assert_eq!(done["skipped"]["pinned"], 1, "{label}: {done:#}");
        let members = s.op(Method::GET, &format!("/v1/rollouts/{id}/devices"), Some(&s.admin), None).await.body;
        let members: Vec<&str> = members.as_array().unwrap().iter().map(|m| m["device_id"].as_str().unwrap()).collect();
        for (i, d) in devices.iter().enumerate() {
            assert_eq!(members.contains(&d.dev.id.as_str()), i != 4, "{label}: device {i} in {members:?}");
        }
        assert_eq!(desired_version(&s, &devices[4]).await, "1", "{label}: pinned");
        // The fleet was read whole once; every other tick read only what was stamped.
        let (loads, ticks) = (part_count(&s, "load").await, part_count(&s, "changes").await);
        assert_eq!(loads, 1.0, "{label}");
        assert!(ticks > 10.0, "{label}: {ticks} incremental ticks");
        s.stop().await;
    }
}
