//! The agent's control-plane side on real files: device identity, the outbox across restarts,
//! state reports, package re-verification, an agent whose server is unreachable, and rollout
//! support (per-version windows, shadow candidates, retry attempts).

mod common;
#[path = "control/delivery.rs"]
mod delivery;
#[path = "control/delta.rs"]
mod delta;
#[path = "control/drift.rs"]
mod drift;
#[path = "control/export.rs"]
mod export;
#[path = "control/outbox.rs"]
mod outbox;
#[path = "control/shadow.rs"]
mod shadow;

use outpost_agent::control::identity::{self, Enrollment, IdentityError, KEY_FILE};
use outpost_agent::control::report::ReportBuilder;
use outpost_agent::control::{commands, RestartHook};
use outpost_agent::metrics::Metrics;
use outpost_agent::store::ModelStore;
use outpost_proto::fleet::device::{DesiredModel, Health};
use outpost_runtime::model::MemoryBudget;
use outpost_runtime::{LoadOptions, Package};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn device_key_is_created_owner_only_and_reused_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = identity::load_or_create_key(&data).unwrap();
    let mode = std::fs::metadata(data.join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = identity::load_or_create_key(&data).unwrap();
    assert_eq!(first.public_key(), again.public_key());
    assert_eq!(first.device_id(), again.device_id());
    let leftovers: Vec<_> = std::fs::read_dir(&data).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers, [KEY_FILE], "no temporary files remain");
}

#[test]
fn key_readable_by_others_is_refused_with_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    identity::load_or_create_key(dir.path()).unwrap();
    let path = dir.path().join(KEY_FILE);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = identity::load_or_create_key(dir.path()).unwrap_err();
    assert!(matches!(err, IdentityError::Permissions { mode: 0o644, .. }), "{err}");
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn malformed_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    identity::write_atomic(&dir.path().join(KEY_FILE), b"abcd\n", 0o600).unwrap();
    let err = identity::load_or_create_key(dir.path()).unwrap_err();
    assert!(matches!(err, IdentityError::Malformed { .. }), "{err}");
}

#[test]
fn enrollment_is_remembered_per_server() {
    let dir = tempfile::tempdir().unwrap();
    let record = Enrollment {
        device_id: "d-0123".into(),
        server: "http://a:8700".into(),
        labels: [("site".to_string(), "berlin".to_string())].into(),
        enrolled_ms: 1,
    };
    identity::save_enrollment(dir.path(), &record).unwrap();
    assert_eq!(identity::load_enrollment(dir.path(), "http://a:8700/"), Some(record));
    assert_eq!(identity::load_enrollment(dir.path(), "http://b:8700"), None, "another server means enroll again");
}

#[test]
fn state_report_numbers_itself_and_flags_missing_desired_models() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(ModelStore::new(LoadOptions::default(), MemoryBudget::new(1 << 30), metrics.clone()));
    metrics.request("ghost", Some("1"), "infer", 200, Duration::from_millis(3));
    let mut builder = ReportBuilder::new(store, metrics, dir.path().to_path_buf(), 5);
    let desired = [DesiredModel {
        name: "defect".into(),
        version: "3".into(),
        source: "override".into(),
        package: None,
        shadow: None,
        attempt: 0,
    }];
    let a = builder.build(&desired, "etag-1", &Default::default(), &Default::default());
    let b = builder.build(&[], "etag-1", &Default::default(), &Default::default());
    assert_eq!((a.seq, b.seq), (5, 6));
    assert_eq!(a.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(a.applied_etag, "etag-1");
    assert!(a.at_ms > 1_600_000_000_000);
    assert_eq!(a.health, Health::Degraded);
    assert_eq!(a.models.len(), 1);
    assert_eq!((a.models[0].name.as_str(), a.models[0].state.as_str()), ("defect", "failed"));
    assert_eq!(b.health, Health::Ok);
    let hw = a.hardware.as_ref().expect("the first report after a start carries the hardware profile");
    assert!(hw.cores > 0 && !hw.arch.is_empty());
    assert_eq!(b.hardware, None, "an unchanged profile is not sent again");
    if cfg!(target_os = "linux") {
        let s = &a.system;
        assert!(s.mem_total_bytes > 0 && s.mem_used_bytes <= s.mem_total_bytes);
        assert!(s.agent_rss_bytes > 0);
        assert!(s.disk_total_bytes > 0 && s.disk_free_bytes <= s.disk_total_bytes);
        assert!((0.0..=100.0).contains(&b.system.cpu_percent));
    }
}

#[test]
fn reverify_finds_a_tampered_package() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = common::affine_onnx(2.0);
    common::write_package(dir.path(), "good", "1", &onnx);
    let pkg =
        Package::from_parts(common::manifest("bad", "1", &onnx), vec![("model.onnx".into(), onnx.clone())]).unwrap();
    let bad = dir.path().join("bad");
    pkg.write_dir(&bad).unwrap();
    let mut tampered = onnx.clone();
    tampered.push(0);
    std::fs::write(bad.join("model.onnx"), tampered).unwrap();

    let result = commands::reverify(dir.path()).unwrap();
    assert_eq!(result["mismatches"], 1);
    let statuses: Vec<(&str, &str)> = result["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["path"].as_str().unwrap(), p["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses.len(), 2);
    assert!(statuses.iter().any(|(p, s)| p.ends_with("bad") && *s == "mismatch"), "{statuses:?}");
    assert!(statuses.iter().any(|(p, s)| p.ends_with("good-1.opkg") && *s == "ok"), "{statuses:?}");
}

#[tokio::test]
async fn agent_keeps_serving_while_the_server_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let (models, data) = (dir.path().join("models"), dir.path().join("data"));
    std::fs::create_dir_all(&models).unwrap();
    common::write_package(&models, "affine", "1", &common::affine_onnx(2.0));
    let mut config = outpost_agent::AgentConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_dir: models,
        data_dir: data.clone(),
        // Nothing listens on port 1: enrollment keeps retrying in the background.
        server: Some("http://127.0.0.1:1".into()),
        enroll_token: Some("oet_test".into()),
        ..outpost_agent::AgentConfig::default()
    };
    config.poll_interval_ms = 3_600_000;
    let agent = outpost_agent::Agent::start_with_restart(config, RestartHook::new(|| Ok(()))).await.unwrap();
    let url = format!("http://{}/v2/models/affine/ready", agent.addr);
    let answer = tokio::task::spawn_blocking(move || common::http("GET", &url, &[], None)).await.unwrap();
    assert_eq!(answer.status, 200);
    let status = agent.control().expect("control channel runs").clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status.device_id(), None);
    assert_eq!(status.last_contact_ms(), 0);
    assert!(data.join(KEY_FILE).exists(), "the key is made before the first contact");
    agent.shutdown().await.unwrap();
}

/// A real control plane in this process, with its bootstrap admin token.
struct ControlPlane {
    server: outpost_server::Server,
    base: String,
    admin: String,
    http: reqwest::Client,
}

impl ControlPlane {
    async fn start(data: &std::path::Path) -> ControlPlane {
        ControlPlane::start_with(ControlPlane::config(data)).await
    }

    fn config(data: &std::path::Path) -> outpost_server::config::ServerConfig {
        outpost_server::config::ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.to_path_buf(),
            heartbeat_interval_s: 1,
            ..Default::default()
        }
    }

    async fn start_with(config: outpost_server::config::ServerConfig) -> ControlPlane {
        let token_file = config.data_dir.join("admin.token");
        let server = outpost_server::Server::start(config).await.expect("server starts");
        let admin = std::fs::read_to_string(token_file).unwrap().trim().to_string();
        let base = format!("http://{}", server.addr);
        let http = outpost_agent::control::client::http_client(4).unwrap();
        ControlPlane { server, base, admin, http }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.admin);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    async fn enrollment_token(&self, uses: u32) -> String {
        let created = self
            .call(
                reqwest::Method::POST,
                "/v1/enrollment-tokens",
                Some(serde_json::json!({"uses": uses, "labels": {"site": "lab"}})),
            )
            .await;
        created["secret"].as_str().unwrap().to_string()
    }

    /// Creates a command and waits until the device acknowledged it; returns the command.
    async fn run_command(&self, device: &str, kind: &str, args: serde_json::Value) -> serde_json::Value {
        let path = format!("/v1/devices/{device}/commands");
        let created =
            self.call(reqwest::Method::POST, &path, Some(serde_json::json!({"kind": kind, "args": args}))).await;
        let id = created["id"].as_i64().unwrap();
        for _ in 0..100 {
            let page = self.call(reqwest::Method::GET, &path, None).await;
            let found = page["items"].as_array().unwrap().iter().find(|c| c["id"].as_i64() == Some(id)).cloned();
            if let Some(c) = found.filter(|c| c["status"] == "succeeded" || c["status"] == "failed") {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("command {kind} was not acknowledged");
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    // A minute: loading a model (the delivery tests' sluggish one has 2,000 nodes) in a debug
    // build on a CI machine busy compiling took over 15 s once. The wait ends when `done` does.
    for _ in 0..600 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn agent_config(dir: &std::path::Path, server: &str, token: Option<String>) -> outpost_agent::AgentConfig {
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    outpost_agent::AgentConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_dir: models,
        poll_interval_ms: 3_600_000,
        data_dir: dir.join("agent-data"),
        server: Some(server.to_string()),
        enroll_token: token,
        device_name: Some("test-device".into()),
        ..outpost_agent::AgentConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_enrolls_heartbeats_runs_commands_restarts_without_reenrolling_and_stops_when_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(&dir.path().join("server")).await;
    let token = plane.enrollment_token(1).await;
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    common::write_package(&dir.path().join("models"), "affine", "1", &common::affine_onnx(2.0));

    let restarted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hook = {
        let restarted = restarted.clone();
        RestartHook::new(move || {
            restarted.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        })
    };
    let config = agent_config(dir.path(), &plane.base, Some(token));
    let agent = outpost_agent::Agent::start_with_restart(config.clone(), hook).await.unwrap();
    let status = agent.control().unwrap().clone();
    wait_until("enrollment and a heartbeat", || status.device_id().is_some() && status.heartbeats_sent() >= 1).await;
    let device = status.device_id().unwrap();

    let seen = plane.call(reqwest::Method::GET, &format!("/v1/devices/{device}"), None).await;
    assert_eq!(seen["name"], "test-device");
    assert_eq!(seen["labels"]["site"], "lab");
    assert_eq!(seen["status"], "online");
    assert_eq!(seen["models"][0]["name"], "affine");

    let logs = plane.run_command(&device, "collect_logs", serde_json::json!({"lines": 5})).await;
    assert_eq!(logs["status"], "succeeded");
    assert!(logs["result"]["lines"].is_array());
    let set =
        plane.run_command(&device, "set_config", serde_json::json!({"heartbeat_interval_s": 2, "colour": 1})).await;
    assert_eq!(set["result"]["applied"], serde_json::json!(["heartbeat_interval_s"]));
    assert_eq!(set["result"]["ignored"], serde_json::json!(["colour"]));
    let reload = plane.run_command(&device, "reload_models", serde_json::json!({})).await;
    assert_eq!(reload["result"]["models"]["affine"], "1");
    let verify = plane.run_command(&device, "reverify_models", serde_json::json!({})).await;
    assert_eq!(verify["result"]["mismatches"], 0);

    // restart_agent: acknowledged first, then the agent stops and runs the restart step.
    let restart = plane.run_command(&device, "restart_agent", serde_json::json!({})).await;
    assert_eq!(restart["status"], "succeeded");
    tokio::time::timeout(Duration::from_secs(15), agent.wait()).await.expect("agent stops").unwrap();
    assert!(restarted.load(std::sync::atomic::Ordering::SeqCst));

    // The "new process": same data directory, no token (a single-use token is spent anyway).
    let config = agent_config(dir.path(), &plane.base, None);
    let agent = outpost_agent::Agent::start_with_restart(config, RestartHook::new(|| Ok(()))).await.unwrap();
    let status = agent.control().unwrap().clone();
    wait_until("a heartbeat after restart", || status.heartbeats_sent() >= 1).await;
    assert_eq!(status.device_id().as_deref(), Some(device.as_str()));
    assert!(!status.restart_requested(), "the restart command is not run twice");

    plane.call(reqwest::Method::POST, &format!("/v1/devices/{device}/revoke"), None).await;
    wait_until("the revocation to be noticed", || status.is_revoked()).await;
    let url = format!("http://{}/v2/health/live", agent.addr);
    let live = tokio::task::spawn_blocking(move || common::http("GET", &url, &[], None)).await.unwrap();
    assert_eq!(live.status, 200, "a revoked device keeps serving locally");
    agent.shutdown().await.unwrap();
    plane.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_made_while_the_server_is_down_are_delivered_in_order_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    // Keep every report in the history, so the test can see each one arrive.
    let mut server_config = ControlPlane::config(&dir.path().join("server"));
    server_config.history_interval_s = 0;
    let plane = ControlPlane::start_with(server_config.clone()).await;
    let token = plane.enrollment_token(1).await;
    let agent = outpost_agent::Agent::start_with_restart(
        agent_config(dir.path(), &plane.base, Some(token)),
        RestartHook::new(|| Ok(())),
    )
    .await
    .unwrap();
    let status = agent.control().unwrap().clone();
    wait_until("enrollment and a heartbeat", || status.heartbeats_sent() >= 1).await;
    let device = status.device_id().unwrap();

    // The server goes away; the agent keeps serving and queues its reports.
    server_config.listen = plane.server.addr;
    plane.server.shutdown().await.unwrap();
    wait_until("three queued reports", || status.queued_reports() >= 3).await;
    let url = format!("http://{}/v2/health/ready", agent.addr);
    let ready = tokio::task::spawn_blocking(move || common::http("GET", &url, &[], None)).await.unwrap();
    assert_eq!(ready.status, 200, "serving goes on while the control plane is down");

    // Back on the same address and database: the backlog drains, oldest first, nothing lost.
    let plane = ControlPlane::start_with(server_config).await;
    for _ in 0..900 {
        if status.queued_reports() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status.queued_reports(), 0, "the outbox drained");
    assert_eq!(status.dropped_reports(), 0);
    let history = plane.call(reqwest::Method::GET, &format!("/v1/devices/{device}/history?limit=1000"), None).await;
    let seqs: Vec<u64> = history.as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.len() >= 4, "{seqs:?}");
    for pair in seqs.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "reports arrive in order and none is missing: {seqs:?}");
    }
    agent.shutdown().await.unwrap();
    plane.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_the_version_its_desired_state_names_also_a_lower_one() {
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(&dir.path().join("server")).await;
    let token = plane.enrollment_token(1).await;
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    common::write_package(&models, "affine", "1", &common::affine_onnx(1.0));
    common::write_package(&models, "affine", "2", &common::affine_onnx(2.0));
    let agent = outpost_agent::Agent::start(agent_config(dir.path(), &plane.base, Some(token))).await.unwrap();
    let status = agent.control().unwrap().clone();
    wait_until("enrollment", || status.device_id().is_some()).await;
    let device = status.device_id().unwrap();
    let store = agent.state.store.clone();
    let serving = move || store.get("affine").map(|m| m.version().to_string());
    assert_eq!(serving().as_deref(), Some("2"), "nothing desired yet: the highest version serves");

    let pin = |version: &str| serde_json::json!({"models": {"affine": version}, "config": {}});
    plane.call(reqwest::Method::PUT, &format!("/v1/devices/{device}/override"), Some(pin("1"))).await;
    wait_until("the desired version 1 to serve", || serving().as_deref() == Some("1")).await;
    plane.call(reqwest::Method::PUT, &format!("/v1/devices/{device}/override"), Some(pin("2"))).await;
    wait_until("the desired version 2 to serve", || serving().as_deref() == Some("2")).await;
    agent.shutdown().await.unwrap();
    plane.server.shutdown().await.unwrap();
}
